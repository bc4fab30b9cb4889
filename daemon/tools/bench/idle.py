"""``moss-voice bench idle``: what the daemon costs while it waits for a wake word (issue 4).

Targets: under 0.05 CPU seconds per second of audio, peak RSS under 120 MB, start to ready
under 1.5 s.

* Start to ready: the real daemon (``python -m daemon run --config FILE``) is spawned ``n`` times
  against the loopback stand-ins, idle (``wake.on_start = false``), with a WAV microphone (quiet
  room noise) and a WAV speaker: from just before the spawn to its ``daemon_ready`` line on
  stdout. One start under ``python -X importtime`` runs first (it also warms the file cache) and
  says which imports the start spends its time on.
* Idle CPU and memory: the last daemon, after ready, over ``--window`` seconds, from
  ``/proc/PID/stat`` (utime + stime) and ``/proc/PID/status`` (VmHWM, VmRSS); then SIGTERM,
  which must end it with exit status 0. The WAV microphone's file is loaded whole, which the daemon
  on a sound card does not do: one more start with a 1 s file gives the peak RSS without it.
* The wake-wait pipeline: while idle the daemon runs no echo canceller and no VAD yet (and does
  not even read the microphone until the first wake); a hotword wait will. Its cost is measured in
  this process on the same audio, through the path barge-in runs (``watch_for_barge_in``: the
  microphone feed, the SpeexDSP echo canceller, the Silero VAD, the endpointer), on a virtual
  clock, with ``time.process_time``. Added to the daemon's idle figure it is the projection
  against the target. The hotword model does not exist yet: its cost comes on top.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardware.wavfile import write_wav

RATE = 16000
BLOCK_MS = 20
TARGET_CPU_S_PER_S = 0.05
TARGET_PEAK_RSS_MB = 120.0
TARGET_READY_MS = 1500.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SETTLE_S = 1.0
"""After ready and before the idle window: the start's last tasks (the LLM check) finish."""
SAMPLE_EVERY_S = 1.0
ROOM_NOISE_DBFS = -60.0
TOP_IMPORTS = 8
SPEECH_QUESTIONS = 6
"""Questions spoken with espeak-ng for the "speech" audio (a conversation near the robot)."""


class BenchError(Exception):
    """The daemon did not start, or a measurement could not be made: the message says why."""


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Start:
    ready_ms: float
    """From just before the spawn to the ``daemon_ready`` line read off its stdout."""
    daemon_ms: float | None
    """The daemon's own ``ms`` field: App.run's start (after interpreter, imports, config) to ready."""
    cpu_s: float
    """CPU the daemon used from spawn to ready."""
    peak_rss_mb: float
    """VmHWM at ready."""
    exit_code: int | None
    """After SIGTERM (None: it did not exit within ``STOP_TIMEOUT_S`` and was killed)."""
    stop_ms: float
    """SIGTERM to exit."""


@dataclass(frozen=True)
class Idle:
    window_s: float
    cpu_s: float
    cpu_s_per_s: float
    worst_interval_cpu_s_per_s: float
    """The highest rate over one sampling interval (``SAMPLE_EVERY_S``) of the window."""
    peak_rss_mb: float
    """VmHWM at the end of the window: the peak since the process started."""
    rss_mb: float
    """VmRSS at the end of the window."""
    threads: int


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


@dataclass(frozen=True)
class ImportCost:
    module: str
    cumulative_ms: float


