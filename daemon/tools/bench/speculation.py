"""``moss-voice bench speculation``: what a speculative turn end costs on speech with pauses.

The questions of the stand-ins' grammar, each said with a pause in the middle (espeak-ng halves,
``questions.make_paused_question_wav``), one daemon turn each (``once``: WAV microphone and
speaker), the FunASR stand-in recognising the audio with pocketsphinx (it hears the words before
the pause alone as the question's opening, so a speculation at the pause answers the wrong
question) and punctuating its finals like a server with a punctuation model. Two passes:

* **wasted work** (``vad.speculate_after_ms`` on): per pause length, the chat requests the LLM
  stand-in received per turn, the streams the daemon closed before they ended (a dropped
  speculation must stop the generation), ``turn_finished``'s ``speculations`` and
  ``speculation_played_first``, and whether the answer played is the whole question's
  (the stand-in's answer depends on the question's text): never a wrong answer.
* **cut-offs** (``vad.end_silence_short_ms`` on as well): how often a transcript ending in a full
  stop or a question mark ended the utterance at the short silence, at the pause: the turn's
  transcript is then the opening, not the question.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from daemon.app import App
from daemon.config import Settings, VadSettings
from daemon.logs import configure_logging
from daemon.tools.bench.stub_process import StubProcess, StubUrls
from daemon.tools.bench.timeline import read_pcm
from daemon.tools.bench.wav_daemon import wav_daemon_settings
from daemon.tools.stubs.answers import ANSWERS, DEFAULT_ANSWER
from daemon.tools.stubs.funasr_behaviour import FunAsrBehaviour
from daemon.tools.stubs.openai import OpenAiBehaviour
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour
from daemon.tools.stubs.questions import PAUSED_SPLITS, make_paused_question_wav
from hardware.wavfile import write_wav
from states.listen import ends_sentence
from states.turn import report_fields

log = structlog.get_logger()

PAUSES_MS = (150, 300, 450, 600)
"""The default pauses: shorter and longer than a speculation point of 200-300 ms, all shorter than
the default end silence (700 ms)."""
LEAD_IN_S = 0.5
TURN_TIMEOUT_S = 60.0
ASR_FINAL_DELAY_S = 0.05
LLM_TTFT_S = 0.15
LLM_TOKENS_PER_S = 40.0


def first_sentence(text: str) -> str:
    """The first sentence of a scripted answer: the bench plays whole answers, short ones are quicker."""
    match = re.match(r".+?[.!?](?=\s|$)", text)
    return match.group(0) if match else text


BENCH_ANSWERS = {key: first_sentence(answer) for key, answer in ANSWERS.items() if key.isascii()}
"""The stand-in's scripted answers, first sentences: each question has its own, and an opening
said alone gets another one (or the default): a wrong answer shows in the reply."""
BENCH_DEFAULT_ANSWER = first_sentence(DEFAULT_ANSWER)


def expected_answer(question: str) -> str:
    """What the LLM stand-in answers to ``question``."""
    behaviour = OpenAiBehaviour(answers=BENCH_ANSWERS, default_answer=BENCH_DEFAULT_ANSWER)
    return behaviour.answer_for([{"role": "user", "content": question}])


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped: how transcripts and replies are compared."""
    return re.findall(r"[a-z0-9']+", text.lower())


@dataclass(frozen=True)
class Pass:
    """One pass of the bench: its name and the ``[vad]`` settings it runs with."""

    name: str
    speculate_after_ms: int
    end_silence_short_ms: int | None
    end_silence_ms: int


def make_input(question: str, pause_ms: int, workdir: Path) -> Path:
    """The question with its pause, after LEAD_IN_S of silence."""
    slug = "-".join(question.split())
    raw = make_paused_question_wav(question, workdir / f"{slug}-{pause_ms}.raw.wav", pause_ms)
    pcm, rate = read_pcm(raw)
    raw.unlink()
    samples = np.concatenate([np.zeros(int(LEAD_IN_S * rate), dtype="<i2"), pcm])
    return write_wav(workdir / f"{slug}-{pause_ms}.wav", samples, rate)


