"""The wake-wait pipeline's cost, for ``moss-voice bench idle``: the path a hotword wait will run
(microphone feed, SpeexDSP echo canceller, Silero VAD, endpointer) on a virtual clock in this
process, each engine alone on the same audio, and the memory the engines add to an interpreter."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from daemon.tools.bench.daemon_process import BenchError, mb

RATE = 16000
BLOCK_MS = 20


@dataclass(frozen=True)
class PipelineCost:
    audio: str
    seconds: float
    cpu_s_per_s: float
    """The whole path: feed, echo canceller with its reference, VAD, endpointer."""
    aec_cpu_s_per_s: float
    """The echo canceller alone on the same audio (a direct loop)."""
    vad_cpu_s_per_s: float
    """The VAD alone on the canceller's output (a direct loop)."""
    speech_fraction: float
    """VAD frames marked speech."""
    speech_starts: int
    """Speech runs the path took for a user starting to talk (``barge_in.min_speech_ms``)."""


@dataclass(frozen=True)
class LoadCost:
    """RSS of a fresh interpreter with hardware.vad and hardware.aec imported, and what each engine adds."""

    base_mb: float
    vad_mb: float
    aec_mb: float


class _FiniteMic:
    """``pcm`` as a timed microphone on a virtual clock: each block as soon as it is read, then nothing."""

    sample_rate = RATE

    def __init__(self, pcm: bytes, block_ms: int = BLOCK_MS) -> None:
        self._size = RATE * block_ms // 1000 * 2
        pad = -len(pcm) % self._size
        self._pcm = pcm + bytes(pad)
        self._pos = 0
        self._never = asyncio.Event()

    @property
    def total_blocks(self) -> int:
        return len(self._pcm) // self._size

    def now(self) -> float:
        """The virtual clock: the capture time of what has been delivered."""
        return self._pos / 2 / RATE

    async def read_timed(self) -> tuple[bytes, float]:
        if self._pos >= len(self._pcm):
            await self._never.wait()  # the audio is over: as if nobody ever spoke again, at no cost
        await asyncio.sleep(0)  # a device hands over one block per wake-up
        start = self.now()
        block = self._pcm[self._pos : self._pos + self._size]
        self._pos += self._size
        return block, start

    async def read(self) -> bytes:
        return (await self.read_timed())[0]

    async def aclose(self) -> None:
        """Nothing to release."""


async def pipeline_cost(pcm: np.ndarray, audio: str) -> PipelineCost:
    """CPU per second of ``pcm`` through the daemon's wake-wait path, and each engine's share."""
    from daemon.app import assistant_settings
    from daemon.config import Settings
    from daemon.devices import make_echo_canceller
    from hardware.vad import make_vad
    from states.barge_in import EchoTraining, watch_for_barge_in
    from states.echo_reference import EchoReference
    from states.mic_feed import Block, MicFeed

    settings = Settings()
    if settings.aec.engine == "off":
        raise BenchError("the default config has no echo canceller: nothing to measure")
    seconds = len(pcm) / RATE
    mic = _FiniteMic(pcm.astype("<i2").tobytes())
    aec = make_echo_canceller(settings.aec)
    assert aec is not None
    vad = make_vad("silero", threshold=settings.vad.silero_threshold)
    expected_blocks = mic.total_blocks
    done = asyncio.Event()

    class CountingFeed(MicFeed):
        """The daemon's microphone feed, counting the blocks the watch has taken.

        The watch handles a block whole (no await inside) before it asks for the next, so once
        the last block is taken and the watch waits again, all the audio has been through."""

        taken = 0

        async def read_block(self) -> Block:
            block = await super().read_block()
            self.taken += 1
            if self.taken >= expected_blocks:
                done.set()
            return block

    reference = EchoReference(delay_ms=settings.aec.reference_delay_ms)  # silent: the robot is not speaking
    feed = CountingFeed(mic, clock=mic.now, max_buffer_s=seconds + 1)
    barge = assistant_settings(settings).barge_in
    training = EchoTraining(far_s=math.inf)  # trained: the VAD judges every frame, as a wake wait will
    starts = 0

    async def wait_for_speech_forever() -> None:
        nonlocal starts
        while True:
            await watch_for_barge_in(
                feed=feed,
                vad=vad,
                aec=aec,
                reference=reference,
                settings=barge,
                listening=settings.vad,
                clock=mic.now,
                training=training,
            )
            starts += 1

    cpu0 = time.process_time()
    task = asyncio.create_task(wait_for_speech_forever(), name="wake-wait")
    try:
        await asyncio.wait_for(done.wait(), timeout=max(60.0, seconds * 5))
    finally:
        task.cancel()
        await asyncio.wait({task})
        cpu = time.process_time() - cpu0
        await feed.aclose()
    if feed.dropped_bytes:
        raise BenchError(f"the feed dropped {feed.dropped_bytes} bytes: the measurement is not whole")
    aec_s, vad_s, speech = _engine_costs(pcm.astype("<i2").tobytes())
    return PipelineCost(
        audio=audio,
        seconds=seconds,
        cpu_s_per_s=cpu / seconds,
        aec_cpu_s_per_s=aec_s / seconds,
        vad_cpu_s_per_s=vad_s / seconds,
        speech_fraction=speech,
        speech_starts=starts,
    )


