"""``moss-voice bench soak --turns N``: N turns back to back against the stand-ins, with random
faults, and what a long run must not do: crash, lose or double a turn's end, leak tasks, file
descriptors or memory.

* The daemon runs as its own process (``DaemonProcess``), as systemd runs it; the three stand-ins
  run in this process so that their ``behaviour.misbehave`` can be flipped between turns.
* Each turn is started through the control API: ``POST /wake`` (a full turn: listen, ASR, LLM,
  TTS, play), ``GET /listen`` (listen and transcribe only) or ``POST /say`` (speak a text). The
  microphone is ``wavloop:``, a short spoken question followed by a pause, over and over: whenever a
  turn starts listening, the question comes round within one loop. That is the real path (VAD,
  endpointer, the ASR websocket) at about one loop per turn, instead of a file as long as the run.
* Before each turn a seeded draw (``--seed``) decides whether a service misbehaves and how (the
  stand-ins' own ``MISBEHAVIOURS``), and which call starts the turn. The timeouts of the soak's
  config are short so that a hung service costs seconds, not the defaults' tens of seconds.
* Figures: ``turn_finished`` per turn (exactly one each), outcomes, faults injected, HTTP statuses
  of the calls (never a 500), tracebacks in the log, the daemon's RSS (``/proc``), open file
  descriptors and asyncio tasks (``/metrics``) after warm-up and at the end (each read after a
  clean answered turn, with the daemon idle), every ``--sample-every`` turns in between, and the
  exit status after SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import tempfile
import time
import wave
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

import httpx
import numpy as np
import structlog

from daemon.tools.bench.daemon_process import BenchError, DaemonProcess, proc_status
from daemon.tools.stubs import funasr_behaviour, openai_behaviour, paddlespeech_behaviour
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.openai import OpenAiBehaviour, OpenAiStub
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour, PaddleSpeechStub
from daemon.tools.stubs.questions import make_question_wav
from daemon.tools.stubs.runner import start_stubs

QUESTION = "hello robot"
"""What the loop says, and what the ASR stand-in "recognises" (no recogniser: the soak measures
the daemon, not pocketsphinx)."""
ANSWER = "Hello. How can I help?"
SAY_TEXT = "Battery at eighty percent."
PAUSE_S = 0.9
"""Silence after the question in the loop: longer than ``END_SILENCE_MS`` plus the VAD's lag."""
END_SILENCE_MS = 500
TTS_RATE = 24000
TONE_S = 0.4
"""The TTS stand-in's voice for every clause: a tone this long (no espeak-ng per request)."""
TURN_TIMEOUT_S = 30.0
"""A turn that has not ended after this is stuck: reported, then stopped with ``POST /stop``."""
IDLE_POLL_S = 0.02
WARMUP_TURNS = 5
FINAL_TRIES = 5
FAULT_RATE = 0.3
ACTIONS = {"wake": 0.7, "listen": 0.15, "say": 0.15}
"""How turns are started, and how often."""
UNSUITED_LLM_FAULTS = ("health_503", "starting")
"""Not a per-request fault: health_503 touches only GET /health, starting only a stand-in's start."""

SOAK_TIMEOUTS = {
    "asr": {"connect_timeout_s": 1.0, "final_timeout_s": 1.0},
    "llm": {"connect_timeout_s": 1.0, "first_token_timeout_s": 2.0, "read_timeout_s": 2.0, "reply_timeout_s": 4.0},
    "tts": {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, "clause_timeout_s": 3.0},
}
"""Short, so that a hung, trickling or endless service costs seconds a turn."""


def fault_modes() -> dict[str, tuple[str, ...]]:
    """Every misbehaviour each stand-in offers that a single request can meet."""
    llm = tuple(m for m in openai_behaviour.MISBEHAVIOURS if m is not None and m not in UNSUITED_LLM_FAULTS)
    return {
        "asr": tuple(funasr_behaviour.MISBEHAVIOURS),
        "llm": llm,
        "tts": tuple(get_args(paddlespeech_behaviour.Misbehaviour)),
    }