def bench_settings(urls: StubUrls, p: Pass, mic: Path, out: Path) -> Settings:
    vad = VadSettings(
        end_silence_ms=p.end_silence_ms,
        speculate_after_ms=p.speculate_after_ms,
        end_silence_short_ms=p.end_silence_short_ms,
    )
    return wav_daemon_settings(urls, mic, out, vad=vad)


async def paused_turn(stubs: StubProcess, settings: Settings, question: str) -> dict[str, Any]:
    """One daemon turn on one paused question; what it did, read off ``turn_finished`` and the
    LLM stand-in (requests received, streams the daemon closed before their end)."""
    asked = len(await stubs.llm_requests())
    closed = len((await stubs.disconnect_times())[0])
    app = App(settings, once=True)
    await asyncio.wait_for(app.run(asyncio.Event()), TURN_TIMEOUT_S)
    requests = (await stubs.llm_requests())[asked:]
    cut = len((await stubs.disconnect_times())[0]) - closed
    # The question's own turn is the first: when the utterance was cut at the pause, the rest of
    # the question interrupts its answer and starts another turn (``once`` then stops that one).
    fields: dict[str, Any] = report_fields(app.turns[0]) if app.turns else {}
    later = [report_fields(t) for t in list(app.turns)[1:]]
    transcript = str(fields.get("transcript") or "")
    reply = str(fields.get("reply") or "")
    expected = expected_answer(question)
    speculations = fields.get("speculations")
    played_first = fields.get("speculation_played_first")
    dropped = None
    if isinstance(speculations, int):
        dropped = speculations - (0 if played_first is None else 1)
    return {
        "question": question,
        "outcome": fields.get("outcome"),
        "transcript": transcript,
        "whole_question": words(transcript) == words(question),
        "ends_marked": ends_sentence(transcript),
        "reply": reply,
        "expected_reply": expected,
        "right_answer": bool(reply) and words(reply) == words(expected),
        "llm_requests": len(requests),
        "llm_questions": [r.question for r in requests],
        "llm_streams_closed": cut,
        "speculations": speculations,
        "speculation_played_first": played_first,
        "dropped": dropped,
        "later_turns": [{"outcome": t.get("outcome"), "transcript": t.get("transcript")} for t in later],
    }


def _median(values: Sequence[int | float | None]) -> float | None:
    valid = [v for v in values if v is not None]
    return None if not valid else round(float(statistics.median(valid)), 2)


def _total(values: Sequence[int | None]) -> int | None:
    valid = [v for v in values if v is not None]
    return None if not valid else sum(valid)


