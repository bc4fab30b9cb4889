"""Log records to systemd's journal through its native protocol, with fields of their own.

Why the protocol and not systemd-python: the protocol is one datagram per record to a Unix socket
(a few lines, see docs/journald.md); systemd-python has to be compiled against libsystemd-dev,
which a robot's image rarely carries, and would be one more C extension to build in the venv.

A record becomes ``MESSAGE`` (the event and its fields, readable), ``PRIORITY`` (syslog level),
``SYSLOG_IDENTIFIER``, ``EVENT``, ``TURN_ID``, ``STATE`` (the latest ``state_changed``'s ``dst``),
``SERVICE`` and every other field in upper case (text; JSON for structures). If the socket is
missing or a send fails, the record and every later one go to ``fallback`` as JSON lines, and one
``journal_unavailable`` line says why.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import struct
import sys
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
IDENTIFIER = "moss-voice"

PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}
"""structlog level -> syslog priority (what ``journalctl -p`` filters on)."""

_OMITTED = {"timestamp", "level", "event"}
"""Fields the journal keeps by itself (its own timestamp) or gets under another name."""
_NOT_KEY = re.compile(r"[^A-Z0-9_]")
MESSAGE_VALUE_CHARS = 200
TOO_BIG_VALUE_CHARS = 4096
"""A record too big for one datagram is sent again with every value cut to this length."""


def under_journal(environ: Mapping[str, str], stream: TextIO | None = None) -> bool:
    """True when ``stream`` (stdout by default) is the journal's stream socket: systemd sets
    ``JOURNAL_STREAM=<dev>:<inode>`` to the stream it connects to the service's stdout/stderr."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, inode = value.partition(":")
    if not (dev.isdigit() and inode.isdigit()):
        return False
    stream = sys.stdout if stream is None else stream
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.StringIO, closed or detached streams
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(inode))


def field_name(key: str) -> str:
    """A journal field name: upper case letters, digits and ``_``, not starting with ``_``
    (those are trusted fields only journald sets) or a digit."""
    name = _NOT_KEY.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    return name[:64]


def text(value: Any) -> str:
    """A field's value as text: strings as they are, structures as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def message(event_dict: Mapping[str, Any]) -> str:
    """``event key=value ...``: what ``journalctl`` shows on the line (long values shortened)."""
    parts = [str(event_dict.get("event", ""))]
    for key, value in event_dict.items():
        if key in _OMITTED or value is None or key == "exception":
            continue
        shown = text(value)
        if len(shown) > MESSAGE_VALUE_CHARS:
            shown = shown[: MESSAGE_VALUE_CHARS - 1] + "…"
        parts.append(f"{key}={shown}")
    line = " ".join(parts)
    exception = event_dict.get("exception")
    return f"{line}\n{text(exception)}" if exception else line


def encode(fields: Mapping[str, str]) -> bytes:
    """The native protocol's datagram: ``NAME=value\\n`` per field, or, when the value holds a
    newline, ``NAME\\n`` + its length as 64-bit little-endian + the value + ``\\n``."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", errors="replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSink:
    """Turns event dicts into journal datagrams and sends them; JSON lines once the journal fails."""

    def __init__(
        self,
        socket_path: Path = JOURNAL_SOCKET,
        fallback: TextIO | None = None,
        identifier: str = IDENTIFIER,
    ) -> None:
        self._path = socket_path
        self._fallback = fallback
        self._identifier = identifier
        self._state: str | None = None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()  # stdlib records may come from other threads
        self.failed: str | None = None
        """Why the journal was given up (None while it works)."""

    def fields(self, event_dict: Mapping[str, Any]) -> dict[str, str]:
        """The journal fields of one record (also tracks the current state)."""
        event = str(event_dict.get("event", ""))
        if event == "state_changed" and event_dict.get("dst"):
            self._state = str(event_dict["dst"])
        level = str(event_dict.get("level", "info"))
        out = {
            "MESSAGE": message(event_dict),
            "PRIORITY": str(PRIORITIES.get(level, 6)),
            "SYSLOG_IDENTIFIER": self._identifier,
            "EVENT": event,
        }
        if self._state is not None:
            out["STATE"] = self._state
        for key, value in event_dict.items():
            if key in _OMITTED or value is None:
                continue
            name = field_name(key)
            if name not in out or name == "STATE":
                out[name] = text(value)
        return out

    def send(self, event_dict: Mapping[str, Any]) -> None:
        with self._lock:
            fields = self.fields(event_dict)
            if self.failed is None:
                try:
                    self._send(fields)
                    return
                except OSError as exc:
                    self._give_up(f"{self._path}: {exc}")
            self._write_json(event_dict)

    def _send(self, fields: Mapping[str, str]) -> None:
        sock = self._connect()
        try:
            sock.send(encode(fields))
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            cut = {
                k: v if len(v) <= TOO_BIG_VALUE_CHARS else v[: TOO_BIG_VALUE_CHARS - 1] + "…" for k, v in fields.items()
            }
            sock.send(encode(cut))

    def _connect(self) -> socket.socket:
        if self._socket is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.connect(str(self._path))
            except OSError:
                sock.close()
                raise
            self._socket = sock
            # A sink replaced by a new configuration closes its socket when it goes away.
            weakref.finalize(self, sock.close)
        return self._socket

    def _give_up(self, reason: str) -> None:
        self.failed = reason
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._write_json({"event": "journal_unavailable", "level": "warning", "error": reason, "fallback": "json"})

    def _write_json(self, event_dict: Mapping[str, Any]) -> None:
        stream = sys.stdout if self._fallback is None else self._fallback
        stream.write(json.dumps(dict(event_dict), ensure_ascii=False, default=str) + "\n")
        stream.flush()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class JournalLogger:
    """The structlog logger of the journal format: every level method sends one record."""

    def __init__(self, sink: JournalSink) -> None:
        self._sink = sink

    def msg(self, event_dict: Mapping[str, Any]) -> None:
        self._sink.send(event_dict)

    log = debug = info = warn = warning = error = err = critical = fatal = exception = failure = msg


def journal_renderer(_logger: Any, _name: str, event_dict: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: hands the whole event dict to ``JournalLogger.msg``."""
    return (event_dict,), {}
