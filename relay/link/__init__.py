"""The agent link: gatherer agents dial in over WebSocket at ``/agent`` and stay connected."""
