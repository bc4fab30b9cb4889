"""Fuzzing the FunASR side: random and mutated result messages into the TranscriptAssembler, and
mutated websocket frames through a whole FunAsrSession. Nothing but AsrError ever comes out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

from hypothesis import example, given
from hypothesis import strategies as st

from daemon.clients.asr import FunAsrSession
from daemon.clients.asr_text import TranscriptAssembler
from daemon.config import ASR_FLAVOURS, AsrSettings
from daemon.errors import AsrError
from tests.fuzzing import FUZZ, JSON_VALUES, fuzz, mutated, mutated_object

# What the four flavours send (docs/protocols.md "FunASR: results").
REAL_RESULTS: list[dict[str, Any]] = [
    {"mode": "2pass-online", "text": "what", "wav_name": "moss-voice", "is_final": False},
    {"mode": "2pass-online", "text": " time is", "wav_name": "moss-voice", "is_final": False},
    {
        "mode": "2pass-offline",
        "text": "what time is it?",
        "wav_name": "moss-voice",
        "is_final": True,
        "timestamp": "[[100,300],[300,520]]",
        "stamp_sents": [{"text_seg": "what time is it", "punc": "?", "start": 100, "end": 900}],
    },
    {"mode": "offline", "text": "今天天气怎么样", "wav_name": "moss-voice", "is_final": False, "timestamp": [[0, 200]]},
    {"text": "", "wav_name": "moss-voice", "is_final": True},
    {"is_end": True, "wav_name": "moss-voice", "text": "", "mode": "2pass-offline"},
    {"error": "", "mode": "online", "text": "，你好", "spk_name": "x", "slice_type": 2},
]
REAL_FRAMES = [json.dumps(m, ensure_ascii=False).encode() for m in REAL_RESULTS]

messages = st.one_of(st.sampled_from(REAL_RESULTS).flatmap(mutated_object), st.builds(dict), JSON_VALUES)


@FUZZ
@given(flavour=st.sampled_from(ASR_FLAVOURS), feed=st.lists(st.tuples(messages, st.booleans()), max_size=8))
@example(flavour="cpp-2pass", feed=[({"text": ["not", "text"]}, True)])
@example(flavour="python-classic", feed=[({"mode": 7, "text": "x"}, False)])
def test_the_assembler_raises_only_asr_errors(flavour: str, feed: list[tuple[Any, bool]]) -> None:
    assembler = TranscriptAssembler(flavour)
    for message, after_end in feed:
        try:
            final = assembler.feed(message, after_end_marker=after_end)
        except AsrError:
            return
        assert isinstance(final, bool)
        assert isinstance(assembler.text, str)


class _Close:
    close_rcvd = None


class FakeFunAsr:
    """A websocket that answers with given raw frames: some at once, the rest after the end
    marker; then it closes (or stays silent, so the quiet timeout decides)."""

    def __init__(self, early: list[str | bytes], late: list[str | bytes], *, then_close: bool) -> None:
        self.early, self.late, self.then_close = early, late, then_close
        self.end_marker = asyncio.Event()
        self.protocol = _Close()
        self.closed = False

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str) and '"is_speaking": false' in data:
            self.end_marker.set()

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str | bytes]:
        for frame in self.early:
            yield frame
        await self.end_marker.wait()
        for frame in self.late:
            yield frame
        if not self.then_close:
            await asyncio.Event().wait()

    async def close(self) -> None:
        self.closed = True


def _frame(raw: bytes, as_text: bool) -> str | bytes:
    return raw.decode("utf-8", "replace") if as_text else raw


frames = st.tuples(st.sampled_from(REAL_FRAMES).flatmap(mutated), st.booleans()).map(lambda t: _frame(*t))


@fuzz(60)
@given(
    flavour=st.sampled_from(ASR_FLAVOURS),
    early=st.lists(frames, max_size=3),
    late=st.lists(frames, max_size=4),
    then_close=st.booleans(),
)
@example(flavour="cpp-2pass", early=[], late=["[" * 100_000], then_close=True)
def test_a_session_fed_mutated_frames_ends_with_a_transcript_or_an_asr_error(
    flavour: str, early: list[str | bytes], late: list[str | bytes], then_close: bool
) -> None:
    settings = AsrSettings(url="ws://127.0.0.1:1", flavour=flavour, final_timeout_s=0.02)
    ws = FakeFunAsr(early, late, then_close=then_close)

    async def run() -> None:
        session = FunAsrSession(cast(Any, ws), settings)
        try:
            await session.send_audio(bytes(3 * settings.frame_bytes + 3))
            transcript = await session.finish()
        except AsrError:
            return
        finally:
            await session.aclose()
        assert isinstance(transcript.text, str)

    asyncio.run(run())
    assert ws.closed


def test_the_unmutated_frames_give_the_real_transcript() -> None:
    """The harness itself: real results, the final one after the end marker, give their text."""
    settings = AsrSettings(url="ws://127.0.0.1:1", flavour="cpp-2pass", final_timeout_s=5.0)
    ws = FakeFunAsr([REAL_FRAMES[0].decode(), REAL_FRAMES[1].decode()], [REAL_FRAMES[2].decode()], then_close=False)

    async def run() -> str:
        session = FunAsrSession(cast(Any, ws), settings)
        await session.send_audio(bytes(settings.frame_bytes))
        return (await session.finish()).text

    assert asyncio.run(run()) == "what time is it?"
    assert ws.end_marker.is_set() and ws.closed
