"""``moss-voice bench barge-in``: how fast the robot stops when the user cuts in.

One long session on the shared wall clock, with WAV devices and the stand-ins: the user asks a
question, and cuts into every answer with the next question, ``n`` times. The reaction of each
interruption is read off the timelines: its onset is where the interrupting speech starts in the
input file, and the answer stops where the speaker's queued audio ends in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import wave
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.app import App
from daemon.config import (
    AecSettings,
    AsrSettings,
    AudioSettings,
    BargeInConfig,
    LlmSettings,
    Settings,
    TtsSettings,
    VadSettings,
)
from daemon.logs import configure_logging
from daemon.stubs.funasr import QUESTIONS, make_question_wav
from daemon.stubs.runner import demo_llm_behaviour, start_stubs
from hardware.wavfile import WavSpeaker

RATE = 16000
LONG_ANSWER = (
    "Let me tell you about this building. It has four floors, and the library is on the second one. "
    "The cafeteria is open from eight until six, and the garden behind it is a nice place to rest."
)
CUT_IN_AFTER_S = 4.0
"""Each interruption starts this long after the previous utterance ended (the answer plays by then)."""


@dataclass(frozen=True)
class Reaction:
    onset_s: float
    stopped_s: float | None

    @property
    def ms(self) -> float | None:
        return None if self.stopped_s is None else (self.stopped_s - self.onset_s) * 1000


async def measure(n: int, mode: str, workdir: Path) -> list[Reaction]:
    """Run one session with ``n`` interruptions; return each one's reaction."""
    questions = [q for q in QUESTIONS if q != "hello robot"]
    pieces: list[np.ndarray] = [np.zeros(int(0.4 * RATE), dtype="<i2")]
    onsets: list[float] = []
    t = 0.4
    for i in range(n + 1):
        path = make_question_wav(questions[i % len(questions)], workdir / f"q{i}.wav")
        with wave.open(str(path), "rb") as src:
            pcm = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
        if i > 0:
            onsets.append(t)
        pieces.append(pcm)
        t += len(pcm) / RATE
        gap = CUT_IN_AFTER_S if i < n else 8.0
        pieces.append(np.zeros(int(gap * RATE), dtype="<i2"))
        t += gap
    question_wav = workdir / "session.wav"
    with wave.open(str(question_wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(pieces).tobytes())

    turns = 0
    stop = asyncio.Event()

    async def turn_ended(_turn: object) -> None:
        nonlocal turns
        turns += 1
        if turns == n + 1:
            stop.set()

    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(
            stack, llm=demo_llm_behaviour(default_answer=LONG_ANSWER, answers={}, tokens_per_s=30.0)
        )
        settings = Settings(
            asr=AsrSettings(url=asr.url, final_timeout_s=1.0),
            llm=LlmSettings(url=llm.url),
            tts=TtsSettings(url=tts.url),
            audio=AudioSettings(input=f"wav:{question_wav}", output=f"wav:{workdir / 'out.wav'}"),
            vad=VadSettings(end_silence_ms=500),
            barge_in=BargeInConfig(mode=mode),
            aec=AecSettings(engine="off"),  # WAV devices: no echo path to cancel
        )
        app = App(settings, on_turn_end=turn_ended)
        await asyncio.wait_for(app.run(stop), 30 + 10 * n)
        assert app.assistant is not None
        speaker = app.assistant.speaker
    assert isinstance(speaker, WavSpeaker)
    spans = [(a / speaker.sample_rate, b / speaker.sample_rate) for a, b in speaker.played_audio_spans]
    return [Reaction(onset, _stop_after(spans, onset)) for onset in onsets]


def _stop_after(spans: list[tuple[float, float]], onset: float) -> float | None:
    """End of the audio that was playing at ``onset`` (None: nothing was playing then)."""
    for start, end in spans:
        if start <= onset < end:
            return end
    return None


def report(reactions: Sequence[Reaction], mode: str) -> str:
    valid = [r.ms for r in reactions if r.ms is not None]
    lines = [f"barge-in reaction, mode {mode}: {len(valid)} of {len(reactions)} interruptions came while speaking"]
    if valid:
        lines.append(f"  median {statistics.median(valid):.0f} ms, worst {max(valid):.0f} ms, best {min(valid):.0f} ms")
        lines.append("  each: " + " ".join(f"{ms:.0f}" for ms in valid))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moss-voice bench barge-in", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20, help="interruptions (default 20)")
    parser.add_argument("--mode", choices=("pause", "cancel"), default="pause")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory(prefix="moss-bench-") as tmp:
        reactions = asyncio.run(measure(args.n, args.mode, Path(tmp)))
    print(report(reactions, args.mode))
    return 0