@dataclass(frozen=True)
class IdleReport:
    starts: list[Start]
    idle: Idle
    pipeline: list[PipelineCost]
    load: LoadCost | None
    imports: list[ImportCost] = field(default_factory=list)
    """The top-level imports of one start, slowest first (under ``-X importtime``, which slows them)."""
    imports_total_ms: float = 0.0
    short_input: Start | None = None
    """One more start, with a WAV microphone 1 s long: the long file, loaded whole, is the stand-in's
    memory, not the daemon's (None: a ``--input`` was given)."""

    @property
    def ready_median_ms(self) -> float:
        return statistics.median(s.ready_ms for s in self.starts)

    @property
    def ready_worst_ms(self) -> float:
        return max(s.ready_ms for s in self.starts)

    @property
    def daemon_median_ms(self) -> float | None:
        own = [s.daemon_ms for s in self.starts if s.daemon_ms is not None]
        return statistics.median(own) if own else None

    @property
    def clean_stops(self) -> bool:
        every = [*self.starts, *([self.short_input] if self.short_input else [])]
        return all(s.exit_code == 0 and s.stop_ms <= STOP_TIMEOUT_S * 1000 for s in every)

    def projected(self, audio: str) -> float:
        """The daemon idle plus the wake-wait pipeline on ``audio``: CPU s per s, hotword excluded."""
        cost = next(p for p in self.pipeline if p.audio == audio)
        return self.idle.cpu_s_per_s + cost.cpu_s_per_s

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["summary"] = {
            "ready_median_ms": self.ready_median_ms,
            "ready_worst_ms": self.ready_worst_ms,
            "daemon_median_ms": self.daemon_median_ms,
            "idle_cpu_s_per_s": self.idle.cpu_s_per_s,
            "projected_cpu_s_per_s": {p.audio: self.projected(p.audio) for p in self.pipeline},
            "peak_rss_mb": self.idle.peak_rss_mb,
            "short_input_peak_rss_mb": self.short_input.peak_rss_mb if self.short_input else None,
            "clean_stops": self.clean_stops,
            "targets": {
                "cpu_s_per_s": TARGET_CPU_S_PER_S,
                "peak_rss_mb": TARGET_PEAK_RSS_MB,
                "ready_ms": TARGET_READY_MS,
            },
        }
        return raw


# --------------------------------------------------------------------------- /proc


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and brackets
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/PID/status (``VmHWM``, ``VmRSS`` in kB, ``Threads``)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def _mb(kb: int) -> float:
    return kb / 1024


# --------------------------------------------------------------------------- audio


def room_noise(seconds: float, *, dbfs: float = ROOM_NOISE_DBFS, seed: int = 4) -> np.ndarray:
    """Quiet room tone: pink (1/f power) noise at ``dbfs`` RMS, int16 at 16 kHz."""
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[0] = 0
    spectrum[1:] /= np.sqrt(freqs[1:] / 100.0)
    noise = np.fft.irfft(spectrum, n)
    noise *= 32768 * 10 ** (dbfs / 20) / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    return np.clip(np.round(noise), -32768, 32767).astype("<i2")


def speech_audio(seconds: float, folder: Path) -> np.ndarray:
    """Questions spoken by espeak-ng, with pauses, over the room tone, repeated to ``seconds``."""
    from daemon.tools.stubs.funasr import QUESTIONS, make_question_wav
    from hardware.wavfile import load_wav_16k_mono

    pause = np.zeros(int(0.6 * RATE), dtype="<i2")
    parts: list[np.ndarray] = []
    for i, text in enumerate(QUESTIONS[:SPEECH_QUESTIONS]):
        parts += [load_wav_16k_mono(make_question_wav(text, folder / f"speech{i}.wav")), pause]
    once = np.concatenate(parts)
    speech = np.tile(once, math.ceil(seconds * RATE / len(once)))[: int(seconds * RATE)]
    mixed = speech.astype(np.int32) + room_noise(seconds, seed=5)
    return np.clip(mixed, -32768, 32767).astype("<i2")


# --------------------------------------------------------------------------- the daemon


