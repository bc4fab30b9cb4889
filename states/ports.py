"""The ports the conversation needs, as Protocols. Adapters live in hardware/ and daemon/clients/.

Audio everywhere is signed 16-bit little-endian mono PCM (``bytes``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from states.events import ChatMessage, LlmResult, Transcript

MIC_RATE = 16000
"""The microphone port always delivers 16 kHz: FunASR and both VADs want it."""


@runtime_checkable
class Microphone(Protocol):
    """A live audio source on the wall clock, 16 kHz mono int16."""

    sample_rate: int

    async def read(self) -> bytes:
        """The next block of audio (a whole number of samples), waiting for it in real time."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class TimedMicrophone(Microphone, Protocol):
    """A microphone that knows when each block was captured (PyAudio, WAV files, the room)."""

    async def read_timed(self) -> tuple[bytes, float]:
        """The next block and the monotonic time its first sample was captured."""
        ...


@runtime_checkable
class Speaker(Protocol):
    """A sound card on the wall clock. Writes are queued; ``flush`` drops the queue at once."""

    sample_rate: int

    async def write(self, pcm: bytes) -> None:
        """Queue PCM at ``sample_rate``. May wait while too much is queued (back-pressure)."""
        ...

    async def drain(self) -> None:
        """Return when everything queued so far has been played."""
        ...

    def flush(self) -> None:
        """Drop everything queued and not yet played (barge-in)."""
        ...

    def pause(self) -> None:
        """Stop playing at once but keep the queue (a barge-in that may turn out false)."""
        ...

    def resume(self) -> None:
        """Play on from where ``pause`` stopped."""
        ...

    async def wait_audible(self) -> float:
        """Monotonic time at which the first sample queued since the last idle/flush was played."""
        ...

    @property
    def audio_samples_played(self) -> int:
        """Samples of queued audio played since the speaker opened (fill silence not counted):
        with the samples written, it tells how much of an answer the user actually heard."""
        ...

    async def aclose(self) -> None: ...


class Vad(Protocol):
    """Voice activity detection on fixed-size frames of 16 kHz audio."""

    frame_bytes: int

    def is_speech(self, frame: bytes) -> bool: ...

    def reset(self) -> None: ...


class AsrSession(Protocol):
    """One utterance being recognised: audio in, one transcript out."""

    async def send_audio(self, pcm: bytes, *, at_once: bool = False) -> None:
        """Any number of bytes (whole samples); the session frames and paces them at real time.
        ``at_once``: audio recorded earlier (an utterance heard again after a pause) goes out
        unpaced, and the pacing of live audio sent after it starts afresh."""
        ...

    async def finish(self, *, trailing_silence_ms: float | None = None) -> Transcript:
        """Send end-of-speech and return the final transcript. ``trailing_silence_ms``: the
        audio sent ends with at least this much silence after the voice (None: unknown); a
        client may use it to see that the server already recognised all the voice."""
        ...

    async def aclose(self) -> None: ...


class AsrClient(Protocol):
    async def open_session(self) -> AsrSession: ...


class LlmStream(Protocol):
    """Text deltas of one streamed chat completion. ``result`` is set once the stream ended."""

    result: LlmResult | None

    def __aiter__(self) -> AsyncIterator[str]: ...


class LlmClient(Protocol):
    def stream_chat(self, messages: Sequence[ChatMessage]) -> AbstractAsyncContextManager[LlmStream]:
        """Leaving the context before the end closes the connection, which aborts generation."""
        ...

    async def warm_up(self) -> None:
        """Have a connection ready for the request to come (the user has just finished speaking),
        so that it does not wait for TCP and TLS handshakes. Never raises."""
        ...


class TtsClient(Protocol):
    async def sample_rate(self) -> int:
        """The rate of the PCM ``synthesize`` yields (asked of the server once, then cached)."""
        ...

    def synthesize(self, text: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """PCM chunks of whole samples for ``text``. Zero audio or a cut stream raises TtsError."""
        ...

    async def warm_up(self) -> None:
        """As ``LlmClient.warm_up``. Never raises."""
        ...


class EchoCanceller(Protocol):
    """Removes the robot's own voice (``far``: what the speaker played) from the microphone (``near``)."""

    frame_bytes: int

    def process(self, near: bytes, far: bytes) -> bytes: ...

    def reset(self) -> None: ...


class EchoReferenceSource(Protocol):
    """What the speaker played, by play time: the far-end signal aligned with the microphone."""

    def far_for(self, t_capture: float, n_bytes: int) -> bytes:
        """16 kHz mono int16 that was audible at ``t_capture`` (silence where nothing played)."""
        ...


@runtime_checkable
class HotwordEngine(Protocol):
    """Spots wake words in the echo-cancelled microphone stream (16 kHz mono int16).

    ``process`` is called from the event loop for every block the microphone delivers (10-30 ms),
    so it must be quick (well under a millisecond per block on a robot board). ``speech`` is the
    VAD's verdict on the block; engines that listen to everything ignore it.
    """

    phrases: tuple[str, ...]
    """What it listens for, as configured (``wake.hotword.phrases``)."""

    def process(self, pcm: bytes, speech: bool) -> str | None:
        """Feed the next audio (any whole number of samples); the phrase detected, if one ended in it."""
        ...

    def reset(self) -> None:
        """Forget the audio heard so far (after a wake, so one utterance wakes once)."""
        ...

    async def aclose(self) -> None:
        """Release what the engine holds (a network session, a model)."""
        ...


class EventSink(Protocol):
    """Where the conversation tells the world what it does (the control API's /events, hooks,
    metrics, LEDs). ``emit`` never blocks and never raises."""

    def emit(self, event: str, /, **fields: object) -> None: ...
