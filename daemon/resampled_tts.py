"""Adapt a TTS whose rate differs from the speaker's: resample each sentence's stream with soxr."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import soxr
import structlog

from states.ports import TtsClient

log = structlog.get_logger()


class ResampledTts:
    """A TtsClient that yields audio at ``target_rate``, whatever rate the server speaks."""

    def __init__(self, inner: TtsClient, target_rate: int) -> None:
        self._inner = inner
        self._target = target_rate
        self._source: int | None = None
        """The TTS rate last seen: a change (or a first rate that differs) is logged once."""

    async def sample_rate(self) -> int:
        return self._target

    async def warm_up(self) -> None:
        await self._inner.warm_up()

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        source_rate = await self._inner.sample_rate()
        if source_rate != self._source:
            if source_rate != self._target:
                # e.g. the TTS was down at start-up and the output opened at the assumed rate
                log.info("tts_resampling", tts_rate=source_rate, output_rate=self._target)
            self._source = source_rate
        async with self._inner.synthesize(text) as audio:
            if source_rate == self._target:
                yield audio
            else:
                yield _resample(audio, source_rate, self._target)


async def _resample(audio: AsyncIterator[bytes], source: int, target: int) -> AsyncIterator[bytes]:
    stream = soxr.ResampleStream(source, target, 1, dtype="int16")
    async for pcm in audio:
        out = stream.resample_chunk(np.frombuffer(pcm, dtype="<i2"))
        if len(out):
            yield out.astype("<i2").tobytes()
    tail = stream.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
    if len(tail):
        yield tail.astype("<i2").tobytes()