def write_config(path: Path, *, asr: str, llm: str, tts: str, audio_input: str, audio_output: str) -> Path:
    """An idle daemon's TOML: the stand-ins, the devices, no wake at start, JSON logs."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    path.write_text(
        "\n".join(
            [
                "[asr]",
                f"url = {q(asr)}",
                "[llm]",
                f"url = {q(llm)}",
                "[tts]",
                f"url = {q(tts)}",
                "[audio]",
                f"input = {q(audio_input)}",
                f"output = {q(audio_output)}",
                "[wake]",
                "on_start = false",
                "[log]",
                'format = "json"',
                'level = "info"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


class DaemonProcess:
    """One ``moss-voice run`` subprocess; its stdout (JSON lines) and stderr are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, spawned_at: float) -> None:
        self.proc = proc
        self.spawned_at = spawned_at
        self.ready = asyncio.Event()
        self.ready_at: float | None = None
        self.ready_event: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self.stderr = bytearray()
        self._readers = [
            asyncio.create_task(self._read_stdout(), name="daemon-stdout"),
            asyncio.create_task(self._read_stderr(), name="daemon-stderr"),
        ]

    @classmethod
    async def spawn(cls, config: Path, *, cwd: Path, python_flags: Sequence[str] = ()) -> DaemonProcess:
        cmd = [sys.executable, *python_flags, "-m", "daemon", "run", "--config", str(config)]
        spawned_at = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        return cls(proc, spawned_at)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            now = time.perf_counter()
            text = line.decode("utf-8", "replace").strip()
            try:
                event = json.loads(text)
            except ValueError:
                self.other_lines.append(text)
                continue
            if not isinstance(event, dict):
                self.other_lines.append(text)
                continue
            self.events.append(event)
            if event.get("event") == "daemon_ready" and not self.ready.is_set():
                self.ready_at = now
                self.ready_event = event
                self.ready.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    def tail(self, lines: int = 12) -> str:
        """The last lines it wrote, for an error message."""
        out = [json.dumps(e, ensure_ascii=False) for e in self.events[-lines:]] + self.other_lines[-lines:]
        err = self.stderr.decode("utf-8", "replace").strip().splitlines()[-lines:]
        return "\n".join(["stdout:", *out, "stderr:", *err])

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds from spawn to ready. Raises BenchError if it exits first or takes too long."""
        ready = asyncio.create_task(self.ready.wait())
        exited = asyncio.create_task(self.proc.wait())
        try:
            await asyncio.wait({ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, exited):
                task.cancel()
            await asyncio.wait({ready, exited})
        if self.ready_at is None:
            why = (
                f"exited with status {self.proc.returncode}"
                if self.proc.returncode is not None
                else f"was not ready after {timeout:.0f} s"
            )
            raise BenchError(f"the daemon {why} before daemon_ready\n{self.tail()}")
        return self.ready_at - self.spawned_at

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> tuple[int | None, float]:
        """SIGTERM, as systemd stops it; its exit status (None: killed after ``timeout``) and the seconds it took."""
        started = time.perf_counter()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code: int | None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            code = None
            self.proc.kill()
            await self.proc.wait()
        took = time.perf_counter() - started
        await asyncio.wait(self._readers, timeout=5.0)
        return code, took

    async def aclose(self) -> None:
        """Kill it if it still runs (after an error), and stop reading."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.wait(self._readers)


async def measure_idle(pid: int, window_s: float, every_s: float = SAMPLE_EVERY_S) -> Idle:
    """CPU per second of wall time of ``pid`` over ``window_s`` (after ``SETTLE_S``), and its memory."""
    await asyncio.sleep(SETTLE_S)
    t0 = time.perf_counter()
    c0 = proc_cpu_s(pid)
    last_t, last_c = t0, c0
    worst = 0.0
    end = t0 + window_s
    while (now := time.perf_counter()) < end:
        await asyncio.sleep(min(every_s, end - now))
        t, c = time.perf_counter(), proc_cpu_s(pid)
        if t > last_t:
            worst = max(worst, (c - last_c) / (t - last_t))
        last_t, last_c = t, c
    status = proc_status(pid)
    cpu = last_c - c0
    return Idle(
        window_s=last_t - t0,
        cpu_s=cpu,
        cpu_s_per_s=cpu / (last_t - t0),
        worst_interval_cpu_s_per_s=worst,
        peak_rss_mb=_mb(status.get("VmHWM", 0)),
        rss_mb=_mb(status.get("VmRSS", 0)),
        threads=status.get("Threads", 0),
    )


async def one_start(config: Path, workdir: Path, *, window_s: float | None = None) -> tuple[Start, Idle | None]:
    """Spawn, wait for ready, optionally watch it idle, then SIGTERM."""
    daemon = await DaemonProcess.spawn(config, cwd=workdir)
    try:
        ready_s = await daemon.wait_ready()
        cpu_at_ready = proc_cpu_s(daemon.pid)
        hwm_at_ready = proc_status(daemon.pid).get("VmHWM", 0)
        idle = await measure_idle(daemon.pid, window_s) if window_s is not None else None
        code, stop_s = await daemon.stop()
    finally:
        await daemon.aclose()
    own = daemon.ready_event.get("ms")
    start = Start(
        ready_ms=ready_s * 1000,
        daemon_ms=float(own) if isinstance(own, int | float) else None,
        cpu_s=cpu_at_ready,
        peak_rss_mb=_mb(hwm_at_ready),
        exit_code=code,
        stop_ms=stop_s * 1000,
    )
    return start, idle


async def import_costs(config: Path, workdir: Path) -> tuple[list[ImportCost], float]:
    """One start under ``-X importtime``: the slowest top-level imports, and all of them together (ms)."""
    daemon = await DaemonProcess.spawn(config, cwd=workdir, python_flags=("-X", "importtime"))
    try:
        await daemon.wait_ready()
        await daemon.stop()
    finally:
        await daemon.aclose()
    return parse_importtime(daemon.stderr.decode("utf-8", "replace"))


