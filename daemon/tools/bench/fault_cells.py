"""The fault matrix: each service (ASR, LLM, TTS) times each fault, acted out by the stand-ins, and
one cell run against a daemon in this process (``run_cell``), for tests/test_fault_matrix.py and
``moss-voice bench faults``.

A cell is one daemon (the App, WAV microphone and speaker) and two turns. The stand-ins start well
behaved, so the start-up probes pass; once the daemon is ready, the cell's service is told to
misbehave (daemon/tools/stubs/switch.py) and the first turn is woken; when it has ended, the
service behaves again and a second turn is woken, which must be answered. The microphone's file
says the question every ``QUESTION_EVERY_S`` seconds, so each turn hears one whenever it wakes;
the ASR stand-in returns a fixed transcript whatever it hears (no recognition to wait for).

What a cell records (``CellResult``): how the first turn ended and how long after the fault struck
(the wake for the ASR, the LLM request, the first TTS request), whether the error earcon was
played (found sample for sample in the output WAV) or an apology spoken, the warnings and errors
that name the service, whether the machine went back to idle, and the second turn's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import wave
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from daemon.app import App
from daemon.config import (
    AecSettings,
    AsrSettings,
    AudioSettings,
    HotwordSettings,
    LlmSettings,
    ReplySettings,
    Settings,
    TtsSettings,
    VadSettings,
    WakeSettings,
)
from daemon.earcon import failure_earcon
from daemon.systemd_notify import Notifier
from daemon.tools.stubs.funasr import FunAsrBehaviour, make_question_wav, read_wav_pcm
from daemon.tools.stubs.openai import OpenAiBehaviour
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour
from daemon.tools.stubs.runner import start_stubs
from daemon.tools.stubs.switch import StubSwitch
from hardware.wav_speaker import WavSpeaker
from states.barge_in import BargeInSettings
from states.machine import State
from states.model import Turn

SERVICES = ("asr", "llm", "tts")
FAULTS = ("refused", "hang", "error", "malformed", "cut", "trickle", "flood")
MATRIX: dict[tuple[str, str], str] = {
    ("asr", "refused"): "down",
    ("llm", "refused"): "down",
    ("tts", "refused"): "down",
    ("asr", "hang"): "hang",  # TCP accepted, the websocket handshake never answered
    ("llm", "hang"): "hang",  # the request read, no headers ever
    ("tts", "hang"): "hang",
    ("asr", "error"): "error",  # the server's error message at the end of the utterance
    ("llm", "error"): "error_500",
    ("tts", "error"): "error_500",
    ("asr", "malformed"): "garbage",
    ("llm", "malformed"): "garbage",
    ("tts", "malformed"): "garbage",
    ("asr", "cut"): "close_mid_utterance",
    ("llm", "cut"): "cut",
    ("tts", "cut"): "truncate",
    ("asr", "trickle"): "trickle",
    ("llm", "trickle"): "trickle",
    ("tts", "trickle"): "trickle",
    ("asr", "flood"): "flood",  # ever longer results, as fast as possible, no final
    ("llm", "flood"): "flood",  # an answer of 200 000 characters
    ("tts", "flood"): "flood",  # ten minutes of audio for one clause
}
"""(service, fault) -> the stand-in's misbehaviour that acts it out."""
EXTRA: dict[tuple[str, str], str] = {
    ("asr", "mute"): "mute",
    ("llm", "ping_only"): "ping_only",
    ("tts", "endless"): "endless",
    ("tts", "ws-refused"): "down",
    ("tts", "ws-hang"): "hang",
    ("tts", "ws-error"): "ws_error",
    ("tts", "ws-malformed"): "garbage",
    ("tts", "ws-cut"): "truncate",
}
"""More beside the matrix: an ASR that takes the audio and never answers, an LLM that only pings,
a TTS that never stops, and the TTS's websocket protocol (``ws-*``: the stand-in and the daemon
speak PaddleSpeech's websocket protocol instead of HTTP)."""
CELLS: tuple[tuple[str, str], ...] = tuple(MATRIX)

