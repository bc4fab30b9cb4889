"""A pure, incremental Server-Sent Events parser (only what OpenAI-compatible servers use).

Bytes go in as they come off the socket; the ``data`` payloads of complete events come out.
Lines are split at the byte level (``\\n``, ``\\r\\n`` or ``\\r``) and an event ends at a
blank line, so ``\\n\\n`` and ``\\r\\n\\r\\n`` both work. UTF-8 is decoded once per complete
event, which makes a multibyte character split across two reads harmless (vLLM sends raw
UTF-8; docs/protocols.md "OpenAI: SSE framing"). Comment lines (``: ping - ...``, llama.cpp) and fields other than
``data`` (``event``, ``id``, ``retry``) are skipped.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SseError", "SseParser"]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
"""Bytes one event (or one unfinished line) may take before the stream is declared broken."""

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SseError(ValueError):
    """The byte stream is not usable SSE: an event is too large or not valid UTF-8."""


class SseParser:
    """Incremental SSE parser. ``feed`` as bytes arrive, ``close`` at end of stream."""

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()
        self._data: list[bytes] | None = None  # None: no data field seen in this event yet
        self._event_bytes = 0
        self._started = False  # the leading byte-order mark, if any, was handled
        self._closed = False
        self._broken: SseError | None = None
        """Found in a ``feed`` that had complete events before it: raised by the next call."""

    def feed(self, data: bytes) -> list[str]:
        """Add bytes; return the data payloads of the events completed by them, in order.

        A broken event raises SseError; the events completed before it in the same bytes are
        returned first and the error is raised by the next ``feed`` or ``close``, so what the
        caller gets does not depend on how the network cut the stream.
        """
        if self._broken is not None:
            raise self._broken
        if self._closed:
            raise SseError("feed() after close()")
        out: list[str] = []
        try:
            self._feed(data, out)
        except SseError as exc:
            if not out:
                raise
            self._broken = exc
        return out

    def _feed(self, data: bytes, out: list[str]) -> None:
        self._buf += data
        if not self._started:
            if len(self._buf) < len(_BOM) and _BOM.startswith(bytes(self._buf)):
                return  # might still become a byte-order mark
            if self._buf.startswith(_BOM):
                del self._buf[: len(_BOM)]
            self._started = True
        pos = 0
        while True:
            match = _EOL.search(self._buf, pos)
            if match is None:
                break
            if match.group() == b"\r" and match.end() == len(self._buf):
                break  # a lone CR at the end may be the first half of CRLF: wait for more
            self._line(bytes(self._buf[pos : match.start()]), out)
            pos = match.end()
        del self._buf[:pos]
        if self._event_bytes + len(self._buf) > self._max:
            raise SseError(f"SSE event larger than {self._max} bytes without an event separator")

    def close(self) -> list[str]:
        """End of stream: return the last event if the stream ended without its blank line.

        A final line without a line terminator still counts. Calling ``close`` twice returns [].
        """
        if self._broken is not None:
            error, self._broken = self._broken, None
            self._closed = True
            raise error
        if self._closed:
            return []
        self._closed = True
        out: list[str] = []
        if self._buf:
            line = bytes(self._buf).rstrip(b"\r")
            self._buf.clear()
            self._line(line, out)
        self._line(b"", out)
        return out

    @property
    def broken(self) -> bool:
        """True when the last ``feed`` returned events but found a broken one after them: the
        next ``feed`` or ``close`` raises it."""
        return self._broken is not None

    @property
    def pending_bytes(self) -> int:
        """Bytes held for an event that is not complete yet (0 at an event boundary)."""
        return self._event_bytes + len(self._buf)

    def _line(self, line: bytes, out: list[str]) -> None:
        if not line:
            self._dispatch(out)
            return
        self._event_bytes += len(line) + 1
        if line.startswith(b":"):
            return  # comment
        name, _, value = line.partition(b":")
        if name != b"data":
            return  # event / id / retry / unknown fields: not used by these servers
        if value.startswith(b" "):
            value = value[1:]
        if self._data is None:
            self._data = []
        self._data.append(value)

    def _dispatch(self, out: list[str]) -> None:
        data, self._data = self._data, None
        self._event_bytes = 0
        if data is None:
            return  # a blank line after comments only, or a stray blank line
        raw = b"\n".join(data)
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise SseError(f"SSE event is not valid UTF-8 ({exc.reason} at byte {exc.start}): {raw[:80]!r}") from exc
