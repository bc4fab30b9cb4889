"""A simulated room for tests and benchmarks: a microphone that hears a user and the robot's own speaker.

Usage (one clock for all three; the wall clock by default)::

    reference = EchoReference(delay_ms=40)                       # states.echo_reference: the AEC far end
    spk = TappedSpeaker(WavSpeaker("reply.wav", sample_rate=24000), reference=reference)
    mic = RoomMicrophone("question.wav", speaker=spk, acoustics=RoomAcoustics(echo_delay_ms=40, echo_gain=0.5))
    await spk.open(); await mic.open()
    block = await mic.read()                                     # the user (as WavMicrophone) + echo + noise
    far = reference.far_for(mic.last_capture_time, len(block))   # what the speaker played, aligned

``RoomMicrophone`` keeps a ``WavMicrophone``'s wall-clock schedule (``ClockedMicrophone``: block ``n`` is captured over
``[t0 + n*block, t0 + (n+1)*block)`` and returned at its end; the file, then silence) to which it
adds the echo of the speaker: what was played ``echo_delay_ms`` earlier times ``echo_gain``, a
couple of weaker, later reflections, and a little noise (``RoomAcoustics``).

The speaker's output comes from a ``speaker_tap.TappedSpeaker`` (or anything ``PlayedAudio``-shaped).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from hardware.errors import HardwareError
from hardware.pcm import MIC_RATE
from hardware.speaker_tap import PlayedAudio
from hardware.stream import Clock, Sleep
from hardware.wav_mic import ClockedMicrophone
from hardware.wavfile import load_wav_16k_mono

log = structlog.get_logger()


# --------------------------------------------------------------------------- the acoustics


@dataclass(frozen=True)
class RoomAcoustics:
    """How the speaker's sound reaches the microphone, and the room's own noise."""

    echo_delay_ms: float = 40.0
    """Direct path: speaker output to microphone input (air, plus any device latency simulated)."""
    echo_gain: float = 0.5
    """Amplitude of the direct echo relative to what was played."""
    reflections: tuple[tuple[float, float], ...] = ((13.0, 0.2), (29.0, -0.12))
    """Later, weaker copies: ``(ms after the direct echo, gain)`` each."""
    noise_rms: float = 10.0
    """Gaussian room noise, in int16 units (10 is about -70 dBFS); 0 for none."""

    def __post_init__(self) -> None:
        values = [self.echo_delay_ms, self.echo_gain, self.noise_rms, *(v for r in self.reflections for v in r)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"room acoustics must be finite numbers: {self}")
        if self.echo_delay_ms < 0 or self.noise_rms < 0 or any(d < 0 for d, _ in self.reflections):
            raise ValueError(f"room delays and noise must be >= 0: {self}")

    def taps(self, sample_rate: int = MIC_RATE) -> tuple[tuple[int, float], ...]:
        """Every path as ``(delay in samples, gain)``, the direct echo first."""
        direct = self.echo_delay_ms
        paths = [(direct, self.echo_gain), *((direct + d, g) for d, g in self.reflections)]
        return tuple((round(ms * sample_rate / 1000), g) for ms, g in paths)

    def echo(self, far: np.ndarray, sample_rate: int = MIC_RATE) -> np.ndarray:
        """The echo of a whole far-end signal (float64, same length; what starts before it is silence)."""
        x = np.asarray(far, dtype=np.float64)
        out = np.zeros(len(x))
        for delay, gain in self.taps(sample_rate):
            if delay < len(x):
                out[delay:] += gain * x[: len(x) - delay]
        return out

    def render(self, far: np.ndarray, near: np.ndarray | None = None, *, seed: int = 0) -> np.ndarray:
        """Offline microphone signal, int16: ``near`` + the echo of ``far`` + noise (both start at sample 0)."""
        n = max(len(far), 0 if near is None else len(near))
        mix = np.zeros(n)
        mix[: len(far)] += self.echo(far)
        if near is not None:
            mix[: len(near)] += np.asarray(near, dtype=np.float64)
        if self.noise_rms > 0:
            mix += np.random.default_rng(seed).normal(0.0, self.noise_rms, n)
        return _to_int16(mix)


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2")


# --------------------------------------------------------------------------- the microphone


class RoomMicrophone(ClockedMicrophone):
    """A microphone in a simulated room: a user WAV (or nobody) plus the echo of ``speaker``, plus noise.

    On the wall clock like ``WavMicrophone``: ``open()`` loads the file and starts the clock;
    ``read()`` returns block ``n`` once ``t0 + (n+1)*block`` has passed. The echo in a block is
    computed when it is returned, from what ``speaker`` reports played. A speaker whose ticks are
    late (a stalled event loop) is waited for, at most ``2 * block_ms``; then what it has not
    written is heard as silence. ``speaker`` may be attached after construction.
    """

    def __init__(
        self,
        user_wav: str | Path | None = None,
        *,
        speaker: PlayedAudio | None = None,
        acoustics: RoomAcoustics | None = None,
        block_ms: int = 20,
        seed: int = 0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(block_ms=block_ms, clock=clock, sleep=sleep)
        self.path = None if user_wav is None else Path(user_wav)
        self.speaker = speaker
        self.acoustics = acoustics or RoomAcoustics()
        self._taps = self.acoustics.taps(MIC_RATE)
        self._rng = np.random.default_rng(seed)
        self._user = np.zeros(0, dtype="<i2")
        self._origin = 0

    @property
    def name(self) -> str:
        return f"microphone 'room:{self.path or '-'}'"

    async def _open(self) -> None:
        """Load and convert the user's file (in a worker thread), then start the clock."""
        if self.path is not None:
            try:
                self._user = await asyncio.to_thread(load_wav_16k_mono, self.path)
            except HardwareError as exc:
                raise HardwareError(f"{self.name}: {exc}") from exc
        self._t0 = self._clock()
        self._origin = math.floor(self._t0 * MIC_RATE + 0.5)
        log.info(
            "room_mic_opened",
            path=str(self.path) if self.path else None,
            seconds=round(self.duration_s, 3),
            echo_delay_ms=self.acoustics.echo_delay_ms,
            echo_gain=self.acoustics.echo_gain,
        )

    async def read_timed(self) -> tuple[bytes, float]:
        """The next block and the clock time of its first sample (on the same grid as the speaker tap)."""
        pcm = await self.read()
        start = self.last_capture_time
        assert start is not None
        return pcm, start

    async def read(self) -> bytes:
        """The next ``block_ms`` of the room, waiting for its end time to pass."""
        n = await self._next_block()
        size = self.block_samples
        first = self._origin + n * size
        if self.speaker is not None:
            await self._wait_for_speaker(self.speaker, (first + size - self._taps[0][0]) / MIC_RATE)
        mix = np.zeros(size)
        user = self._user[n * size : (n + 1) * size]
        mix[: len(user)] += user
        if self.speaker is not None:
            for lag, gain in self._taps:
                if gain:
                    t0 = (first - lag) / MIC_RATE
                    mix += gain * self.speaker.played_between(t0, t0 + size / MIC_RATE).astype(np.float64)
        if self.acoustics.noise_rms > 0:
            mix += self._rng.normal(0.0, self.acoustics.noise_rms, size)
        self._blocks_read = n + 1
        return _to_int16(mix).tobytes()

    async def _wait_for_speaker(self, speaker: PlayedAudio, needed: float) -> None:
        """Let a late speaker ticker write what this block's echo needs (bounded: never hangs)."""
        deadline = self._clock() + 2 * self._block_s
        while speaker.known_until() < needed and self._clock() < deadline:
            await self._sleep(0.001)

    # -- observation

    @property
    def last_capture_time(self) -> float | None:
        """Clock time of the first sample of the block ``read()`` returned last (None before the first)."""
        if self._t0 is None or self._blocks_read == 0:
            return None
        return (self._origin + (self._blocks_read - 1) * self.block_samples) / MIC_RATE

    @property
    def duration_s(self) -> float:
        """Length of the user's file at 16 kHz (0 without one, or before open)."""
        return len(self._user) / MIC_RATE
