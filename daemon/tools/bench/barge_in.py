"""``moss-voice bench barge-in``: how fast the robot stops when the user cuts in.

One long session on the shared wall clock, with WAV devices and the stand-ins: the user asks a
question, and cuts into every answer with the next question, ``n`` times. Two figures per
interruption:

* the *reaction*, read off the timelines: from where the interrupting speech starts in the input
  file (its first loud sample) to where the speaker's queued audio ends in the output;
* the *cancel propagation*: from the daemon's decision to cancel the answer
  (``Turn.cancelled_at``: the interruption confirmed in ``cancel`` mode, the held answer dropped
  in ``pause`` mode) to the moment the LLM and TTS stand-ins saw their connection closed
  (their ``disconnect_times``), in a process of their own. All on ``time.monotonic()``, one
  clock for both processes. A stream that
  had already ended before the decision has nothing to close: that interruption has no figure
  for it, and the report says how many had an open stream.

Then the case "first answer after start" (``--first-answer N``, ``barge_in_first.py``): N fresh
daemons in a simulated room, each cut into about 1 s into its first answer, with the deaf warm-up
of old and with the double-talk gate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.app import App
from daemon.config import (
    AecSettings,
    AsrSettings,
    AudioSettings,
    BargeInSettings,
    LlmSettings,
    Settings,
    TtsSettings,
    VadSettings,
)
from daemon.logs import configure_logging
from daemon.tools.bench.barge_in_first import first_answer_json, measure_first_answer, report_first_answer
from daemon.tools.bench.stub_process import StubProcess
from daemon.tools.bench.timeline import first_loud_s
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour
from daemon.tools.stubs.questions import QUESTIONS, make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour
from hardware.wav_speaker import WavSpeaker
from hardware.wavfile import write_wav
from states.model import Turn

RATE = 16000
LONG_ANSWER = (
    "Let me tell you about this building. It has four floors, and the library is on the second one. "
    "The cafeteria is open from eight until six, and the garden behind it is a nice place to rest."
)
CUT_IN_ANSWER = LONG_ANSWER + (
    " On the third floor you will find the meeting rooms, which anyone can book at the front desk "
    "for up to two hours at a time. The fourth floor belongs to the research teams, so please ask "
    "before you go up there. Lifts are at both ends of the main hall, and the stairs are next to "
    "them. If you get lost, look for the blue signs on every corner, or simply ask me again and I "
    "will take you wherever you need to go. Visitors should wear their badge at all times, and the "
    "doors close at nine in the evening on working days and at five at weekends."
)
"""Every answer the user cuts into: 210 stand-in tokens (7 s at ``TOKENS_PER_S``), so the LLM is
still generating when the user cuts in, in both modes (pause mode decides seconds later)."""
FINAL_QUESTION = "hello robot"
FINAL_ANSWER = "Hello."
"""The last utterance is not interrupted: a short answer ends the session quickly."""
TOKENS_PER_S = 30.0
TTS = PaddleSpeechBehaviour(first_chunk_delay_s=0.15, realtime_factor=0.3)
"""A streaming TTS at a GPU-like pace (the latency benchmark's "typical" scenario)."""
CUT_IN_AFTER_S = 4.0
"""Each interruption starts this long after the previous utterance ended (the answer plays by then)."""
MATCH_WINDOW_S = 2.0
"""A stand-in's disconnect later than this after a decision is not counted as caused by it (the
daemon gives a cancelled task 2 s, states.model.TASK_CANCEL_TIMEOUT_S)."""
REACTION_TARGET_MS = 150.0
PROPAGATION_TARGET_MS = 50.0


def _ms(start: float, end: float | None) -> float | None:
    """Milliseconds from ``start`` to ``end`` (seconds); None when there is no end."""
    return None if end is None else (end - start) * 1000


@dataclass(frozen=True)
class Reaction:
    onset_s: float
    stopped_s: float | None

    @property
    def ms(self) -> float | None:
        return _ms(self.onset_s, self.stopped_s)


@dataclass(frozen=True)
class Propagation:
    """One cancelled answer: the decision, and when each stand-in saw its connection closed."""

    turn_id: str
    reason: str
    decided_at: float
    """time.monotonic() of the decision (``Turn.cancelled_at``)."""
    llm_closed_at: float | None
    """None: no LLM stream was open at the decision (the whole answer had been generated)."""
    tts_closed_at: float | None
    """None: no TTS request was open (the last sentence's audio had all arrived)."""

    @property
    def llm_ms(self) -> float | None:
        return _ms(self.decided_at, self.llm_closed_at)

    @property
    def tts_ms(self) -> float | None:
        return _ms(self.decided_at, self.tts_closed_at)


@dataclass(frozen=True)
class Session:
    mode: str
    reactions: list[Reaction]
    propagations: list[Propagation]
    """One per cancelled answer, in order (normally one per interruption)."""
    unmatched_llm: int
    """LLM disconnects that followed no decision within MATCH_WINDOW_S (should be 0)."""
    unmatched_tts: int


async def measure(n: int, mode: str, workdir: Path, *, tts_protocol: str = "http") -> Session:
    """Run one session with ``n`` interruptions; return each one's reaction and cancel propagation.

    ``tts_protocol``: the TTS stand-in's protocol, "http" (the default config) or "websocket"."""
    questions = [q for q in QUESTIONS if q != FINAL_QUESTION]
    pieces: list[np.ndarray] = [np.zeros(int(0.4 * RATE), dtype="<i2")]
    onsets: list[float] = []
    t = 0.4
    for i in range(n + 1):
        question = FINAL_QUESTION if i == n else questions[i % len(questions)]
        path = make_question_wav(question, workdir / f"q{i}.wav")
        with wave.open(str(path), "rb") as src:
            pcm = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
        if i > 0:  # the onset is the first loud sample: espeak-ng may start with up to 50 ms of silence
            onsets.append(t + (first_loud_s(pcm, RATE, 0.0) or 0.0))
        pieces.append(pcm)
        t += len(pcm) / RATE
        gap = CUT_IN_AFTER_S if i < n else 8.0
        pieces.append(np.zeros(int(gap * RATE), dtype="<i2"))
        t += gap
    question_wav = workdir / "session.wav"
    write_wav(question_wav, np.concatenate(pieces), RATE)

    turns: list[Turn] = []
    stop = asyncio.Event()

    async def turn_ended(turn: Turn) -> None:
        turns.append(turn)
        if len(turns) == n + 1:
            stop.set()

    # The stand-ins run in a process of their own, as the services run on another machine: on
    # this event loop they would notice a closed connection only when the daemon's next burst of
    # work (the new utterance's VAD) let them run, which is not what a remote server sees.
    async with StubProcess(
        llm=demo_llm_behaviour(
            default_answer=CUT_IN_ANSWER, answers={FINAL_QUESTION: FINAL_ANSWER}, tokens_per_s=TOKENS_PER_S
        ),
        tts=TTS,
        tts_protocol=tts_protocol,
    ) as stubs:
        settings = Settings(
            asr=AsrSettings(url=stubs.urls.asr, final_timeout_s=1.0),
            llm=LlmSettings(url=stubs.urls.llm),
            tts=TtsSettings(url=stubs.urls.tts),
            audio=AudioSettings(input=f"wav:{question_wav}", output=f"wav:{workdir / 'out.wav'}"),
            vad=VadSettings(end_silence_ms=500),
            barge_in=BargeInSettings(mode=mode),
            aec=AecSettings(engine="off"),  # WAV devices: no echo path to cancel
        )
        app = App(settings, on_turn_end=turn_ended)
        await asyncio.wait_for(app.run(stop), 30 + 10 * n)
        assert app.assistant is not None
        speaker = app.assistant.speaker
        llm_closed, tts_closed = await stubs.disconnect_times()
    assert isinstance(speaker, WavSpeaker)
    spans = [(a / speaker.sample_rate, b / speaker.sample_rate) for a, b in speaker.played_audio_spans]
    reactions = [Reaction(onset, _stop_after(spans, onset)) for onset in onsets]
    cut = sorted((t for t in turns if t.cancelled_at is not None), key=lambda t: t.cancelled_at or 0.0)
    decisions = [t.cancelled_at for t in cut if t.cancelled_at is not None]
    llm_matched, unmatched_llm = match_closes(decisions, llm_closed)
    tts_matched, unmatched_tts = match_closes(decisions, tts_closed)
    propagations = [
        Propagation(turn.id, turn.cancel_reason or "?", decided, llm_at, tts_at)
        for turn, decided, llm_at, tts_at in zip(cut, decisions, llm_matched, tts_matched, strict=True)
    ]
    return Session(mode, reactions, propagations, unmatched_llm, unmatched_tts)


def match_closes(decisions: Sequence[float], closes: Sequence[float]) -> tuple[list[float | None], int]:
    """For each decision (sorted), the first close seen after it and before the next decision,
    within MATCH_WINDOW_S; and how many closes matched no decision."""
    matched: list[float | None] = []
    used = 0
    for i, decided in enumerate(decisions):
        end = decided + MATCH_WINDOW_S
        if i + 1 < len(decisions):
            end = min(end, decisions[i + 1])
        inside = [c for c in closes if decided <= c < end]
        matched.append(min(inside) if inside else None)
        used += len(inside)
    return matched, len(closes) - used


def _stop_after(spans: list[tuple[float, float]], onset: float) -> float | None:
    """End of the audio that was playing at ``onset`` (None: nothing was playing then)."""
    for start, end in spans:
        if start <= onset < end:
            return end
    return None


def _met(values: Sequence[float], target: float) -> str:
    under = sum(1 for v in values if v < target)
    if under == len(values):
        return f"target < {target:.0f} ms: met by all"
    return f"target < {target:.0f} ms: met by {under} of {len(values)}"


def _figures(values: Sequence[float]) -> str:
    return f"median {statistics.median(values):.0f} ms, worst {max(values):.0f} ms"


def report(session: Session) -> str:
    reactions = session.reactions
    valid = [r.ms for r in reactions if r.ms is not None]
    lines = [
        f"barge-in, mode {session.mode}: {len(valid)} of {len(reactions)} interruptions came while speaking",
        "  reaction (interruption onset in the input -> reply audio stops in the output):",
    ]
    if valid:
        lines.append(f"    {_figures(valid)}, best {min(valid):.0f} ms; {_met(valid, REACTION_TARGET_MS)}")
        lines.append("    each: " + " ".join(f"{ms:.0f}" for ms in valid))
    props = session.propagations
    reasons: dict[str, int] = {}
    for p in props:
        reasons[p.reason] = reasons.get(p.reason, 0) + 1
    why = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none"
    lines.append(
        f"  cancel propagation (decision to cancel -> connection closed at the stand-in), "
        f"{len(props)} decisions ({why}):"
    )
    for name, values in (("LLM", [p.llm_ms for p in props]), ("TTS", [p.tts_ms for p in props])):
        got = [v for v in values if v is not None]
        open_note = f"{len(got)} of {len(props)} had an open stream"
        if got:
            lines.append(f"    {name} closed: {_figures(got)} ({open_note}); {_met(got, PROPAGATION_TARGET_MS)}")
            lines.append("      each: " + " ".join("-" if v is None else f"{v:.0f}" for v in values))
        else:
            lines.append(f"    {name} closed: no figure ({open_note}: nothing was left to close)")
    if session.unmatched_llm or session.unmatched_tts:
        lines.append(
            f"  closes seen with no decision before them: LLM {session.unmatched_llm}, TTS {session.unmatched_tts}"
        )
    return "\n".join(lines)


def to_json(session: Session) -> dict[str, Any]:
    """The raw figures: every interruption's reaction, every decision's propagation, in ms."""

    def summary(values: Sequence[float | None]) -> dict[str, Any]:
        got = [v for v in values if v is not None]
        return {
            "count": len(got),
            "of": len(values),
            "median_ms": statistics.median(got) if got else None,
            "worst_ms": max(got) if got else None,
            "best_ms": min(got) if got else None,
        }

    return {
        "mode": session.mode,
        "targets_ms": {"reaction": REACTION_TARGET_MS, "propagation": PROPAGATION_TARGET_MS},
        "reactions": [{**asdict(r), "ms": r.ms} for r in session.reactions],
        "propagations": [{**asdict(p), "llm_ms": p.llm_ms, "tts_ms": p.tts_ms} for p in session.propagations],
        "summary": {
            "reaction": summary([r.ms for r in session.reactions]),
            "llm_closed": summary([p.llm_ms for p in session.propagations]),
            "tts_closed": summary([p.tts_ms for p in session.propagations]),
        },
        "unmatched_closes": {"llm": session.unmatched_llm, "tts": session.unmatched_tts},
    }


def command(args: argparse.Namespace) -> int:
    """``moss-voice bench barge-in`` with its parsed options (``bench/cli.py``)."""
    configure_logging("warning", "console")
    first_n = getattr(args, "first_answer", 0)
    with tempfile.TemporaryDirectory(prefix="moss-bench-") as tmp:
        session = asyncio.run(measure(args.n, args.mode, Path(tmp), tts_protocol=args.tts_protocol))
        print(report(session))
        first = None
        if first_n:
            (Path(tmp) / "first").mkdir()
            first = asyncio.run(measure_first_answer(first_n, Path(tmp) / "first"))
            print(report_first_answer(first))
    if args.json:
        raw = to_json(session)
        if first is not None:
            raw["first_answer"] = first_answer_json(first)
        Path(args.json).write_text(json.dumps(raw, indent=2) + "\n")
    return 0
