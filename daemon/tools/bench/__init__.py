"""Benchmarks of what the user feels, on the wall clock with the stand-ins (``moss-voice bench ...``)."""

from daemon.tools.bench.latency import main

__all__ = ["main"]