@dataclass(frozen=True)
class Fault:
    service: str
    mode: str

    def __str__(self) -> str:
        return f"{self.service}:{self.mode}"


@dataclass(frozen=True)
class Sample:
    """The daemon at one moment, idle."""

    turn: int
    rss_kb: int
    fds: int
    tasks: int


@dataclass
class TurnRecord:
    index: int
    action: str
    fault: str | None
    status: int | None
    """The HTTP status of the call that started it (None: no answer)."""
    finished: int = 0
    """``turn_finished`` events logged between this turn's call and the next one's."""
    outcome: str | None = None
    seconds: float = 0.0
    stuck: bool = False
    mark: int = 0
    """Where this turn's call sits in the daemon's log (the index of the next event)."""


@dataclass
class SoakReport:
    turns: int
    seed: int
    fault_rate: float
    seconds: float = 0.0
    records: list[TurnRecord] = field(default_factory=list)
    start: Sample | None = None
    end: Sample | None = None
    samples: list[Sample] = field(default_factory=list)
    final_outcome: str | None = None
    """The clean turns after the run: the daemon still answers once the services behave."""
    final_tries: int = 0
    """Clean turns it took to be answered again (a daemon that marks a failing service down
    may refuse at once until its probe sees the service back; at most ``FINAL_TRIES``)."""
    tracebacks: int = 0
    """Log lines with an exception attached."""
    crashed: bool = False
    """The daemon exited before it was told to stop."""
    exit_code: int | None = None
    turn_finished_logged: int = 0
    """Every ``turn_finished`` of the run, warm-up and final turns included."""
    turns_started: int = 0
    """Every turn the bench started, warm-up and final turns included."""
    duplicate_turn_ids: int = 0

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(r.outcome or "none" for r in self.records)

    @property
    def faults(self) -> Counter[str]:
        return Counter(r.fault for r in self.records if r.fault is not None)

    @property
    def actions(self) -> Counter[str]:
        return Counter(r.action for r in self.records)

    @property
    def statuses(self) -> Counter[str]:
        return Counter(str(r.status) for r in self.records)

    @property
    def rss_growth_mb(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return (self.end.rss_kb - self.start.rss_kb) / 1024

    def problems(self, *, max_rss_growth_mb: float = 10.0, fd_slack: int = 2, task_slack: int = 2) -> list[str]:
        """The invariants the run broke, each as a sentence (empty: none)."""
        out: list[str] = []
        if self.crashed:
            out.append("the daemon died during the run")
        if self.exit_code != 0:
            out.append(f"the daemon exited with {self.exit_code} after SIGTERM (expected 0)")
        if self.turn_finished_logged != self.turns_started:
            out.append(f"{self.turns_started} turns started, {self.turn_finished_logged} turn_finished logged")
        bad = [r.index for r in self.records if r.finished != 1]
        if bad:
            out.append(f"turns without exactly one turn_finished: {bad[:20]}")
        if self.duplicate_turn_ids:
            out.append(f"{self.duplicate_turn_ids} turn ids finished more than once")
        stuck = [r.index for r in self.records if r.stuck]
        if stuck:
            out.append(f"turns stuck for {TURN_TIMEOUT_S:.0f} s: {stuck[:20]}")
        if self.statuses.get("500") or self.statuses.get("None"):
            out.append(f"control API answers: {dict(self.statuses)}")
        if self.tracebacks:
            out.append(f"{self.tracebacks} tracebacks in the log")
        if self.final_outcome != "answered":
            out.append(f"{self.final_tries} clean turns after the run: the last ended {self.final_outcome!r}")
        if self.start and self.end:
            if self.end.fds > self.start.fds + fd_slack:
                out.append(f"open file descriptors grew from {self.start.fds} to {self.end.fds}")
            if self.end.tasks > self.start.tasks + task_slack:
                out.append(f"asyncio tasks grew from {self.start.tasks} to {self.end.tasks}")
            growth = self.rss_growth_mb
            if growth is not None and growth > max_rss_growth_mb:
                out.append(f"RSS grew {growth:.1f} MB (limit {max_rss_growth_mb:.0f})")
        return out

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["summary"] = {
            "outcomes": dict(self.outcomes),
            "faults": dict(self.faults),
            "actions": dict(self.actions),
            "statuses": dict(self.statuses),
            "rss_growth_mb": self.rss_growth_mb,
            "problems": self.problems(),
        }
        return raw


# --------------------------------------------------------------------------- set-up


def loop_wav(path: Path, workdir: Path) -> Path:
    """The microphone's loop: the question (espeak-ng) then ``PAUSE_S`` of silence."""
    spoken = make_question_wav(QUESTION, workdir / "question.wav")
    with wave.open(str(spoken), "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm + bytes(2 * int(rate * PAUSE_S)))
    return path


def tone(seconds: float = TONE_S, rate: int = TTS_RATE) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * 32767 * np.sin(2 * math.pi * 330 * t)).astype("<i2").tobytes()


def write_soak_config(path: Path, *, asr: str, llm: str, tts: str, mic: Path, speaker: Path) -> Path:
    """The daemon's TOML: the stand-ins with short timeouts, the looping microphone, the control
    API on a free loopback port, no wake word, no follow-up, no barge-in (the loop keeps talking
    while the robot answers), JSON logs."""
    q = json.dumps
    lines = [
        "[asr]",
        f"url = {q(asr)}",
        *(f"{k} = {v}" for k, v in SOAK_TIMEOUTS["asr"].items()),
        "[llm]",
        f"url = {q(llm)}",
        *(f"{k} = {v}" for k, v in SOAK_TIMEOUTS["llm"].items()),
        "[tts]",
        f"url = {q(tts)}",
        *(f"{k} = {v}" for k, v in SOAK_TIMEOUTS["tts"].items()),
        "[audio]",
        f"input = {q('wavloop:' + str(mic))}",
        f"output = {q('wav:' + str(speaker))}",
        "[aec]",
        'engine = "off"',
        "[vad]",
        f"end_silence_ms = {END_SILENCE_MS}",
        "no_speech_timeout_s = 4.0",
        "[barge_in]",
        "enabled = false",
        "[wake]",
        "on_start = false",
        "follow_up_s = 0",
        "[wake.hotword]",
        'engine = "off"',
        "[control]",
        'listen = "127.0.0.1:0"',
        "[log]",
        'format = "json"',
        'level = "info"',
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def proc_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def metric(text: str, name: str) -> float | None:
    """One unlabelled sample of a Prometheus text page."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


# --------------------------------------------------------------------------- the run


class Soak:
    """Drives one daemon through turns; ``report`` collects what was seen."""

    def __init__(
        self,
        daemon: DaemonProcess,
        client: httpx.AsyncClient,
        stubs: tuple[FunAsrStub, OpenAiStub, PaddleSpeechStub],
        report: SoakReport,
    ) -> None:
        self.daemon = daemon
        self.client = client
        self.asr, self.llm, self.tts = stubs
        self.report = report
        self._clean = (self.asr.behaviour, self.llm.behaviour, self.tts.behaviour)
        self._marks: list[int] = []

    async def set_fault(self, fault: Fault | None) -> None:
        asr, llm, tts = self._clean
        mode = fault.mode if fault else None
        self.asr.behaviour = replace(asr, misbehave=mode if fault and fault.service == "asr" else None)
        self.tts.behaviour = replace(tts, misbehave=mode if fault and fault.service == "tts" else None)  # type: ignore[arg-type]
        wanted = replace(llm, misbehave=mode if fault and fault.service == "llm" else None)
        if wanted != self.llm.behaviour:
            await self.llm.set_behaviour(wanted)  # refuse closes its port: wait until it has

    async def turn(self, action: str, fault: Fault | None, index: int) -> TurnRecord:
        """Start one turn with ``action``, wait for its ``turn_finished`` and for idle."""
        await self.set_fault(fault)
        mark = len(self.daemon.events)
        self._marks.append(mark)
        self.report.turns_started += 1
        record = TurnRecord(index=index, action=action, fault=str(fault) if fault else None, status=None, mark=mark)
        started = time.perf_counter()
        call = asyncio.create_task(self._call(action))
        try:
            finished = await self.daemon.wait_for("turn_finished", after=mark, timeout=TURN_TIMEOUT_S)
            record.outcome = str(finished.get("outcome"))
        except BenchError:
            if self.daemon.proc.returncode is not None:
                raise
            record.stuck = True
            await self.client.post("/stop")
        record.status = await call
        await self.wait_idle()
        record.seconds = time.perf_counter() - started
        self._forget_stub_records()
        return record

    async def _call(self, action: str) -> int | None:
        try:
            if action == "wake":
                response = await self.client.post("/wake")
            elif action == "listen":
                response = await self.client.get("/listen")
            else:
                response = await self.client.post("/say", json={"text": SAY_TEXT})
        except httpx.HTTPError:
            return None
        if response.status_code >= 300 and not response.headers.get("content-type", "").startswith("application/json"):
            return None  # an error that is not our JSON shape counts as no answer
        return response.status_code

    async def wait_idle(self) -> None:
        """Poll GET /status until the conversation is back in idle."""
        deadline = time.perf_counter() + TURN_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.daemon.proc.returncode is not None:
                raise BenchError(f"the daemon died\n{self.daemon.tail()}")
            status = (await self.client.get("/status")).json()
            if status.get("state") == "idle" and status.get("turn") is None:
                return
            await asyncio.sleep(IDLE_POLL_S)
        raise BenchError(f"not idle {TURN_TIMEOUT_S:.0f} s after a turn\n{self.daemon.tail()}")

    def _forget_stub_records(self) -> None:
        """The stand-ins keep what they saw (audio included); a long run must not pile it up here."""
        self.asr.sessions.clear()
        self.llm.requests.clear()
        self.llm.disconnect_times.clear()
        for records in (self.tts.requests, self.tts.ws_messages, self.tts.disconnect_times, self.tts.synth_log):
            records.clear()

    async def sample(self, turn: int) -> Sample:
        pid = self.daemon.pid
        page = (await self.client.get("/metrics")).text
        tasks = metric(page, "moss_voice_asyncio_tasks")
        return Sample(
            turn=turn,
            rss_kb=proc_status(pid).get("VmRSS", 0),
            fds=proc_fds(pid),
            tasks=int(tasks) if tasks is not None else -1,
        )

    def count_finishes(self) -> None:
        """How many ``turn_finished`` fell between each turn's call and the next's."""
        events = self.daemon.events
        for record in self.report.records:
            end = next((m for m in self._marks if m > record.mark), len(events))
            record.finished = sum(1 for e in events[record.mark : end] if e.get("event") == "turn_finished")
        ids = Counter(e.get("turn_id") for e in events if e.get("event") == "turn_finished")
        self.report.turn_finished_logged = sum(ids.values())
        self.report.duplicate_turn_ids = sum(1 for n in ids.values() if n > 1)
        self.report.tracebacks = sum(1 for e in events if "exception" in e)


async def soak(
    turns: int,
    *,
    seed: int = 1,
    fault_rate: float = FAULT_RATE,
    warmup: int = WARMUP_TURNS,
    sample_every: int = 50,
    workdir: Path,
    progress: bool = False,
) -> SoakReport:
    """The whole run; raises BenchError when the daemon cannot start or dies."""
    rng = random.Random(seed)
    modes = fault_modes()
    report = SoakReport(turns=turns, seed=seed, fault_rate=fault_rate)
    async with AsyncExitStack() as stack:
        stubs = await start_stubs(
            stack,
            asr=FunAsrBehaviour(transcript_override=QUESTION),
            llm=OpenAiBehaviour(default_answer=ANSWER, first_token_delay_s=0.02, tokens_per_s=0),
            tts=PaddleSpeechBehaviour(sample_rate=TTS_RATE, pcm_override=tone()),
        )
        asr, llm, tts = stubs
        config = write_soak_config(
            workdir / "soak.toml",
            asr=asr.url,
            llm=llm.url,
            tts=tts.url,
            mic=loop_wav(workdir / "loop.wav", workdir),
            speaker=workdir / "speaker.wav",
        )
        daemon = await DaemonProcess.spawn(config, cwd=workdir)
        stack.push_async_callback(daemon.aclose)
        await daemon.wait_ready()
        address = (await daemon.wait_for("control_api_listening"))["address"]
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{address}", timeout=TURN_TIMEOUT_S + 5)
        )
        run = Soak(daemon, client, stubs, report)
        began = time.perf_counter()
        try:
            for _ in range(warmup):
                await run.turn("wake", None, -1)
            report.start = await run.sample(0)
            for i in range(turns):
                fault = None
                if rng.random() < fault_rate:
                    service = rng.choice(sorted(modes))
                    fault = Fault(service, rng.choice(modes[service]))
                action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
                report.records.append(await run.turn(action, fault, i))
                if (i + 1) % sample_every == 0:
                    report.samples.append(await run.sample(i + 1))
                    if progress:
                        print(f"soak: {i + 1}/{turns} turns, {report.samples[-1]}", flush=True)
            while report.final_outcome != "answered" and report.final_tries < FINAL_TRIES:
                report.final_tries += 1
                report.final_outcome = (await run.turn("wake", None, turns)).outcome
            report.end = await run.sample(turns)
        except BenchError:
            report.crashed = daemon.proc.returncode is not None
            if not report.crashed:
                raise
        report.seconds = time.perf_counter() - began
        if not report.crashed:
            report.exit_code, _ = await daemon.stop()
        else:
            report.exit_code = daemon.proc.returncode
        run.count_finishes()
    return report


# --------------------------------------------------------------------------- the command


def summary(report: SoakReport) -> str:
    s, e = report.start, report.end
    lines = [
        f"soak: {report.turns} turns (seed {report.seed}, fault rate {report.fault_rate}) in {report.seconds:.0f} s",
        f"  crashed: {report.crashed}, exit status after SIGTERM: {report.exit_code}, "
        f"tracebacks in the log: {report.tracebacks}",
        f"  turns started {report.turns_started}, turn_finished logged {report.turn_finished_logged} "
        f"(warm-up and the final clean turns included); after the run: {report.final_outcome} "
        f"at clean turn {report.final_tries}",
        f"  started by: {dict(report.actions)}; HTTP statuses: {dict(report.statuses)}",
        f"  outcomes: {dict(sorted(report.outcomes.items()))}",
        f"  faults injected ({sum(report.faults.values())}): {dict(sorted(report.faults.items()))}",
    ]
    if s and e:
        lines += [
            f"  RSS {s.rss_kb / 1024:.1f} -> {e.rss_kb / 1024:.1f} MB ({report.rss_growth_mb:+.1f} MB), "
            f"open fds {s.fds} -> {e.fds}, asyncio tasks {s.tasks} -> {e.tasks}",
        ]
    if report.samples:
        trend = ", ".join(f"{x.turn}: {x.rss_kb / 1024:.1f}" for x in report.samples)
        lines.append(f"  RSS (MB) by turn: {trend}")
    problems = report.problems()
    lines.append("  problems: " + ("; ".join(problems) if problems else "none"))
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # the stand-ins
    with tempfile.TemporaryDirectory(prefix="moss-voice-soak-") as tmp:
        report = asyncio.run(
            soak(
                args.turns,
                seed=args.seed,
                fault_rate=args.fault_rate,
                sample_every=args.sample_every,
                workdir=Path(tmp),
                progress=True,
            )
        )
    print(summary(report))
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    return 1 if report.problems() else 0
