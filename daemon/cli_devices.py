"""``moss-voice devices``: list the sound cards' inputs and outputs, for ``[audio]``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon.errors import HardwareError


def register(subparsers: Any) -> None:
    devices = subparsers.add_parser("devices", help="list the sound cards' inputs and outputs (for [audio])")
    devices.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    from daemon.logs import configure_logging
    from hardware.pyaudio_devices import format_devices, list_devices  # PyAudio only when asked

    configure_logging("warning", stream=sys.stderr)  # PortAudio's chatter is a debug line: not shown
    try:
        print(format_devices(list_devices()))
    except HardwareError as exc:
        print(f"moss-voice devices: {exc}", file=sys.stderr)
        return 1
    return 0
