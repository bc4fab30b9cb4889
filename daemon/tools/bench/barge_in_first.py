"""``moss-voice bench barge-in``, case "first answer after start": a fresh daemon, whose echo
canceller has learnt nothing, and a user who cuts into its very first answer about 1 s in.

Each start is a new ``App`` (a new canceller, a new warm-up) in a simulated room (``room:``
input: the user's WAV plus the echo of what the speaker plays, ``hardware/room.py``), the
stand-ins in a process of their own. The user asks a question, and speaks the next one
``CUT_IN_S`` after the answer's first sound. A calibration start (no cut-in) finds when that
is; every start reports where its interruption really fell. The *reaction* is, as in the
session case, from the interruption's first loud sample in the input to the end of the answer's
audio in the output. Run with the rule of before issue 12 (``aec_double_talk = false``: barge-in
waits until the canceller has heard ``aec_warmup_s`` of the robot) and with the double-talk gate,
side by side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.app import App
from daemon.config import AsrSettings, AudioSettings, BargeInSettings, LlmSettings, Settings, TtsSettings, VadSettings
from daemon.tools.bench.stub_process import StubProcess
from daemon.tools.bench.timeline import first_loud_s
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour
from daemon.tools.stubs.questions import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour
from hardware.speaker_tap import TappedSpeaker
from hardware.wav_speaker import WavSpeaker
from hardware.wavfile import write_wav
from states.model import Turn

RATE = 16000
LEAD_S = 0.4
QUESTION = "who are you"
CUT_IN = "tell me a joke"
ANSWER = (
    "Let me tell you about this building. It has four floors, and the library is on the second one. "
    "The cafeteria is open from eight until six, and the garden behind it is a nice place to rest."
)
CUT_IN_S = 1.0
TTS = PaddleSpeechBehaviour(first_chunk_delay_s=0.15, realtime_factor=0.3)
REACTION_TARGET_MS = 150.0
RULES = {"deaf warm-up (before)": False, "double-talk gate (now)": True}
"""Display name -> ``barge_in.aec_double_talk``."""


@dataclass(frozen=True)
class Start:
    """One fresh daemon's first answer."""

    answer_at_s: float | None
    """The answer's first sound in the output (s since the devices opened); None: no answer."""
    onset_s: float
    """The interruption's first loud sample in the input."""
    stopped_s: float | None
    """End of the answer audio that was playing at the onset; None: none was."""
    heard: bool
    """The interruption was answered as the next question."""
    false_pauses: int = 0
    """Times the answer's audio stopped between its first sound and the cut-in: the robot's own
    voice taken for a user (the target is 0)."""
    outcomes: tuple[str, ...] = ()
    """Each turn's outcome and transcript, for the record."""

    @property
    def into_answer_s(self) -> float | None:
        return None if self.answer_at_s is None else self.onset_s - self.answer_at_s

    @property
    def reaction_ms(self) -> float | None:
        return None if self.stopped_s is None else (self.stopped_s - self.onset_s) * 1000


