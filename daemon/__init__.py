"""moss-voice: the voice of a service robot (composition root, CLI, network clients)."""

__version__ = "0.1.0"
