"""Incremental base64 decoding for streamed TTS audio.

PaddleSpeech's HTTP stream is a bare concatenation of base64 strings with no separator
(docs/protocols.md "PaddleSpeech: HTTP stream"). httpx does not preserve the server's chunk boundaries, so the text must
be decoded incrementally, whatever the re-chunking, and a ``=``-padded group in the middle
of the stream must end a segment instead of silently ending the decode ("PaddleSpeech: base64 in pieces"). The decoded
bytes are then cut to whole 16-bit samples, because a decode
boundary can fall inside one: with ``frame_bytes=2`` the decoder holds back the odd byte itself
(the clients do not import ``hardware``, whose ``PcmFramer`` does the same for the devices).
"""

from __future__ import annotations

import binascii
import re

__all__ = ["Base64StreamDecoder"]

_INVALID = re.compile(rb"[^A-Za-z0-9+/=\s]")
"""Anything outside the standard alphabet, the padding character and ASCII whitespace."""
_WHITESPACE = b" \t\n\r\x0b\x0c"
_PADDED_GROUP = re.compile(rb"[A-Za-z0-9+/]{2}(?:==|[A-Za-z0-9+/]=)")
"""The only legal shapes of a 4-character group that contains padding."""


class Base64StreamDecoder:
    """Decode a base64 text stream fed in arbitrary pieces.

    ``feed`` returns every byte that the characters received so far fully determine, and
    keeps the characters of an incomplete 4-character group for the next call. Whitespace
    is skipped. A group with ``=`` padding ends a segment: it is decoded and decoding
    continues with the next character. Any character outside the alphabet, or padding in a
    position no encoder produces, raises ValueError naming its offset in the input stream
    (characters fed so far, whitespace included).
    """

    def __init__(self, *, frame_bytes: int = 1) -> None:
        if frame_bytes < 1:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        """Decoded bytes are returned in whole frames of this size (2: 16-bit mono samples)."""
        self._partial_frame = b""
        self._pending = b""
        """Significant characters of an incomplete group (at most 3)."""
        self._pending_pos: tuple[int, ...] = ()
        """Stream offset of each pending character, for error messages."""
        self._offset = 0
        """Characters fed so far."""

    @property
    def offset(self) -> int:
        """How many input characters have been fed so far (whitespace included)."""
        return self._offset

    @property
    def pending(self) -> int:
        """Significant characters waiting for the rest of their 4-character group."""
        return len(self._pending)

    def feed(self, text: bytes | str) -> bytes:
        """Decode as much as ``text`` and the earlier leftovers allow."""
        data = self._as_ascii(text)
        bad = _INVALID.search(data)
        if bad is not None:
            char = chr(data[bad.start()])
            raise ValueError(f"invalid base64 character {char!r} at offset {self._offset + bad.start()}")

        has_space = any(c in data for c in _WHITESPACE)
        significant = data.translate(None, _WHITESPACE) if has_space else data
        positions: list[int] | None = None

        def position(index: int) -> int:
            """Stream offset of ``buf[index]``."""
            nonlocal positions
            if index < len(self._pending_pos):
                return self._pending_pos[index]
            index -= len(self._pending_pos)
            if not has_space:
                return self._offset + index
            if positions is None:
                positions = [i for i, c in enumerate(data) if c not in _WHITESPACE]
            return self._offset + positions[index]

        buf = self._pending + significant
        usable = len(buf) - len(buf) % 4
        out: list[bytes] = []
        start = 0
        while start < usable:
            pad = buf.find(b"=", start, usable)
            if pad < 0:
                out.append(binascii.a2b_base64(buf[start:usable], strict_mode=True))
                start = usable
                break
            group = start + (pad - start) // 4 * 4
            if not _PADDED_GROUP.fullmatch(buf, group, group + 4):
                shape = buf[group : group + 4].decode("ascii")
                raise ValueError(f"misplaced '=' padding in base64 group {shape!r} at offset {position(group)}")
            out.append(binascii.a2b_base64(buf[start : group + 4], strict_mode=True))
            start = group + 4

        if start < len(buf) and buf[start : start + 1] == b"=":
            # "=" can never start a group; say so now rather than at the next feed.
            raise ValueError(f"misplaced '=' padding at offset {position(start)}")
        self._pending_pos = tuple(position(i) for i in range(start, len(buf)))
        self._pending = buf[start:]
        self._offset += len(data)
        decoded = self._partial_frame + b"".join(out)
        cut = len(decoded) - len(decoded) % self.frame_bytes
        self._partial_frame = decoded[cut:]
        return decoded[:cut]

    def close(self) -> bytes:
        """End of the stream. Leftover characters that are not a whole group raise ValueError.
        Returns (and forgets) the bytes of an incomplete last frame, usually b""."""
        if self._pending:
            count = len(self._pending)
            first = self._pending_pos[0]
            raise ValueError(
                f"base64 stream ended inside a 4-character group: {count} leftover character(s) at offset {first}"
            )
        self._offset = 0
        rest, self._partial_frame = self._partial_frame, b""
        return rest

    def _as_ascii(self, text: bytes | str) -> bytes:
        if isinstance(text, str):
            try:
                return text.encode("ascii")
            except UnicodeEncodeError as exc:
                char = text[exc.start]
                raise ValueError(f"invalid base64 character {char!r} at offset {self._offset + exc.start}") from None
        if isinstance(text, bytes | bytearray | memoryview):
            return bytes(text)
        raise TypeError(f"expected bytes or str, got {type(text).__name__}")
