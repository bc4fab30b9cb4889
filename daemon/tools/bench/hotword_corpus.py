"""Test audio for the hotword engines: espeak-ng recordings of a wake phrase, of other speech,
and sox noise, 16 kHz mono int16, cached on disk (synthesis is cheap, but not free when the
false-wake corpus runs to ten minutes and more).

Every recording of a phrase knows where the phrase ends (the last loud 10 ms of the clip), so
the benchmark can time wake word end -> detection.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardware.errors import HardwareError
from hardware.wavfile import load_wav_16k_mono

RATE = 16000
PAD_S = 0.5
"""Silence before and after each recording of the wake phrase."""

SPOKEN = {"hey_mycroft": "hey mycroft", "okay_nabu": "okay nabu", "hey_jarvis": "hey jarvis", "alexa": "alexa"}
"""What the built-in microWakeWord models listen for, as text espeak-ng can say."""

PHRASE_VOICES = ("en-us", "en-us+m3", "en-us+f2", "en-us+klatt4", "en")
PHRASE_SPEEDS = (140, 160, 175, 195)
"""20 recordings of the phrase: five voices at four speeds (words per minute); the first five
recordings are five voices at several speeds."""

OTHER_VOICES = (("en-us", 175), ("en-us+f2", 160), ("en-us+klatt4", 175), ("en", 150), ("en-us+m3", 190))

NOISES = (("whitenoise", 0.02), ("whitenoise", 0.2), ("pinknoise", 0.05), ("pinknoise", 0.4), ("brownnoise", 0.1))
"""sox noise colours and volumes (peak amplitude) for the false-wake corpus."""

SENTENCES = (
    "Turn on the kitchen light.",
    "What is the weather like today?",
    "Please move forward two meters.",
    "The meeting starts at half past nine in the small room.",
    "Could you bring me a glass of water, please?",
    "I think the battery is running low again.",
    "The delivery arrived this morning, but the box was damaged.",
    "How far is it from here to the train station?",
    "My sister is visiting us next weekend.",
    "The robot is standing next to the front door.",
    "Hello everyone, thank you for coming today.",
    "Let me know when the printer is ready.",
    "We need more paper for the copier on the second floor.",
    "She told me the story about the old lighthouse.",
    "Open the window, it is getting warm in here.",
    "Did anybody see my keys? I left them on the table.",
    "The museum is closed on Mondays.",
    "Okay, let us start with the first item on the list.",
    "A cup of tea with milk and no sugar, please.",
    "The children are playing football in the park.",
    "It will rain tomorrow afternoon, so take an umbrella.",
    "Please call the elevator to the ground floor.",
    "The software update will take about ten minutes.",
    "Where did you put the charging cable?",
    "I would like to book a table for four people.",
    "The train to Shanghai leaves from platform three.",
    "He forgot to switch off the oven last night.",
    "Hey, can you help me carry these boxes?",
    "Our new neighbour works at the hospital.",
    "The store sells fresh bread every morning.",
    "Robots can clean the floor while we sleep.",
    "My favourite season is autumn because of the colours.",
    "The lecture was about the history of mathematics.",
    "Send a message to the team that I will be late.",
    "There is a strange noise coming from the engine.",
    "The dog barked at the postman again.",
    "We watched a film about the ocean last night.",
    "Please speak a little louder, I cannot hear you.",
    "The coffee machine on the third floor is broken.",
    "Alex and Mike went fishing by the lake.",
    "How many people live in this city?",
    "The hotel room has a view of the mountains.",
    "Could you repeat the last sentence, please?",
    "The garden needs water after such a hot day.",
    "I am looking for the nearest pharmacy.",
    "The computer crashed before I saved the file.",
    "Hello there, nice to meet you.",
    "The price of vegetables went up this month.",
    "Follow me, the conference room is this way.",
    "The baby is sleeping, so please be quiet.",
    "Tell me a joke about a cat and a mouse.",
    "The bus was twenty minutes late this morning.",
    "We should plant some tomatoes in the spring.",
    "Jarvis is the name of a butler in a film.",
    "Microsoft released a new version of its software.",
    "I prefer walking to work when the weather is nice.",
    "The library has thousands of books about science.",
    "Remember to lock the door when you leave.",
    "The concert was cancelled because of the storm.",
    "Nobody knows where the old map came from.",
)
"""Everyday speech, some of it close to wake words (hello, hey, okay, robot, Jarvis, Microsoft)."""


@dataclass(frozen=True)
class Clip:
    """One recording: its label, int16 samples, and where the wake phrase ends (positives only)."""

    label: str
    samples: np.ndarray
    phrase_end_s: float | None = None

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise HardwareError(f"{tool} is not installed (apt-get install espeak-ng sox)")


def _cached(cache: Path, key: str, make: str) -> Path:
    """The cache file for ``key``; ``make`` is the kind (speech, noise) for its name."""
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    return cache / f"{make}-{digest}.wav"


def speak(text: str, cache: Path, voice: str = "en-us", speed: int = 175) -> np.ndarray:
    """espeak-ng ``text`` with ``voice`` at ``speed`` words per minute: 16 kHz int16 samples."""
    path = _cached(cache, f"{voice}|{speed}|{text}", "speech")
    if not path.exists():
        _need("espeak-ng")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            raw = Path(tmp) / "espeak.wav"
            command = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), "--", text]
            subprocess.run(command, check=True, capture_output=True, timeout=60)
            converted = Path(tmp) / "16k.wav"
            _need("sox")
            subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(converted)], check=True,
                           capture_output=True, timeout=60)  # fmt: skip
            converted.replace(path)
    return load_wav_16k_mono(path)


def noise(colour: str, volume: float, seconds: float, cache: Path) -> np.ndarray:
    """sox ``colour`` noise (whitenoise, pinknoise, brownnoise) at peak ``volume``."""
    path = _cached(cache, f"{colour}|{volume}|{seconds}", "noise")
    if not path.exists():
        _need("sox")
        tmp = path.with_suffix(".tmp.wav")
        command = ["sox", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(tmp), "synth", str(seconds), colour]
        subprocess.run([*command, "vol", str(volume)], check=True, capture_output=True, timeout=60)
        tmp.replace(path)
    return load_wav_16k_mono(path)


def speech_end_s(samples: np.ndarray, window_ms: int = 10) -> float:
    """Where the speech in ``samples`` ends: the end of the last 10 ms louder than 5 % of the peak rms."""
    step = RATE * window_ms // 1000
    whole = len(samples) - len(samples) % step
    rms = np.sqrt(np.mean(samples[:whole].astype(np.float64).reshape(-1, step) ** 2, axis=1))
    loud = np.flatnonzero(rms > 0.05 * rms.max()) if rms.size and rms.max() > 0 else np.array([], dtype=int)
    return 0.0 if loud.size == 0 else float((loud[-1] + 1) * step / RATE)


def padded(samples: np.ndarray, before_s: float = PAD_S, after_s: float = PAD_S) -> np.ndarray:
    silence = np.zeros(int(before_s * RATE), dtype=np.int16), np.zeros(int(after_s * RATE), dtype=np.int16)
    return np.concatenate([silence[0], samples.astype(np.int16), silence[1]])


def phrase_clips(text: str, cache: Path, n: int = 20, then: str = "") -> list[Clip]:
    """``n`` recordings of ``text`` (voices x speeds), 0.5 s of silence around.

    ``then``: words said after the phrase in the same breath (the phrase end is still where
    ``text`` alone ends).
    """
    clips = []
    for i in range(n):
        voice = PHRASE_VOICES[i % len(PHRASE_VOICES)]
        speed = PHRASE_SPEEDS[
            (i // len(PHRASE_VOICES) + i % len(PHRASE_VOICES)) % len(PHRASE_SPEEDS)
        ]  # every voice at every speed
        alone = speak(text, cache, voice, speed)
        end = PAD_S + speech_end_s(alone)
        spoken = speak(f"{text}, {then}", cache, voice, speed) if then else alone
        clips.append(Clip(f"{voice} {speed}wpm", padded(spoken), end))
    return clips


def other_speech(cache: Path, minutes: float, avoid: Iterable[str] = ()) -> list[Clip]:
    """At least ``minutes`` of other sentences, none containing a phrase in ``avoid``.

    The sentences come in turn, each in the next voice, so any length of corpus has every
    sentence and every voice; past one round of all pairs the voices speak 10 wpm faster.
    """
    banned = [a.lower() for a in avoid if a]
    sentences = [s for s in SENTENCES if not any(b in s.lower() for b in banned)]
    clips: list[Clip] = []
    total = 0.0
    i = 0
    while sentences and total < minutes * 60:
        text = sentences[i % len(sentences)]
        voice, speed = OTHER_VOICES[(i + i // len(sentences)) % len(OTHER_VOICES)]
        speed += 10 * (i // (len(sentences) * len(OTHER_VOICES)))
        clip = Clip(f"{voice}: {text}", padded(speak(text, cache, voice, speed), 0.2, 0.3))
        clips.append(clip)
        total += clip.seconds
        i += 1
    return clips


def noise_clips(cache: Path, seconds_each: float, kinds: Sequence[tuple[str, float]] = NOISES) -> list[Clip]:
    return [Clip(f"{colour} vol {volume}", noise(colour, volume, seconds_each, cache)) for colour, volume in kinds]
