"""Offline wake word engines (``states.ports.HotwordEngine``); each imports its library lazily."""
