"""Cut a stream of audio blocks into frames of a fixed size (what a VAD or a protocol wants)."""

from __future__ import annotations


class Reframer:
    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0 or frame_bytes % 2:
            raise ValueError(f"frame size must be a positive even number of bytes, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        self._buf += data
        n = len(self._buf) // self.frame_bytes * self.frame_bytes
        frames = [bytes(self._buf[i : i + self.frame_bytes]) for i in range(0, n, self.frame_bytes)]
        del self._buf[:n]
        return frames

    def rest(self) -> bytes:
        rest, self._buf = bytes(self._buf), bytearray()
        return rest
