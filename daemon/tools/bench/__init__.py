"""Benchmarks of what the user feels, on the wall clock with the stand-ins (``moss-voice bench ...``)."""
