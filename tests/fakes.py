"""In-memory implementations of the ports in states/ports.py, for tests of the conversation logic.

They are fast (no wall clock) and scriptable; the real adapters are tested against real loopback
servers and files elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from states.events import ChatMessage, LlmResult, Transcript

SPEECH, SILENCE = b"\x10\x27", b"\x00\x00"  # one int16 sample of each


class FakeMic:
    """Plays a script of (seconds, is_speech) segments in 20 ms blocks, then silence forever."""

    sample_rate = 16000

    def __init__(self, script: Sequence[tuple[float, bool]], *, block_ms: int = 20, delay_s: float = 0.002) -> None:
        self._delay_s = delay_s
        self._blocks: list[bytes] = []
        n = self.sample_rate * block_ms // 1000
        for seconds, speech in script:
            for _ in range(round(seconds * 1000 / block_ms)):
                self._blocks.append((SPEECH if speech else SILENCE) * n)
        self._silence = SILENCE * n
        self.reads = 0

    async def read(self) -> bytes:
        self.reads += 1
        await asyncio.sleep(self._delay_s)
        return self._blocks.pop(0) if self._blocks else self._silence

    async def aclose(self) -> None:
        pass


class FakeVad:
    """Speech is any frame with a non-zero sample."""

    frame_bytes = 640  # 20 ms

    def __init__(self) -> None:
        self.resets = 0

    def is_speech(self, frame: bytes) -> bool:
        return any(frame)

    def reset(self) -> None:
        self.resets += 1


class FakeSpeaker:
    """Plays everything the moment it is written (so all of it counts as heard)."""

    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        self.audio_samples_played = 0
        self.written: list[bytes] = []
        self.flushes = 0
        self.pauses = 0
        self.resumes = 0
        self._audible = asyncio.Event()

    async def write(self, pcm: bytes) -> None:
        self.written.append(pcm)
        self.audio_samples_played += len(pcm) // 2
        self._audible.set()

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def flush(self) -> None:
        self.flushes += 1
        self._audible.clear()

    def pause(self) -> None:
        self.pauses += 1

    def resume(self) -> None:
        self.resumes += 1

    async def wait_audible(self) -> float:
        await self._audible.wait()
        return asyncio.get_running_loop().time()

    async def aclose(self) -> None:
        pass

    @property
    def audio(self) -> bytes:
        return b"".join(self.written)


@dataclass
class FakeAsrSession:
    text: str | Exception
    audio: bytearray = field(default_factory=bytearray)
    closed: bool = False
    finished: bool = False
    at_once: list[bytes] = field(default_factory=list)
    """What came with ``at_once=True``, one item per call (also in ``audio``, in order)."""
    gate: asyncio.Event | None = None
    """When set, ``finish`` waits for it (a slow server)."""
    trailing_silence_ms: float | None = None

    async def send_audio(self, pcm: bytes, *, at_once: bool = False) -> None:
        self.audio += pcm
        if at_once:
            self.at_once.append(pcm)

    async def finish(self, *, trailing_silence_ms: float | None = None) -> Transcript:
        self.finished = True
        if self.gate is not None:
            await self.gate.wait()
        self.trailing_silence_ms = trailing_silence_ms
        if isinstance(self.text, Exception):
            raise self.text
        return Transcript(self.text)

    async def aclose(self) -> None:
        self.closed = True


class FakeAsr:
    """One session per scripted text; the sessions numbered in ``held`` finish only once
    ``release`` is set."""

    def __init__(self, *texts: str | Exception, held: Sequence[int] = ()) -> None:
        self._texts = list(texts)
        self.sessions: list[FakeAsrSession] = []
        self.connect_error: Exception | None = None
        self.held = set(held)
        self.release = asyncio.Event()

    async def open_session(self) -> FakeAsrSession:
        if self.connect_error is not None:
            raise self.connect_error
        gate = self.release if len(self.sessions) in self.held else None
        session = FakeAsrSession(self._texts.pop(0) if self._texts else "", gate=gate)
        self.sessions.append(session)
        return session


class FakeLlmStream:
    def __init__(
        self,
        deltas: Sequence[str],
        error: Exception | None,
        gate: asyncio.Event | None,
        at_any_gate: asyncio.Event | None = None,
    ) -> None:
        self._deltas, self._error, self._gate = list(deltas), error, gate
        self._at_any_gate = at_any_gate
        self.result: LlmResult | None = None
        self.closed_early = True
        self.closed = False
        """The request's context was left (what closes the connection: the server stops)."""
        self.at_gate = asyncio.Event()
        """Every delta was given and the stream waits on its gate (the answer is in flight)."""

    async def _iterate(self) -> AsyncIterator[str]:
        for delta in self._deltas:
            await asyncio.sleep(0)
            yield delta
        if self._gate is not None:
            self.at_gate.set()
            if self._at_any_gate is not None:
                self._at_any_gate.set()
            await self._gate.wait()
        if self._error is not None:
            raise self._error
        self.result = LlmResult(
            "stop", {"prompt_tokens": 1, "completion_tokens": len(self._deltas), "total_tokens": 1 + len(self._deltas)}
        )
        self.closed_early = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()


class FakeLlm:
    """Answers with scripted deltas; optionally fails after them, or waits on ``gate`` before ending."""

    def __init__(self, *answers: Sequence[str], error: Exception | None = None) -> None:
        self._answers = list(answers)
        self.error = error
        self.gate: asyncio.Event | None = None
        self.requests: list[list[ChatMessage]] = []
        self.streams: list[FakeLlmStream] = []
        self.warm_ups = 0
        self.at_gate = asyncio.Event()
        """Some stream gave its deltas and waits on the gate (an answer is in flight)."""

    async def warm_up(self) -> None:
        self.warm_ups += 1

    @asynccontextmanager
    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[FakeLlmStream]:
        self.requests.append(list(messages))
        stream = FakeLlmStream(self._answers.pop(0) if self._answers else [], self.error, self.gate, self.at_gate)
        self.streams.append(stream)
        try:
            yield stream
        finally:
            stream.closed = True


class FakeTts:
    """Two bytes of audio per character, in two chunks; ``fail_on`` texts raise instead."""

    def __init__(self, *, rate: int = 16000, fail_on: Sequence[str] = (), error: Exception | None = None) -> None:
        self.rate = rate
        self.fail_on = set(fail_on)
        self.error = error or RuntimeError("tts broke")
        self.texts: list[str] = []
        self.warm_ups = 0

    async def sample_rate(self) -> int:
        return self.rate

    async def warm_up(self) -> None:
        self.warm_ups += 1

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self.texts.append(text)

        async def chunks() -> AsyncIterator[bytes]:
            if text in self.fail_on or "*" in self.fail_on:
                raise self.error
            pcm = SPEECH * len(text)
            half = len(pcm) // 2 // 2 * 2
            for part in (pcm[:half], pcm[half:]):
                await asyncio.sleep(0)
                yield part

        yield chunks()


class FakeMicWithEnd(FakeMic):
    """A FakeMic that tells when its script has been read to the end (``await mic.over.wait()``)."""

    def __init__(self, script: Sequence[tuple[float, bool]], *, block_ms: int = 20, delay_s: float = 0.002) -> None:
        super().__init__(script, block_ms=block_ms, delay_s=delay_s)
        self.over = asyncio.Event()

    async def read(self) -> bytes:
        block = await super().read()
        if not self._blocks:
            self.over.set()
        return block