QUESTION = "who are you"
ANSWER = "I am MOSS."
QUESTION_EVERY_S = 2.0
LEAD_S = 0.3
MIC_SECONDS = 120.0
STAGE_TIMEOUT_S = 2.0
"""Every per-stage timeout of a cell's daemon (connect, ASR final, first token, reads)."""
REPLY_CHARS = 60
"""reply.max_reply_chars (and max_clause_chars) of a cell's daemon: an enormous answer is cut here."""
BOUND_S = 8.0
"""A failed stage ends its turn within this, from the fault: a 2 s timeout, the error earcon, slack."""
DEGRADED_BOUND_S = 12.0
"""A turn the fault only degrades (a cut-off answer to a cut-off question) ends within this, from
the fault: the stage's timeout, then at most REPLY_CHARS of speech (about 4 s)."""
GIVE_UP_S = 16.0
"""A turn still running this long after its wake is recorded as hung, and stopped."""
TRICKLE_S = 1.0
PING_S = 1.0


@dataclass
class CellResult:
    service: str
    fault: str
    misbehave: str
    outcome: str | None = None
    """The faulty turn's outcome; None: it did not end within GIVE_UP_S."""
    failed_service: str | None = None
    reason: str | None = None
    fault_to_end_s: float | None = None
    """From the fault striking (wake / LLM request / first TTS request) to the turn's end."""
    error_earcons: int = 0
    """Failure earcons in the output WAV, sample for sample."""
    apology: bool = False
    """Between turn_failed and the end of the faulty turn, the TTS was asked for something or an
    event named for an apology was logged."""
    sound_after_failure: bool = False
    """The speaker started playing something after turn_failed, before the next turn's wake (an
    earcon or an apology, whatever its form: nothing else plays then)."""
    fault_logs: list[dict[str, Any]] = field(default_factory=list)
    """The faulty turn's warnings and errors that name the service."""
    idle_after: bool = False
    transcript_chars: int = 0
    reply_chars: int = 0
    repeat_outcomes: list[str | None] = field(default_factory=list)
    """With ``repeats`` > 1: the outcomes of the faulty turns after the first."""
    repeat_logs: list[dict[str, Any]] = field(default_factory=list)
    """Like ``fault_logs``, over every faulty turn."""
    next_outcome: str | None = None
    next_reply: str = ""
    crashed: str | None = None
    """The daemon's run() raised (or did not stop): what."""

    @property
    def heard_failure(self) -> bool:
        return self.error_earcons > 0 or self.apology or self.sound_after_failure

    @property
    def failure_lines(self) -> int:
        """Warnings/errors naming the service, besides ``turn_failed`` (it names it by design) and
        ``service_down`` (the service's state, once when it changes)."""
        return sum(1 for e in self.fault_logs if e["event"] not in ("turn_failed", "service_down"))


def behaviours() -> tuple[FunAsrBehaviour, OpenAiBehaviour, PaddleSpeechBehaviour]:
    """Well-behaved stand-ins, with the misbehaviours' knobs set for the matrix."""
    asr = FunAsrBehaviour(transcript_override=QUESTION, trickle_interval_s=TRICKLE_S)
    llm = OpenAiBehaviour(
        answers={"who": ANSWER},
        first_token_delay_s=0.05,
        tokens_per_s=200.0,
        trickle_interval_s=TRICKLE_S,
        ping_interval_s=PING_S,
    )
    tts = PaddleSpeechBehaviour(trickle_interval_s=TRICKLE_S)
    return asr, llm, tts


def microphone_wav(path: Path) -> Path:
    """The question every QUESTION_EVERY_S seconds (the first after LEAD_S), for MIC_SECONDS."""
    spoken = read_wav_pcm(make_question_wav(QUESTION, path.with_name(path.stem + "-once.wav")))
    speech = np.frombuffer(spoken, dtype="<i2")
    period = np.zeros(int(QUESTION_EVERY_S * 16000), dtype="<i2")
    period[: len(speech)] = speech[: len(period)]
    lead = np.zeros(int(LEAD_S * 16000), dtype="<i2")
    pcm = np.concatenate([lead, np.tile(period, int(MIC_SECONDS / QUESTION_EVERY_S))])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def _microphone_in(workdir: Path) -> Path:
    """The microphone's file in ``workdir``, made once."""
    workdir.mkdir(parents=True, exist_ok=True)
    mic = workdir / "question.wav"
    return mic if mic.exists() else microphone_wav(mic)