def parse_importtime(text: str, top: int = TOP_IMPORTS) -> tuple[list[ImportCost], float]:
    """``-X importtime`` output: the ``top`` slowest top-level imports, and the sum of all top-level ones."""
    costs: list[ImportCost] = []
    for line in text.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the header
        name = parts[2][1:]
        if name.startswith(" "):
            continue  # imported by another import: inside its parent's cumulative time
        costs.append(ImportCost(module=name.strip(), cumulative_ms=int(parts[1]) / 1000))
    total = sum(c.cumulative_ms for c in costs)
    return sorted(costs, key=lambda c: c.cumulative_ms, reverse=True)[:top], total


# --------------------------------------------------------------------------- the wake-wait pipeline


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
                feed=feed, vad=vad, aec=aec, reference=reference, settings=barge, clock=mic.now, training=training
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
            return LoadCost(base_mb=_mb(kb["base"]), vad_mb=_mb(kb["vad"]), aec_mb=_mb(kb["aec"]))
    raise BenchError(f"the memory probe failed (status {proc.returncode}): {err.decode()[-800:]}")


# --------------------------------------------------------------------------- the whole benchmark


async def measure(
    n: int,
    window_s: float,
    workdir: Path,
    *,
    pipeline_s: float = 30.0,
    audio_input: str | None = None,
    audio_output: str | None = None,
    importtime: bool = True,
) -> IdleReport:
    """Every figure: ``n`` starts (the last one watched idle for ``window_s``), the pipeline, memory."""
    from daemon.tools.stubs.runner import start_stubs

    if n < 1 or window_s <= 0 or pipeline_s <= 0:
        raise BenchError("n, the window and the pipeline seconds must be positive")
    mic_spec = audio_input or f"wav:{write_wav(workdir / 'room.wav', room_noise(max(60.0, window_s + 30.0)), RATE)}"
    out_spec = audio_output or f"wav:{workdir / 'out.wav'}"
    starts: list[Start] = []
    idle: Idle | None = None
    imports: list[ImportCost] = []
    imports_total = 0.0
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack)
        config = write_config(
            workdir / "idle.toml", asr=asr.url, llm=llm.url, tts=tts.url, audio_input=mic_spec, audio_output=out_spec
        )
        if importtime:  # first: it also warms the file cache for the timed starts
            imports, imports_total = await import_costs(config, workdir)
        for i in range(n):
            start, watched = await one_start(config, workdir, window_s=window_s if i == n - 1 else None)
            starts.append(start)
            idle = watched or idle
        short_start = None
        if audio_input is None:
            short = f"wav:{write_wav(workdir / 'short.wav', room_noise(1.0), RATE)}"
            config = write_config(
                workdir / "short.toml", asr=asr.url, llm=llm.url, tts=tts.url, audio_input=short, audio_output=out_spec
            )
            short_start, _ = await one_start(config, workdir)
    assert idle is not None
    try:
        speech = speech_audio(pipeline_s, workdir)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"cannot make the speech audio (espeak-ng and sox are needed): {exc}") from exc
    pipeline = [
        await pipeline_cost(room_noise(pipeline_s, seed=6), "room noise"),
        await pipeline_cost(speech, "speech"),
    ]
    return IdleReport(
        starts=starts,
        idle=idle,
        pipeline=pipeline,
        load=await load_cost(),
        imports=imports,
        imports_total_ms=imports_total,
        short_input=short_start,
    )


class _Rows(list[tuple[str, str, str, str]]):
    """Table rows: figure, value, target, met / NOT MET (blank for figures without a target)."""

    def add(self, figure: str, value: str, target: str = "", ok: bool | None = None) -> None:
        self.append((figure, value, target, "" if ok is None else "met" if ok else "NOT MET"))


