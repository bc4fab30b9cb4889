"""The questions the stand-ins understand: espeak-ng speaks them into WAV files, and pocketsphinx,
restricted to the JSGF grammar ``questions.gram`` (a handful of English questions), recognises
espeak-ng's ``en-us+klatt4`` voice exactly."""

from __future__ import annotations

import os
import subprocess
import wave
from pathlib import Path

SAMPLE_RATE = 16000
GRAMMAR_PATH = Path(__file__).with_name("questions.gram")
QUESTIONS = (
    "what is the weather like today",
    "turn on the kitchen light",
    "please move forward two meters",
    "what time is it",
    "tell me a joke",
    "who are you",
    "hello robot",
)
"""Sentences of questions.gram (a wake phrase may also precede any other question)."""
WAKE_PHRASES = ("hello robot", "hey robot")
"""The wake phrases of questions.gram: alone, or before a question ("hey robot what time is it")."""
PAUSED_SPLITS: dict[str, int] = {
    "what is the weather like today": 3,
    "turn on the kitchen light": 2,
    "please move forward two meters": 2,
    "what time is it": 1,
    "tell me a joke": 2,
    "who are you": 2,
}
"""The questions said with a pause in the middle: how many words come before it. The words
before the pause alone are an ``<opening>`` of questions.gram, so the stand-in recognises them
too (a speculative answer to them is a wrong answer to the whole question)."""
LOUD = 300
"""A sample louder than this (int16) is voice: the pause is measured between loud samples."""
ESPEAK_VOICE = "en-us+klatt4"
"""The espeak-ng voice the grammar recognises exactly (the default en-us voice loses "is it")."""
ESPEAK_SPEED = 175
"""espeak-ng's default words per minute; 150 and 200 were exact too."""


class Recogniser:
    """pocketsphinx restricted to ``questions.gram``. Not thread-safe: one user at a time."""

    def __init__(self, grammar: Path = GRAMMAR_PATH) -> None:
        from pocketsphinx import Decoder  # the `stubs` extra; imported only when recognition is used

        self._decoder = Decoder(samprate=SAMPLE_RATE, jsgf=str(grammar), logfn=os.devnull)
        self._in_utt = False

    def start(self) -> None:
        self._end()
        self._decoder.start_utt()
        self._in_utt = True

    def feed(self, pcm: bytes) -> str:
        """Streaming: add audio, return the best hypothesis so far."""
        if not self._in_utt:
            self.start()
        self._decoder.process_raw(pcm, False, False)
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    def recognise(self, pcm: bytes) -> str:
        """The whole utterance at once (better than streaming: batch cepstral normalisation)."""
        self._end()
        if len(pcm) < 3200:  # under 100 ms: nothing to decode
            return ""
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, False, True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    def _end(self) -> None:
        if self._in_utt:
            self._decoder.end_utt()
            self._in_utt = False


def read_wav_pcm(path: str | os.PathLike[str]) -> bytes:
    """The PCM of a 16 kHz mono 16-bit WAV file (ValueError for any other format)."""
    with wave.open(os.fspath(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(
                f"{path}: need 16 kHz mono 16-bit, got {wav.getframerate()} Hz, "
                f"{wav.getnchannels()} channels, {8 * wav.getsampwidth()} bits"
            )
        return wav.readframes(wav.getnframes())


def recognise_wav(path: str | os.PathLike[str]) -> str:
    """What the stand-in would recognise in a 16 kHz mono WAV file (blocking, ~0.1 s + 2 % RTF)."""
    return Recogniser().recognise(read_wav_pcm(path))


def make_question_wav(
    text: str, path: str | os.PathLike[str], *, voice: str = ESPEAK_VOICE, speed: int = ESPEAK_SPEED
) -> Path:
    """Speak ``text`` with espeak-ng into a 16 kHz mono 16-bit WAV the stand-in recognises exactly."""
    out = Path(path)
    speech = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True, timeout=30
    ).stdout
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)],
        input=speech,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return out


def make_paused_question_wav(
    text: str,
    path: str | os.PathLike[str],
    pause_ms: int,
    *,
    split: int | None = None,
    voice: str = ESPEAK_VOICE,
    speed: int = ESPEAK_SPEED,
) -> Path:
    """Speak ``text`` with exactly ``pause_ms`` of silence between its first ``split`` words
    (default: ``PAUSED_SPLITS``) and the rest, from the last loud sample of the first part to
    the first loud sample of the second. The stand-in recognises the whole as ``text``."""
    import numpy as np  # numpy is a dependency of the daemon; imported only for this

    words = text.split()
    k = PAUSED_SPLITS.get(text, len(words) // 2) if split is None else split
    if not 0 < k < len(words):
        raise ValueError(f"cannot pause {text!r} after {k} words: it has {len(words)}")
    if pause_ms < 0:
        raise ValueError(f"pause_ms must be >= 0, got {pause_ms}")
    out = Path(path)
    parts = []
    for i, part in enumerate((" ".join(words[:k]), " ".join(words[k:]))):
        wav = make_question_wav(part, out.with_name(f"{out.stem}.part{i}.wav"), voice=voice, speed=speed)
        parts.append(np.frombuffer(read_wav_pcm(wav), dtype="<i2"))
        wav.unlink()
    first, second = parts
    first_end = int(np.flatnonzero(np.abs(first.astype(np.int32)) > LOUD)[-1]) + 1
    second_start = int(np.flatnonzero(np.abs(second.astype(np.int32)) > LOUD)[0])
    pause = np.zeros(SAMPLE_RATE * pause_ms // 1000, dtype="<i2")
    samples = np.concatenate([first[:first_end], pause, second[second_start:]])
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return out