def cell_settings(urls: tuple[str, str, str], mic: Path, out: Path) -> Settings:
    t = STAGE_TIMEOUT_S
    return Settings(
        asr=AsrSettings(url=urls[0], connect_timeout_s=t, final_timeout_s=1.0),
        llm=LlmSettings(url=urls[1], connect_timeout_s=t, first_token_timeout_s=t, read_timeout_s=t),
        tts=TtsSettings(url=urls[2], connect_timeout_s=t, read_timeout_s=t, clause_timeout_s=2 * t),
        audio=AudioSettings(input=f"wav:{mic}", output=f"wav:{out}"),
        aec=AecSettings(engine="off"),
        vad=VadSettings(end_silence_ms=500, no_speech_timeout_s=2 * QUESTION_EVERY_S),
        reply=ReplySettings(max_clause_chars=REPLY_CHARS, max_reply_chars=REPLY_CHARS),
        barge_in=BargeInSettings(enabled=False),  # the next question on the file must not cut the answer
        # Woken by the cell alone: the hotword engine can take the file's questions for its word.
        wake=WakeSettings(on_start=False, follow_up_s=0, hotword=HotwordSettings(engine="off")),
    )


class _ReadyNotifier(Notifier):
    """Tells the cell when the daemon is ready (its READY=1 to systemd)."""

    def __init__(self) -> None:
        super().__init__({})
        self.is_ready = asyncio.Event()

    def ready(self) -> None:
        self.is_ready.set()


class _Timeline:
    """Every log entry, stamped with time.monotonic(); awaitable by event name."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._waiters: list[tuple[str, dict[str, Any], asyncio.Future[dict[str, Any]]]] = []

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict.setdefault("log_level", method_name)
        entry = {**event_dict, "_at": time.monotonic()}
        self.entries.append(entry)
        for name, fields, waiter in self._waiters:
            if not waiter.done() and _matches(entry, name, fields):
                waiter.set_result(entry)
        raise structlog.DropEvent

    def after(self, at: float, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["_at"] >= at and _matches(e, name, fields)]

    async def wait_for(self, name: str, *, since: float, **fields: Any) -> dict[str, Any]:
        if found := self.after(since, name, **fields):
            return found[0]
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        item = (name, fields, waiter)
        self._waiters.append(item)
        try:
            return await waiter
        finally:
            self._waiters.remove(item)


def _matches(entry: dict[str, Any], name: str, fields: dict[str, Any]) -> bool:
    return entry["event"] == name and all(entry.get(k) == v for k, v in fields.items())


_CELL: contextvars.ContextVar[_Timeline | None] = contextvars.ContextVar("fault_cell", default=None)
"""The timeline of the cell whose task (or a task or thread it started) is logging."""
_capturing: list[Any] = []
"""structlog's processors from before the first capture, while any cell captures."""


def _route(logger: Any, method_name: str, event_dict: Any) -> Any:
    timeline = _CELL.get()
    if timeline is None:
        raise structlog.DropEvent
    return timeline(logger, method_name, event_dict)


@contextlib.contextmanager
def _capture() -> Iterator[_Timeline]:
    """Route every structlog entry of this task (and of what it starts) to a _Timeline, and
    nowhere else, for the block. Cells running at once each get their own entries."""
    timeline = _Timeline()
    if not _capturing:
        _capturing.append(structlog.get_config()["processors"])
        structlog.configure(processors=[structlog.contextvars.merge_contextvars, _route])
    _capturing.append(None)
    token = _CELL.set(timeline)
    try:
        yield timeline
    finally:
        _CELL.reset(token)
        _capturing.pop()
        if len(_capturing) == 1:
            structlog.configure(processors=_capturing.pop())


def count_earcon(out: Path, earcon: bytes) -> int:
    """How many times ``earcon`` was played into the WAV ``out``, sample for sample."""
    with wave.open(str(out), "rb") as w:
        data = w.readframes(w.getnframes())
    count, start = 0, 0
    while (found := data.find(earcon, start)) >= 0:
        if found % 2 == 0:
            count += 1
        start = found + 1
    return count