def report_table(r: IdleReport) -> str:
    """The figures, each with its target and whether it is met."""
    rows = _Rows()
    ready_target, cpu_target = f"< {TARGET_READY_MS:.0f} ms", f"< {TARGET_CPU_S_PER_S}"
    rows.add("start to ready, median", f"{r.ready_median_ms:.0f} ms", ready_target, r.ready_median_ms < TARGET_READY_MS)
    rows.add("start to ready, worst", f"{r.ready_worst_ms:.0f} ms", ready_target, r.ready_worst_ms < TARGET_READY_MS)
    own = r.daemon_median_ms
    rows.add("  of it, the daemon's own (daemon_ready ms)", "-" if own is None else f"{own:.0f} ms")
    rows.add("  CPU used up to ready, median", f"{statistics.median(s.cpu_s for s in r.starts):.2f} s")
    idle_cpu = r.idle.cpu_s_per_s
    rows.add(
        "daemon idle CPU (no wake-word pipeline yet)", f"{idle_cpu:.4f} s/s", cpu_target, idle_cpu < TARGET_CPU_S_PER_S
    )
    for p in r.pipeline:
        rows.add(f"wake-wait pipeline (AEC + VAD), {p.audio}", f"{p.cpu_s_per_s:.4f} s/s")
        shares = f"speex AEC {p.aec_cpu_s_per_s:.4f}, Silero VAD {p.vad_cpu_s_per_s:.4f}"
        rows.add(f"  of it: {shares}", f"{p.speech_fraction:.0%} speech")
    for p in r.pipeline:
        projected = r.projected(p.audio)
        ok = projected < TARGET_CPU_S_PER_S
        rows.add(f"projected idle CPU, {p.audio} (daemon + pipeline)", f"{projected:.4f} s/s", cpu_target, ok)
    peak = r.idle.peak_rss_mb
    rows.add("peak RSS (VmHWM)", f"{peak:.1f} MB", f"< {TARGET_PEAK_RSS_MB:.0f} MB", peak < TARGET_PEAK_RSS_MB)
    rows.add("  RSS at the end of the window (VmRSS)", f"{r.idle.rss_mb:.1f} MB")
    if r.short_input is not None:
        rows.add("  peak RSS with a 1 s WAV input (at ready)", f"{r.short_input.peak_rss_mb:.1f} MB")
    if r.load is not None:
        rows.add("  of it, Silero VAD + speex AEC (loaded at start)", f"{r.load.vad_mb + r.load.aec_mb:.1f} MB")
    every = [*r.starts, *([r.short_input] if r.short_input else [])]
    codes = ",".join("killed" if s.exit_code is None else str(s.exit_code) for s in every)
    rows.add("SIGTERM: exit status", codes, "0", r.clean_stops)
    rows.add("  SIGTERM to exit, worst", f"{max(s.stop_ms for s in every):.0f} ms")
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    head = ("figure", "value", "target", "")
    lines = [
        f"idle cost: {len(r.starts)} start(s), idle window {r.idle.window_s:.1f} s, "
        f"pipeline {r.pipeline[0].seconds:.0f} s of each audio; CPU in seconds per second of audio"
    ]
    for row in (head, *rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    each = " ".join(f"{s.ready_ms:.0f}" for s in r.starts)
    lines.append(f"start to ready, each (ms): {each}")
    lines.append(
        f"idle: {r.idle.cpu_s:.2f} CPU s over {r.idle.window_s:.1f} s, worst {SAMPLE_EVERY_S:.0f} s "
        f"{r.idle.worst_interval_cpu_s_per_s:.3f} s/s, {r.idle.threads} threads"
    )
    if r.load is not None:
        lines.append(
            f"memory of a fresh interpreter with hardware.vad and hardware.aec imported: {r.load.base_mb:.1f} MB; "
            f"the Silero VAD adds {r.load.vad_mb:.1f} MB, the speex AEC {r.load.aec_mb:.1f} MB"
        )
    if r.imports:
        top = ", ".join(f"{c.module} {c.cumulative_ms:.0f}" for c in r.imports)
        lines.append(f"imports of one start (ms, under -X importtime): all {r.imports_total_ms:.0f}; slowest: {top}")
    lines.append("the hotword model is not built yet: its cost comes on top of the projection")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """``moss-voice bench idle`` with its parsed options (``bench/cli.py``)."""
    from daemon.logs import configure_logging

    configure_logging("warning", "console", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="moss-bench-idle-") as tmp:
        try:
            result = asyncio.run(
                measure(
                    args.n,
                    args.window,
                    Path(tmp),
                    pipeline_s=args.pipeline_seconds,
                    audio_input=args.input,
                    audio_output=args.output,
                    importtime=not args.no_importtime,
                )
            )
        except BenchError as exc:
            print(f"moss-voice bench idle: {exc}", file=sys.stderr)
            return 1
    print(report_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
        print(f"raw figures: {args.json}")
    return 0 if result.clean_stops else 1
