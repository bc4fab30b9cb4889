"""``moss-voice demo`` (``make demo``): one full voice turn against the loopback stand-ins.

It speaks a question into a WAV file with espeak-ng, starts the three stand-ins, runs the daemon
for one turn with that file as the microphone and another as the speaker, and tells the turn as
it happens, for a person (from the daemon's events: listening, what it heard, each clause of the
answer as it plays), then the latency breakdown. The developers' log (JSON lines) goes to
``demo.log`` in the work directory.
"""

from __future__ import annotations

import asyncio
import time
import wave
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np

from daemon.app import App
from daemon.config import AsrSettings, AudioSettings, LlmSettings, LogSettings, Settings, TtsSettings
from daemon.event_bus import Event
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
    log_path = out / "demo.log"
    print(f"moss-voice demo: the question {question!r} is spoken into {question_wav}", flush=True)
    print(f"(the daemon's own log, JSON lines, goes to {log_path})\n", flush=True)

    with log_path.open("w", encoding="utf-8") as log_file:
        configure_logging("info", "json", stream=log_file)
        async with AsyncExitStack() as stack:
            asr, llm, tts = await start_stubs(stack)
            print(f"stand-ins up: FunASR {asr.url}, MOSS {llm.url}, PaddleSpeech {tts.url}", flush=True)
            settings = Settings(
                asr=AsrSettings(url=asr.url),
                llm=LlmSettings(url=llm.url),
                tts=TtsSettings(url=tts.url),
                audio=AudioSettings(input=f"wav:{question_wav}", output=f"wav:{reply_wav}"),
                log=LogSettings(format="json"),
            )
            app = App(settings, once=True)
            teller = Story()
            story = asyncio.create_task(app.bus.follow(teller.tell))
            try:
                code = await app.run(stop)
            finally:
                app.bus.close()
                await story
                teller.close()

    turn = app.turns[-1] if app.turns else None
    print(_summary(turn, reply_wav, question_end), flush=True)
    return code


PROGRESS_EVERY_S = 2.0


class Story:
    """The turn told for a person, one line per step, from the daemon's events; while the answer
    plays into the WAV file (the clauses are all synthesised long before), a line every 2 s."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None

    def tell(self, event: Event) -> None:
        line = self._line(event)
        if line is not None:
            self._print(line)
        if event.name == "state_changed":
            if event.fields.get("dst") == "speaking" and self._ticker is None:
                self._ticker = asyncio.create_task(self._tick(), name="demo-progress")
            elif event.fields.get("dst") != "speaking":
                self.close()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _print(self, line: str) -> None:
        print(f"[{time.monotonic() - self._start:5.1f} s] {line}", flush=True)

    async def _tick(self) -> None:
        began = time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            self._print(f"  ... still playing ({time.monotonic() - began:.0f} s of answer so far)")

    @staticmethod
    def _line(event: Event) -> str | None:
        f = event.fields
        if event.name == "state_changed":
            return {
                "listening": "listening: the robot waits for the question",
                "thinking": "thinking: the question goes to MOSS",
                "speaking": "speaking: the answer is playing (into the reply WAV file)",
                "idle": "idle again",
            }.get(str(f.get("dst")))
        if event.name == "transcript":
            return f"heard: {f.get('text')!r}"
        if event.name == "reply_clause":
            return f"  says: {f.get('text')!r}"
        if event.name == "turn_failed":
            return f"the turn failed in the {f.get('service')} service: {f.get('reason')}"
        if event.name == "turn_finished" and f.get("first_audio_ms") is not None:
            return f"done: the answer began {f['first_audio_ms']} ms after the question ended"
        return None


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