async def run_cell(
    service: str,
    fault: str,
    workdir: Path,
    *,
    misbehave: str | None = None,
    give_up_s: float = GIVE_UP_S,
    repeats: int = 1,
) -> CellResult:
    """One cell: the daemon, a faulty turn, a good turn. Never raises for what the daemon does.
    ``give_up_s``: the faulty turn still running this long after its wake is stopped (``outcome`` None).
    ``repeats``: that many faulty turns in a row (a fault that repeats), then the good one."""
    name = misbehave or MATRIX.get((service, fault)) or EXTRA[(service, fault)]
    result = CellResult(service, fault, name)
    mic = await asyncio.to_thread(_microphone_in, workdir)
    out = workdir / f"{service}-{fault}.wav"
    asr_b, llm_b, tts_b = behaviours()
    with _capture() as timeline:
        async with AsyncExitStack() as stack:
            protocol = "websocket" if fault.startswith("ws-") else "http"
            asr, llm, tts = await start_stubs(stack, asr=asr_b, llm=llm_b, tts=tts_b, tts_protocol=protocol)
            switch = StubSwitch(asr, llm, tts)
            ended: asyncio.Queue[tuple[Turn, float]] = asyncio.Queue()
            notifier = _ReadyNotifier()
            stop = asyncio.Event()

            def turn_ended(turn: Turn) -> None:
                ended.put_nowait((turn, time.monotonic()))

            app = App(cell_settings((asr.url, llm.url, tts.url), mic, out), on_turn_end=turn_ended, notifier=notifier)
            running = asyncio.create_task(app.run(stop), name="fault-cell-daemon")
            try:
                await _act(app, running, notifier, ended, timeline, switch, result, give_up_s, repeats)
            finally:
                stop.set()
                done, _ = await asyncio.wait({running}, timeout=GIVE_UP_S)
                if not done:
                    running.cancel()
                    result.crashed = result.crashed or "the daemon did not stop within GIVE_UP_S"
                    await asyncio.wait({running})
                elif running.exception() is not None:
                    result.crashed = result.crashed or repr(running.exception())
    result.error_earcons = await asyncio.to_thread(_error_earcons_in, out)
    return result


async def run_cells(
    cells: Iterable[tuple[str, str]], workdir: Path, *, at_once: int = 1
) -> dict[tuple[str, str], CellResult]:
    """Each cell, ``at_once`` of them at a time (each is a daemon that mostly waits on real-time
    audio; the test suite runs several at once, the benchmark one by one for its figures)."""
    await asyncio.to_thread(_microphone_in, workdir)  # made once, before the cells share it
    limit = asyncio.Semaphore(at_once)
    results: dict[tuple[str, str], CellResult] = {}

    async def one(service: str, fault: str) -> None:
        async with limit:
            results[(service, fault)] = await run_cell(service, fault, workdir)

    await asyncio.gather(*(one(service, fault) for service, fault in cells))
    return results


def _error_earcons_in(out: Path) -> int:
    return count_earcon(out, failure_earcon(_rate(out))) if out.exists() else 0