def _engine_costs(pcm: bytes) -> tuple[float, float, float]:
    """CPU seconds of fresh echo canceller and VAD instances over ``pcm``, and the fraction of speech frames."""
    from daemon.config import Settings
    from daemon.devices import make_echo_canceller
    from hardware.vad import make_vad

    settings = Settings()
    aec = make_echo_canceller(settings.aec)
    assert aec is not None
    fb = aec.frame_bytes
    far = bytes(fb)
    frames = [pcm[i : i + fb] for i in range(0, len(pcm) - fb + 1, fb)]
    t0 = time.process_time()
    clean = b"".join([aec.process(frame, far) for frame in frames])
    aec_s = time.process_time() - t0
    vad = make_vad("silero", threshold=settings.vad.silero_threshold)
    vb = vad.frame_bytes
    vad_frames = [clean[i : i + vb] for i in range(0, len(clean) - vb + 1, vb)]
    t0 = time.process_time()
    verdicts = [vad.is_speech(frame) for frame in vad_frames]
    vad_s = time.process_time() - t0
    return aec_s, vad_s, (sum(verdicts) / len(verdicts) if verdicts else 0.0)


_LOAD_PROBE = """
import json
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))  # quiet: stdout is the result
from daemon.config import Settings
from hardware.aec import make_echo_canceller
from hardware.vad import make_vad
settings = Settings()
base = rss()
vad = make_vad("silero", threshold=settings.vad.silero_threshold)
vad.is_speech(bytes(vad.frame_bytes))
after_vad = rss()
aec = make_echo_canceller(settings.aec.engine, frame_ms=settings.aec.frame_ms, filter_ms=settings.aec.filter_ms)
aec.process(bytes(aec.frame_bytes), bytes(aec.frame_bytes))
after_aec = rss()
print("RESULT " + json.dumps({"base": base, "vad": after_vad - base, "aec": after_aec - after_vad}))
"""


async def load_cost() -> LoadCost:
    """What creating the Silero VAD and the speex echo canceller adds to a fresh interpreter's RSS."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOAD_PROBE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60.0)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError("the memory probe did not finish in 60 s") from None
    for line in out.decode().splitlines():
        if line.startswith("RESULT "):
            kb = json.loads(line[len("RESULT ") :])
            return LoadCost(base_mb=mb(kb["base"]), vad_mb=mb(kb["vad"]), aec_mb=mb(kb["aec"]))
    raise BenchError(f"the memory probe failed (status {proc.returncode}): {err.decode()[-800:]}")