def _pcm(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as src:
        return np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")


def user_wav(workdir: Path, cut_in_at_s: float | None) -> tuple[Path, float]:
    """The user's side of the room, and the onset (first loud sample) of the cut-in."""
    q = _pcm(make_question_wav(QUESTION, workdir / "q.wav"))
    parts = [np.zeros(int(LEAD_S * RATE), dtype="<i2"), q]
    onset = 0.0
    if cut_in_at_s is not None:
        cut = _pcm(make_question_wav(CUT_IN, workdir / "cut.wav"))
        lead = first_loud_s(cut, RATE, 0.0) or 0.0
        start = int((cut_in_at_s - lead) * RATE)
        parts.append(np.zeros(max(0, start - int(LEAD_S * RATE) - len(q)), dtype="<i2"))
        parts.append(cut)
        onset = (int(LEAD_S * RATE) + len(q) + len(parts[2])) / RATE + lead
    parts.append(np.zeros(int(2.0 * RATE), dtype="<i2"))
    path = workdir / f"user-{'calibration' if cut_in_at_s is None else 'cut'}.wav"
    write_wav(path, np.concatenate(parts), RATE)
    return path, onset


async def _one_start(stubs: StubProcess, user: Path, out: Path, *, double_talk: bool, limit_s: float) -> Start:
    turns: list[Turn] = []
    stop = asyncio.Event()

    async def turn_ended(turn: Turn) -> None:
        turns.append(turn)
        if len(turns) == 2:
            stop.set()

    settings = Settings(
        asr=AsrSettings(url=stubs.urls.asr, final_timeout_s=1.0),
        llm=LlmSettings(url=stubs.urls.llm),
        tts=TtsSettings(url=stubs.urls.tts),
        audio=AudioSettings(input=f"room:{user}", output=f"wav:{out}"),
        vad=VadSettings(end_silence_ms=500),
        barge_in=BargeInSettings(aec_double_talk=double_talk),
    )
    app = App(settings, on_turn_end=turn_ended)
    runner = asyncio.create_task(app.run(stop))
    await asyncio.wait({runner}, timeout=limit_s)  # the deaf rule never gets its second turn
    stop.set()
    await asyncio.wait_for(runner, 30)
    assert app.assistant is not None
    speaker = app.assistant.speaker
    wav = speaker.inner if isinstance(speaker, TappedSpeaker) else speaker
    assert isinstance(wav, WavSpeaker)
    spans = [(a / wav.sample_rate, b / wav.sample_rate) for a, b in wav.played_audio_spans]
    heard = len(turns) >= 2 and turns[1].transcript == CUT_IN
    outcomes = tuple(f"{t.outcome}: {t.transcript!r}" for t in turns)
    return dataclasses.replace(start_from_timelines(spans, user, heard), outcomes=outcomes)


def _answer_start(spans: Sequence[tuple[float, float]], user: Path) -> float | None:
    """The first output span that starts after the question ended in the input (the earcon
    played before it)."""
    pcm = _pcm(user)
    q_end = _question_end(pcm)
    return next((a for a, _ in spans if a > q_end), None)


def _question_end(pcm: np.ndarray) -> float:
    """End of the first stretch of sound in the user's file (the question)."""
    window = RATE // 50
    loud = np.abs(pcm[: len(pcm) // window * window].reshape(-1, window).astype(np.int32)).max(axis=1) > 300
    first = int(np.argmax(loud))
    quiet = np.flatnonzero(~loud[first:])
    gap = next((int(q) for q in quiet if not loud[first + int(q) : first + int(q) + 25].any()), len(loud) - first)
    return (first + gap) * window / RATE


def start_from_timelines(spans: Sequence[tuple[float, float]], user: Path, heard: bool) -> Start:
    answer = _answer_start(spans, user)
    pcm = _pcm(user)
    q_end = _question_end(pcm)
    onset = first_loud_s(pcm, RATE, q_end + 0.2)
    onset = onset if onset is not None else float("inf")
    stopped = next((b for a, b in spans if a <= onset < b), None)
    false_pauses = 0 if answer is None else sum(1 for _, b in spans if answer < b <= onset)
    return Start(answer_at_s=answer, onset_s=onset, stopped_s=stopped, heard=heard, false_pauses=false_pauses)


async def measure_first_answer(n: int, workdir: Path) -> dict[str, list[Start]]:
    """``n`` fresh starts per rule, each cut into ``CUT_IN_S`` into its first answer."""
    async with StubProcess(llm=demo_llm_behaviour(default_answer=ANSWER, tokens_per_s=30.0), tts=TTS) as stubs:
        calibration, _ = user_wav(workdir, None)
        probe = await _one_start(stubs, calibration, workdir / "calibration.wav", double_talk=True, limit_s=12.0)
        if probe.answer_at_s is None:
            raise RuntimeError("bench barge-in: the calibration start gave no answer")
        user, _ = user_wav(workdir, probe.answer_at_s + CUT_IN_S)
        results: dict[str, list[Start]] = {name: [] for name in RULES}
        for i in range(n):
            for name, double_talk in RULES.items():
                out = workdir / f"out-{i}-{int(double_talk)}.wav"
                results[name].append(await _one_start(stubs, user, out, double_talk=double_talk, limit_s=25.0))
    return results


def report_first_answer(results: dict[str, list[Start]]) -> str:
    lines = [
        f"barge-in in the first answer after start (a fresh daemon each time, the user cuts in about "
        f"{CUT_IN_S:g} s into its first answer; simulated room, speex AEC):"
    ]
    for name, starts in results.items():
        into = [s.into_answer_s for s in starts if s.into_answer_s is not None]
        reactions = [s.reaction_ms for s in starts if s.reaction_ms is not None]
        heard = sum(s.heard for s in starts)
        quick = sum(1 for r in reactions if r < REACTION_TARGET_MS)
        where = f"{min(into):.2f}-{max(into):.2f} s into the answer" if into else "no answer"
        lines.append(f"  {name}: {len(starts)} starts, cut in {where}")
        if reactions:
            lines.append(
                f"    reaction: median {statistics.median(reactions):.0f} ms, worst {max(reactions):.0f} ms, "
                f"best {min(reactions):.0f} ms; under {REACTION_TARGET_MS:.0f} ms: {quick} of {len(starts)}"
            )
            lines.append("    each: " + " ".join(f"{r:.0f}" for r in reactions))
        lines.append(f"    the interruption answered as the next question: {heard} of {len(starts)}")
        false = sum(s.false_pauses for s in starts)
        lines.append(f"    the answer stopped by the robot's own voice before the cut-in: {false} times")
    return "\n".join(lines)


def first_answer_json(results: dict[str, list[Start]]) -> dict[str, Any]:
    return {
        name: [
            {
                "answer_at_s": s.answer_at_s,
                "onset_s": s.onset_s,
                "into_answer_s": s.into_answer_s,
                "reaction_ms": s.reaction_ms,
                "heard": s.heard,
                "false_pauses": s.false_pauses,
                "turns": list(s.outcomes),
            }
            for s in starts
        ]
        for name, starts in results.items()
    }
