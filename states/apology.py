"""The spoken apology of a failed turn: synthesised by the TTS once, then kept.

Kept, it is said at once whatever the TTS does at that moment; the first time (or after the text
changed) it is synthesised within a bound, and a TTS too slow for it means the error earcon
instead. The daemon also has it synthesised while idle, so that even the first failure is instant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from states.ports import TtsClient

log = structlog.get_logger()

MAX_APOLOGY_AUDIO_S = 15.0
"""More audio than this for one short sentence is a broken TTS, not an apology."""


class Apology:
    """The apology's PCM, for the one text it was last asked for."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._text: str | None = None
        self._pcm: bytes | None = None

    def cached(self, text: str) -> bytes | None:
        return self._pcm if text == self._text else None

    async def audio(self, text: str, tts: TtsClient, *, sample_rate: int, timeout_s: float) -> bytes | None:
        """The PCM of ``text`` (at ``sample_rate``, the TTS's): kept, or synthesised within
        ``timeout_s`` and kept. None when it cannot be had (logged): play the earcon."""
        pcm = self.cached(text)
        if pcm is not None:
            return pcm
        started = self._clock()
        try:
            async with asyncio.timeout(timeout_s):
                pcm = await self._synthesise(text, tts, max_bytes=int(MAX_APOLOGY_AUDIO_S * sample_rate) * 2)
        except Exception as exc:  # noqa: BLE001 - any failure means the earcon instead
            reason = f"no audio within {timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("apology_unavailable", error=reason or type(exc).__name__, error_type=type(exc).__name__)
            return None
        self._text, self._pcm = text, pcm
        log.info(
            "apology_synthesised",
            chars=len(text),
            audio_ms=round(len(pcm) / 2 / sample_rate * 1000),
            ms=round((self._clock() - started) * 1000),
        )
        return pcm

    @staticmethod
    async def _synthesise(text: str, tts: TtsClient, *, max_bytes: int) -> bytes:
        out = bytearray()
        async with tts.synthesize(text) as chunks:
            async for pcm in chunks:
                out += pcm
                if len(out) > max_bytes:
                    raise ValueError(f"the TTS sent more than {MAX_APOLOGY_AUDIO_S:g} s of audio for the apology")
        if not out:
            raise ValueError("the TTS sent no audio for the apology")
        return bytes(out)
