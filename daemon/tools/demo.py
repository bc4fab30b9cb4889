"""``moss-voice demo`` (``make demo``): one full voice turn against the loopback stand-ins.

It speaks a question into a WAV file with espeak-ng, starts the three stand-ins, runs the daemon
for one turn with that file as the microphone and another as the speaker, and prints what
happened: each state change (the log), the transcript, the answer and the latency breakdown.
"""

from __future__ import annotations

import asyncio
import wave
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np

from daemon.app import App
from daemon.config import AsrSettings, AudioSettings, LlmSettings, LogSettings, Settings, TtsSettings
from daemon.logs import configure_logging
from daemon.tools.stubs.answers import DEMO_QUESTION
from daemon.tools.stubs.questions import make_question_wav
from daemon.tools.stubs.runner import start_stubs
from hardware.wavfile import write_wav
from states.model import Turn

LEAD_IN_S = 0.5
EARCON_S = 0.4
"""Room for the listening tone at the start of the output."""
"""Silence before the question, as when someone starts talking a moment after the wake."""


async def run_demo(workdir: str, *, question: str | None = None, stop: asyncio.Event | None = None) -> int:
    out = Path(workdir)
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    question = question or DEMO_QUESTION
    question_wav = out / "question.wav"
    reply_wav = out / "reply.wav"
    question_end = await asyncio.to_thread(_speak_question, question, question_wav)
    configure_logging("info", "console")
    print(f"moss-voice demo: question {question!r} spoken into {question_wav}\n", flush=True)

    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack)
        settings = Settings(
            asr=AsrSettings(url=asr.url),
            llm=LlmSettings(url=llm.url),
            tts=TtsSettings(url=tts.url),
            audio=AudioSettings(input=f"wav:{question_wav}", output=f"wav:{reply_wav}"),
            log=LogSettings(format="console"),
        )
        app = App(settings, once=True)
        code = await app.run(stop)

    turn = app.turns[-1] if app.turns else None
    print(_summary(turn, reply_wav, question_end), flush=True)
    return code


def _speak_question(text: str, path: Path) -> float:
    """Write the question with a lead-in; return the time (s into the file) it ends."""
    make_question_wav(text, path)
    with wave.open(str(path), "rb") as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    write_wav(path, b"\x00\x00" * int(LEAD_IN_S * rate) + frames, rate)
    return LEAD_IN_S + len(frames) / 2 / rate


def _summary(turn: Turn | None, reply_wav: Path, question_end: float) -> str:
    if turn is None:
        return "\nNo turn finished."
    lines = ["", "=" * 72, f"turn {turn.id}: {turn.outcome}"]
    if turn.failed_service:
        lines.append(f"  failed in:  {turn.failed_service}: {turn.failure}")
    lines.append(f"  heard:      {turn.transcript!r}")
    lines.append(f"  answered:   {turn.reply!r}")
    lines.append("  latency (ms):")
    labels = {
        "asr_final_ms": "end of speech -> final transcript",
        "llm_first_token_ms": "LLM request -> first token",
        "tts_first_audio_ms": "first TTS request -> first audio",
        "first_audio_ms": "end of speech -> first reply sample played",
    }
    for key, value in turn.times.latencies_ms().items():
        lines.append(f"    {labels[key]:<45} {value if value is not None else '-':>6}")
    lines.append(f"  reply audio: {_describe_wav(reply_wav, question_end)}")
    lines.append("=" * 72)
    return "\n".join(lines)


def _describe_wav(path: Path, question_end: float) -> str:
    try:
        with wave.open(str(path), "rb") as w:
            rate = w.getframerate()
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (OSError, wave.Error, EOFError) as exc:
        return f"{path}: unreadable ({exc})"
    skip = int(EARCON_S * rate)  # the listening tone at the start
    loud = np.flatnonzero(np.abs(samples[skip:].astype(np.int32)) > 300) + skip
    if not len(loud):
        return f"{path}: {len(samples) / rate:.1f} s at {rate} Hz, no answer in it"
    return (
        f"{path}: {len(samples) / rate:.1f} s at {rate} Hz; the listening tone at 0 s, the answer from "
        f"{loud[0] / rate:.2f} s to {loud[-1] / rate:.2f} s (the question ended at {question_end:.2f} s)"
    )
