"""The reference gatherer agent (``relay agent``): runs next to the cameras and dials the relay."""
