"""Tell systemd how the daemon is doing: READY, STATUS, WATCHDOG, STOPPING, RELOADING.

The protocol is one datagram of ``KEY=value`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a name starting with "@" is an abstract socket: a leading NUL byte). That is a
dozen lines, so they are written here rather than taken from a library: ``sdnotify`` is tiny and
unmaintained, and ``systemd-python`` needs libsystemd's headers to build, a heavy dependency for
one ``sendto``. Without ``$NOTIFY_SOCKET`` (not started by systemd) every call does nothing.

A notification is never worth failing the daemon over: a send that fails is logged once (then
counted) and otherwise ignored.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger()

MAX_STATUS_CHARS = 200
"""``systemctl status`` shows one line: keep STATUS short."""


def notify_address(env: Mapping[str, str]) -> str | None:
    """The socket address from ``NOTIFY_SOCKET`` (abstract names get their NUL byte), or None."""
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    return "\0" + path[1:] if path.startswith("@") else path


def watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """Half the interval systemd asks for (``WATCHDOG_USEC``), when the watchdog is ours to keep:
    ``WATCHDOG_PID`` unset or equal to ``pid``. None: no watchdog."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(pid):
        return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    """Sends sd_notify messages; a no-op when the daemon was not started with ``NOTIFY_SOCKET``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._address = notify_address(os.environ if env is None else env)
        self._socket: socket.socket | None = None
        self.failures = 0
        self.last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        text = " ".join(text.split())[:MAX_STATUS_CHARS]  # one line, however it was built
        if text != self.last_status:
            self.last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        # systemd 253+ wants the monotonic time of the reload start with RELOADING=1 (Type=notify-reload).
        self.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("sd_notify_failed", socket=self._address, error=str(exc), message=message.split("=")[0])

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