def summarise(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """One pause length's figures over its turns."""
    n = len(turns)
    return {
        "turns": n,
        "llm_requests_per_turn": round(sum(t["llm_requests"] for t in turns) / n, 2) if n else None,
        "llm_requests_max": max((t["llm_requests"] for t in turns), default=None),
        "llm_streams_closed": sum(t["llm_streams_closed"] for t in turns),
        "speculations_per_turn": _median([t["speculations"] for t in turns]),
        "speculations": _total([t["speculations"] for t in turns]),
        "dropped": _total([t["dropped"] for t in turns]),
        "played_first": None
        if all(t["speculations"] is None for t in turns)
        else sum(1 for t in turns if t["speculation_played_first"] is True),
        "whole_question": sum(1 for t in turns if t["whole_question"]),
        "cut_off": sum(1 for t in turns if not t["whole_question"]),
        "cut_off_marked": sum(1 for t in turns if not t["whole_question"] and t["ends_marked"]),
        "right_answers": sum(1 for t in turns if t["right_answer"]),
        "wrong_answers": sum(1 for t in turns if t["reply"] and not t["right_answer"]),
        "no_answer": sum(1 for t in turns if not t["reply"]),
    }


def short_silence_ms(args: argparse.Namespace) -> int | None:
    """The cut-off pass's ``vad.end_silence_short_ms``; None: no cut-off pass (``--no-cut-offs``)."""
    return None if args.no_cut_offs else args.end_silence_short_ms


def passes(args: argparse.Namespace) -> list[Pass]:
    wasted = Pass("wasted", args.speculate_after_ms, None, args.end_silence_ms)
    short = short_silence_ms(args)
    if short is None:
        return [wasted]
    return [wasted, Pass("cut_offs", args.speculate_after_ms, short, args.end_silence_ms)]


def problem(args: argparse.Namespace) -> str | None:
    """Settings the bench cannot run with, said plainly; None when they are fine."""
    if args.speculate_after_ms >= args.end_silence_ms:
        return (
            f"--speculate-after-ms {args.speculate_after_ms} is not shorter than --end-silence-ms {args.end_silence_ms}"
        )
    short = short_silence_ms(args)
    if short is not None and short >= args.end_silence_ms:
        return f"--end-silence-short-ms {short} is not shorter than --end-silence-ms {args.end_silence_ms}"
    unknown = [q for q in args.question or () if q not in PAUSED_SPLITS]
    if unknown:
        return f"no paused version of {unknown[0]!r}; one of: {', '.join(PAUSED_SPLITS)}"
    return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every pass, pause length and question, ``args.n`` times; the WAV files go to ``--keep``
    or a temporary folder."""
    reason = problem(args)
    if reason is not None:
        raise ValueError(reason)
    questions = list(args.question or PAUSED_SPLITS)
    pauses = sorted({ms for group in args.pause_ms or [list(PAUSES_MS)] for ms in group})
    chosen = passes(args)
    results: dict[str, Any] = {
        "n": args.n,
        "questions": questions,
        "pauses_ms": pauses,
        "speculate_after_ms": args.speculate_after_ms,
        "end_silence_ms": args.end_silence_ms,
        "end_silence_short_ms": short_silence_ms(args),
        "passes": {p.name: {} for p in chosen},
    }
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            workdir = args.keep
            await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moss-bench-spec-")))
        inputs = {(q, ms): await asyncio.to_thread(make_input, q, ms, workdir) for q in questions for ms in pauses}
        async with StubProcess(
            asr=FunAsrBehaviour(punctuate=True, final_delay_s=ASR_FINAL_DELAY_S),
            llm=OpenAiBehaviour(
                answers=BENCH_ANSWERS,
                default_answer=BENCH_DEFAULT_ANSWER,
                first_token_delay_s=LLM_TTFT_S,
                tokens_per_s=LLM_TOKENS_PER_S,
            ),
            tts=PaddleSpeechBehaviour(first_chunk_delay_s=0.05, realtime_factor=0.1),
        ) as stubs:
            for p in chosen:
                for ms in pauses:
                    turns = []
                    for question in questions:
                        for i in range(args.n):
                            out = workdir / f"{p.name}-{'-'.join(question.split())}-{ms}-{i}.out.wav"
                            settings = bench_settings(stubs.urls, p, inputs[(question, ms)], out)
                            turn = await paused_turn(stubs, settings, question)
                            turns.append(turn)
                            log.warning("bench_turn", bench="speculation", run=p.name, pause_ms=ms, **turn)
                    results["passes"][p.name][str(ms)] = {"turns": turns, "summary": summarise(turns)}
    return results


def write_outputs(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Write ``--json``; return the text to print."""
    from daemon.tools.bench.speculation_report import render

    text = render(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        text += f"\nraw figures: {args.json}"
    return text


def command(args: argparse.Namespace) -> int:
    """``moss-voice bench speculation`` with its parsed options (``bench/cli.py``)."""
    import sys

    configure_logging("warning", "console")
    reason = problem(args)
    if reason is not None:
        print(f"moss-voice bench speculation: {reason}", file=sys.stderr)
        return 2
    print(write_outputs(asyncio.run(run(args)), args))
    return 0