async def _act(
    app: App,
    running: asyncio.Task[int],
    notifier: _ReadyNotifier,
    ended: asyncio.Queue[tuple[Turn, float]],
    timeline: _Timeline,
    switch: StubSwitch,
    result: CellResult,
    give_up_s: float,
    repeats: int,
) -> None:
    if not await _first(notifier.is_ready.wait(), running, GIVE_UP_S):
        result.crashed = "the daemon did not get ready"
        return
    assistant = app.assistant
    assert assistant is not None
    await switch.set(result.service, result.misbehave)
    woke = time.monotonic()
    await assistant.wake()
    got = await _first(ended.get(), running, give_up_s)
    if got is None:
        await assistant.stop()  # hung: end it, so that recovery can still be tried
        got = await _first(ended.get(), running, GIVE_UP_S)
        turn, at = got if got is not None else (None, time.monotonic())
    else:
        turn, at = got
        result.outcome = turn.outcome
        result.failed_service, result.reason = turn.failed_service, turn.failure
        result.transcript_chars, result.reply_chars = len(turn.transcript or ""), len(turn.reply or "")
        struck = _struck(timeline, result.service, woke)
        result.fault_to_end_s = None if struck is None else round(at - struck, 3)
    failed = timeline.after(woke, "turn_failed")
    if failed:
        # An apology: asked of the TTS after the failure, or a cached one the daemon reports playing.
        result.apology = any(
            e["_at"] <= at and (e["event"] == "tts_request" or "apolog" in str(e["event"]))
            for e in timeline.entries
            if e["_at"] >= failed[0]["_at"]
        )
    result.fault_logs = _naming(timeline, result.service, woke, at + 0.5)
    # The turn is reported from the transition into IDLE, so the state may already be there.
    idle = await _first(timeline.wait_for("state_changed", since=woke, dst="idle"), running, GIVE_UP_S)
    result.idle_after = idle is not None and assistant.state is State.IDLE
    for _ in range(repeats - 1):
        await assistant.wake()
        got = await _first(ended.get(), running, give_up_s)
        if got is None:
            await assistant.stop()
            await _first(ended.get(), running, GIVE_UP_S)
        result.repeat_outcomes.append(None if got is None else got[0].outcome)
    result.repeat_logs = _naming(timeline, result.service, woke, time.monotonic())
    if failed:  # once what followed the failure has played, before the next turn's earcon
        await _first(assistant.speaker.drain(), running, GIVE_UP_S)
        result.sound_after_failure = _sound_between(assistant.speaker, woke, failed[0]["_at"], time.monotonic())
    await switch.set(result.service, None)
    if timeline.after(woke, "service_down", service=result.service):
        # Marked down: the next turn would fail at once until the background probe finds it back.
        await _first(timeline.wait_for("service_up", since=woke, service=result.service), running, GIVE_UP_S)
    await assistant.wake()
    got = await _first(ended.get(), running, GIVE_UP_S)
    if got is not None:
        result.next_outcome, result.next_reply = got[0].outcome, got[0].reply or ""
    if running.done():
        result.crashed = repr(running.exception()) if running.exception() else "the daemon ended by itself"


def _sound_between(speaker: object, woke: float, since: float, until: float) -> bool:
    """Did the WAV speaker start playing something between ``since`` and ``until`` (monotonic)?

    The speaker's file runs on the same clock from its opening; the turn's listening earcon, its
    first sound, was written at ``woke`` and is the anchor (give or take a block)."""
    if not isinstance(speaker, WavSpeaker) or not speaker.played_audio_spans:
        return False
    rate = speaker.sample_rate
    anchor = speaker.played_audio_spans[0][0] / rate - woke
    margin = 2 * speaker.block_ms / 1000
    spans = speaker.played_audio_spans[1:]
    return any(since + anchor - margin <= start / rate < until + anchor for start, _ in spans)


def _naming(timeline: _Timeline, service: str, since: float, until: float) -> list[dict[str, Any]]:
    """The warnings and errors naming ``service`` logged between ``since`` and ``until``."""
    return [
        {k: v for k, v in e.items() if k != "_at"}
        for e in timeline.entries
        if since <= e["_at"] <= until and e.get("log_level") in ("warning", "error", "critical") and _names(e, service)
    ]


def _struck(timeline: _Timeline, service: str, woke: float) -> float | None:
    """When the fault struck: the wake for the ASR (its session opens then), else the first request."""
    if service == "asr":
        return woke
    found = timeline.after(woke, "llm_request" if service == "llm" else "tts_request")
    return found[0]["_at"] if found else None


def _names(entry: dict[str, Any], service: str) -> bool:
    """Does this log entry name ``service``: its field, or an event of the service's own client?"""
    return entry.get("service") == service or str(entry["event"]).startswith(service + "_")


async def _first(awaitable: Any, running: asyncio.Task[int], timeout: float) -> Any:
    """``awaitable``'s result; None if the daemon ended first or ``timeout`` passed."""
    waiter = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({waiter, running}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not waiter.done():
            waiter.cancel()
            await asyncio.wait({waiter})
    return waiter.result() if waiter in done else None


def _rate(out: Path) -> int:
    with wave.open(str(out), "rb") as w:
        return w.getframerate()
