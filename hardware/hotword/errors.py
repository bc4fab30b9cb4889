"""The error every hotword engine raises when it cannot be built."""

from __future__ import annotations

from hardware.errors import HardwareError

EXTRA_HINT = "pip install 'moss-voice[hotword]'"
"""How to install the hotword engines' libraries (the ``hotword`` extra)."""


class HotwordError(HardwareError):
    """A hotword engine cannot start: unknown engine, library not installed, unknown model name,
    missing or broken model file, a phrase the engine cannot spot, a bad threshold.

    The message names the engine and the phrase or file at fault.
    """


def missing_library(engine: str, module: str) -> HotwordError:
    """The error for an engine whose vendor library is not installed."""
    return HotwordError(f"hotword engine {engine!r} needs the Python module {module!r}: {EXTRA_HINT}")
