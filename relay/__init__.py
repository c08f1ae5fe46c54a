"""Cloud monitor relay: API v1, the relay to gatherer agents, live video and recordings."""

__version__ = "0.1.0"
