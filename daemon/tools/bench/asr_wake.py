"""Measure the ``asr`` wake engine against the FunASR stand-in, in real time.

    moss-voice bench asr-wake                        # every flavour with partial results
    moss-voice bench asr-wake --flavour cpp-2pass

espeak-ng speaks the stand-in's wake phrases (``hello robot``, ``hey robot``) and its questions
at three speeds; the Silero VAD judges 32 ms blocks, which are fed to ``AsrWakeSpotter.process``
at the microphone's pace. Per flavour it reports detections of the phrase said alone, of the
phrase followed by a question in one breath, false wakes on the questions, the time from the end
of the phrase's speech (the VAD's last speech block) to the detection, and what a ``process``
call costs the event loop. The stand-in answers at once: a real server adds its own inference
time (a few tens of ms per chunk on a GPU) and the network's round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon.clients.asr_wake import AsrWakeSpotter
from daemon.config import ASR_FLAVOURS, AsrSettings
from daemon.logs import configure_logging
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.questions import QUESTIONS, WAKE_PHRASES, make_question_wav, read_wav_pcm
from hardware.vad import SileroVad

BLOCK = 1024
BLOCK_S = BLOCK / 32000
SPEEDS = (150, 175, 200)
LEAD_S, TAIL_S = 1.0, 2.5


@dataclass(frozen=True)
class Recording:
    text: str
    speed: int
    blocks: tuple[tuple[bytes, bool], ...]
    phrase_end_block: int | None
    """The block in which the wake phrase ends (phrase alone: the last speech block); None without one."""


@dataclass
class FlavourResult:
    flavour: str
    alone: list[float | None] = field(default_factory=list)
    """Seconds from the phrase's end to the detection; None: missed."""
    in_breath: list[float | None] = field(default_factory=list)
    false_wakes: int = 0
    negatives: int = 0
    call_us: list[float] = field(default_factory=list)


def _speech_span(blocks: list[tuple[bytes, bool]]) -> tuple[int, int]:
    flags = [speech for _, speech in blocks]
    return flags.index(True), len(flags) - 1 - flags[::-1].index(True)


def make_recordings(folder: Path) -> list[Recording]:
    out: list[Recording] = []
    phrase_blocks: dict[tuple[str, int], int] = {}
    texts = [*WAKE_PHRASES, *(f"{WAKE_PHRASES[1]} {q}" for q in QUESTIONS[:3]), *QUESTIONS[:-1]]
    for speed in SPEEDS:
        for index, text in enumerate(texts):
            pcm = read_wav_pcm(make_question_wav(text, folder / f"{speed}-{index}.wav", speed=speed))
            pcm = bytes(int(LEAD_S * 32000)) + pcm + bytes(int(TAIL_S * 32000))
            pcm += bytes(-len(pcm) % BLOCK)
            vad = SileroVad()
            blocks = [(pcm[i : i + BLOCK], vad.is_speech(pcm[i : i + BLOCK])) for i in range(0, len(pcm), BLOCK)]
            first, last = _speech_span(blocks)
            end: int | None = None
            if text in WAKE_PHRASES:
                end = last
                phrase_blocks[(text, speed)] = last - first
            elif text.startswith(WAKE_PHRASES[1]):
                # the phrase alone at this speed lasts as long in the sentence (espeak is regular)
                end = first + phrase_blocks[(WAKE_PHRASES[1], speed)]
            out.append(Recording(text, speed, tuple(blocks), end))
    return out


async def run_recording(engine: AsrWakeSpotter, rec: Recording, result: FlavourResult) -> float | None:
    """Feed ``rec`` at real time; seconds from the phrase's end to the detection (None: none)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    fired_at: float | None = None
    for index, (pcm, speech) in enumerate(rec.blocks):
        due = start + index * BLOCK_S
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        before = time.perf_counter()
        word = engine.process(pcm, speech)
        result.call_us.append((time.perf_counter() - before) * 1e6)
        if word is not None and fired_at is None:
            fired_at = loop.time()
            engine.reset()  # what the daemon does after a wake
    if fired_at is None:
        return None
    if rec.phrase_end_block is None:
        return float("inf")  # a false wake
    return fired_at - (start + (rec.phrase_end_block + 1) * BLOCK_S)


async def bench_flavour(flavour: str, recordings: list[Recording]) -> FlavourResult:
    result = FlavourResult(flavour)
    async with FunAsrStub(behaviour=FunAsrBehaviour(flavour=flavour)) as stub:
        await stub.warm_up()
        engine = AsrWakeSpotter(AsrSettings(url=stub.url, flavour=flavour), WAKE_PHRASES)
        try:
            for rec in recordings:
                latency = await run_recording(engine, rec, result)
                if rec.phrase_end_block is None:
                    result.negatives += 1
                    result.false_wakes += latency is not None
                elif rec.text in WAKE_PHRASES:
                    result.alone.append(latency)
                else:
                    result.in_breath.append(latency)
        finally:
            await engine.aclose()
    return result


def _latency_line(name: str, values: list[float | None]) -> str:
    hits = [v for v in values if v is not None]
    line = f"  {name}: {len(hits)}/{len(values)} detected"
    if hits:
        ms = sorted(round(v * 1000) for v in hits)
        line += f"; phrase end -> detection: median {statistics.median(ms):.0f} ms, min {ms[0]} ms, max {ms[-1]} ms"
    return line


def report(result: FlavourResult) -> str:
    calls = sorted(result.call_us)
    p99 = calls[int(len(calls) * 0.99)]
    return "\n".join(
        [
            f"{result.flavour}:",
            _latency_line("phrase alone", result.alone),
            _latency_line("phrase + question in one breath (end of the phrase estimated)", result.in_breath),
            f"  false wakes: {result.false_wakes} on {result.negatives} questions",
            f"  process() per 32 ms block: mean {statistics.fmean(calls):.0f} us, "
            f"p99 {p99:.0f} us, max {calls[-1]:.0f} us",
        ]
    )


async def main_async(flavours: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        recordings = await asyncio.to_thread(make_recordings, Path(tmp))
    for flavour in flavours:
        print(report(await bench_flavour(flavour, recordings)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--flavour", choices=ASR_FLAVOURS, action="append", help="default: every flavour")
    args = parser.parse_args(argv)
    configure_logging("warning")
    flavours = args.flavour or [f for f in ASR_FLAVOURS if f != "cpp-offline"]
    asyncio.run(main_async(flavours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
