"""``moss-voice bench wake``: from a wake to the robot listening, through the real conversation.

* Wake word end -> listening: espeak-ng recordings of "hey mycroft" (several voices and speeds)
  play from a WAV microphone on the wall clock into the conversation (the Silero VAD, the
  microWakeWord engine, the wake watch), from idle; the time from where the phrase ends in the
  file to the ``state_changed`` into ``listening``. The WAV microphone's clock starts when it
  opens, so a file offset is a time.
* Button press -> listening earcon: gpiozero's mock pin is driven low (the press) and the
  listening earcon's first write to the speaker is timed. A sound card adds its own buffer on
  top (20 ms periods by default; PulseAudio more).

No network: the listening turn's ASR is a stand-in that never answers (the turn is stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from daemon.earcon import listening_earcon
from daemon.tools.bench.hotword_corpus import Clip, phrase_clips
from hardware.hotword import make_hotword
from hardware.vad import make_vad
from hardware.wav_mic import WavMicrophone
from hardware.wavfile import write_wav
from states.history import Conversation
from states.mic_feed import MicFeed
from states.model import Assistant, AssistantSettings, Earcons
from states.ports import HotwordEngine

CORPUS = Path(tempfile.gettempdir()) / "moss-voice-hotword-corpus"


class _Silence:
    sample_rate = 16000

    async def read(self) -> bytes:
        await asyncio.sleep(0.02)
        return bytes(640)

    async def aclose(self) -> None:
        pass


class _NoAsr:
    """The listening turn waits here until it is stopped."""

    async def open_session(self) -> Any:
        await asyncio.Event().wait()


class _Unused:
    async def warm_up(self) -> None:
        pass

    async def sample_rate(self) -> int:
        return 16000


class _Speaker:
    """Records when each write arrives."""

    sample_rate = 16000
    audio_samples_played = 0

    def __init__(self) -> None:
        self.written = asyncio.Event()
        self.at: float | None = None

    async def write(self, pcm: bytes) -> None:
        if self.at is None:
            self.at = time.monotonic()
        self.written.set()

    async def drain(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    async def wait_audible(self) -> float:
        return time.monotonic()

    async def aclose(self) -> None:
        pass


class _Listening:
    """An EventSink that notes when the machine enters ``listening``."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.at: float | None = None

    def emit(self, event: str, /, **fields: object) -> None:
        if event == "state_changed" and fields.get("dst") == "listening" and self.at is None:
            self.at = time.monotonic()
            self.entered.set()


@asynccontextmanager
async def _assistant(mic: Any, *, hotword: HotwordEngine | None, speaker: Any, events: Any,
                     earcons: Earcons) -> AsyncIterator[Assistant]:  # fmt: skip
    assistant = Assistant(
        mic=MicFeed(mic),
        speaker=speaker,
        vad=make_vad("silero"),
        asr=_NoAsr(),
        llm=_Unused(),  # type: ignore[arg-type]
        tts=_Unused(),  # type: ignore[arg-type]
        conversation=Conversation("", max_turns=1, reset_after_s=60),
        settings=AssistantSettings(),
        earcons=earcons,
        hotword=hotword,
        events=events,
    )
    try:
        yield assistant
    finally:
        await assistant.aclose()


async def hotword_to_listening(clips: Sequence[Clip], workdir: Path) -> list[float | None]:
    """ms from the end of the phrase to ``listening``, per clip; None: not detected."""
    out: list[float | None] = []
    for i, clip in enumerate(clips):
        path = workdir / f"wake-{i}.wav"
        write_wav(path, clip.samples.tobytes(), 16000)
        mic = WavMicrophone(str(path))
        await mic.open()
        events = _Listening()
        engine = make_hotword("microwakeword", ["hey_mycroft"])
        async with _assistant(mic, hotword=engine, speaker=_Speaker(), events=events, earcons=Earcons()) as a:
            await a.ready()
            try:
                await asyncio.wait_for(events.entered.wait(), clip.seconds + 1.0)
            except TimeoutError:
                out.append(None)
                continue
            assert events.at is not None and mic.file_end_time is not None and clip.phrase_end_s is not None
            phrase_end = mic.file_end_time - mic.duration_s + clip.phrase_end_s
            out.append((events.at - phrase_end) * 1000)
    return out


async def button_to_earcon(n: int) -> list[float]:
    """ms from the pin going low to the listening earcon's first write."""
    from gpiozero.pins.mock import MockFactory

    from hardware.gpio import WakeButton

    factory = MockFactory()
    out: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    for _ in range(n):
        speaker = _Speaker()
        async with _assistant(_Silence(), hotword=None, speaker=speaker, events=_Listening(),
                              earcons=Earcons(listening=listening_earcon)) as assistant:  # fmt: skip
            loop = asyncio.get_running_loop()

            def press(assistant: Assistant = assistant) -> None:
                task = asyncio.create_task(assistant.press())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            button = WakeButton(17, pull_up=True, bounce_ms=0, hold_s=10, on_press=press, on_long_press=lambda: None,
                                loop=loop, pin_factory=factory)  # fmt: skip
            await assistant.ready()
            pin = factory.pin(17)
            pressed = time.monotonic()
            pin.drive_low()
            await asyncio.wait_for(speaker.written.wait(), 5)
            assert speaker.at is not None
            out.append((speaker.at - pressed) * 1000)
            pin.drive_high()
            button.close()
            if tasks:
                await asyncio.wait(tasks)
        factory.reset()
    return out


def _summary(values: Sequence[float | None]) -> dict[str, Any]:
    got = sorted(v for v in values if v is not None)
    if not got:
        return {"n": len(values), "detected": 0}
    return {
        "n": len(values),
        "detected": len(got),
        "median_ms": round(statistics.median(got), 1),
        "p90_ms": round(got[min(len(got) - 1, int(0.9 * len(got)))], 1),
        "max_ms": round(got[-1], 1),
    }


async def run(n: int) -> dict[str, Any]:
    clips = phrase_clips("hey mycroft", CORPUS, n=n)
    with tempfile.TemporaryDirectory() as tmp:
        hotword = await hotword_to_listening(clips, Path(tmp))
    button = await button_to_earcon(n)
    return {"hotword_to_listening": _summary(hotword), "button_to_earcon": _summary(button)}


def command(args: argparse.Namespace) -> int:
    figures = asyncio.run(run(args.n))
    h, b = figures["hotword_to_listening"], figures["button_to_earcon"]
    print("wake -> listening (ms)        n   detected  median  p90    max")
    for name, row in (("hey_mycroft end -> listening", h), ("button press -> earcon write", b)):
        print(f"{name:30s}{row['n']:3d}   {row['detected']:3d}     {row.get('median_ms', '-'):>6}  "
              f"{row.get('p90_ms', '-'):>6} {row.get('max_ms', '-'):>6}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0
