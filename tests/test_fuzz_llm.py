"""Fuzzing the LLM side: mutated vLLM and llama.cpp streams, cut anywhere, through the SSE parser
and through a whole LlmStream. Only SseError (the parser) and LlmError (the client) come out,
however the bytes are re-chunked the parser finds the same events, and the text the stream
yields is the text it reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from daemon.clients.llm_stream import LlmStream, error_message
from daemon.clients.sse import SseError, SseParser
from daemon.config import LlmSettings
from daemon.errors import LlmError
from tests.fuzzing import FUZZ, JSON_VALUES, chunked, fuzz, mutated, mutated_object


def _chunk(content: str | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "moss", "choices": [choice]}


VLLM_EVENTS: list[dict[str, Any]] = [
    {**_chunk(""), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    _chunk("你好"),
    _chunk("，我是MOSS。"),
    _chunk("", "stop", stop_reason=None),
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 9}},
]
VLLM = b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in VLLM_EVENTS)
VLLM += b"data: [DONE]\n\n"
LLAMA_CPP = (
    b": ping - 2026-12-01 10:00:00.000000\r\n\r\n"
    + b"".join(b"data: " + json.dumps(e, separators=(", ", ": ")).encode() + b"\r\n\r\n" for e in VLLM_EVENTS[1:4])
    + b'data: {"error": {"code": 500, "message": "slot unavailable", "type": "server_error"}}\r\n\r\n'
)
STREAMS = [VLLM, LLAMA_CPP, b"\xef\xbb\xbf" + VLLM]

streams = st.sampled_from(STREAMS).flatmap(lambda s: mutated(s, max_edits=6))


def _parse(pieces: list[bytes]) -> tuple[list[str], bool]:
    """The events of a byte stream fed in ``pieces``, and whether it ended in SseError."""
    parser = SseParser()
    events: list[str] = []
    try:
        for piece in pieces:
            events += parser.feed(piece)
        events += parser.close()
    except SseError:
        return events, True
    return events, False


@FUZZ
@given(data=st.data(), stream=streams)
@example(data=None, stream=b"data: \xff\xfe\n\n")  # not UTF-8: an SseError, whole or cut
def test_the_sse_parser_finds_the_same_events_however_the_stream_is_cut(data: Any, stream: bytes) -> None:
    whole = _parse([stream])
    pieces = [stream] if data is None else data.draw(chunked(stream, max_cuts=20))
    assert _parse(pieces) == whole
    assert all(isinstance(event, str) for event in whole[0])


def _response(pieces: list[bytes]) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return httpx.Response(200, content=body())


async def _read(pieces: list[bytes]) -> tuple[list[str], LlmStream, LlmError | None]:
    loop = asyncio.get_running_loop()
    stream = LlmStream(
        _response(pieces),
        settings=LlmSettings(first_token_timeout_s=5, read_timeout_s=5),
        url="http://llm/v1/chat/completions",
        clock=loop.time,
        started_at=loop.time(),
        first_token_deadline=loop.time() + 5,
    )
    deltas: list[str] = []
    error = None
    try:
        async for delta in stream:
            deltas.append(delta)
    except LlmError as exc:
        error = exc
    finally:
        await stream.aclose()
    return deltas, stream, error


@fuzz(200)
@given(data=st.data(), stream=streams)
@example(data=None, stream=b"data: " + b"[" * 100_000 + b"\n\n")  # JSON too deep for the json module
@example(data=None, stream=b'data: {"choices": [{"delta": {"content": "x"}, "finish_reason": 1}]}\n\ndata: [DONE]\n\n')
def test_a_mutated_stream_gives_text_and_at_most_an_llm_error(data: Any, stream: bytes) -> None:
    pieces = [stream] if data is None else data.draw(chunked(stream))
    deltas, llm, _ = asyncio.run(_read(pieces))
    assert all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas) == llm.text
    assert llm.finished and llm.result is not None


events = st.one_of(st.sampled_from(VLLM_EVENTS).flatmap(mutated_object), JSON_VALUES)


@fuzz(200)
@given(chunks=st.lists(events, max_size=6), done=st.booleans())
def test_chunks_of_any_shape_give_text_and_at_most_an_llm_error(chunks: list[Any], done: bool) -> None:
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    deltas, llm, _ = asyncio.run(_read([body + (b"data: [DONE]\n\n" if done else b"")]))
    assert "".join(deltas) == llm.text


@FUZZ
@given(body=JSON_VALUES)
def test_an_error_body_of_any_shape_becomes_a_message(body: Any) -> None:
    assert isinstance(error_message(body), str)


def test_events_before_a_broken_one_in_the_same_read_come_first_then_the_error() -> None:
    """Found by the fuzzing: the text before a broken event was lost when both came in one read."""
    parser = SseParser()
    assert parser.feed(b"data: one\n\ndata: \xff\n\n") == ["one"]
    assert parser.broken
    with pytest.raises(SseError, match="not valid UTF-8"):
        parser.close()


def test_the_stream_keeps_the_text_before_a_broken_event_of_the_same_read() -> None:
    good = b"data: " + json.dumps(_chunk("Hello")).encode() + b"\n\n"
    deltas, llm, error = asyncio.run(_read([good + b"data: \xff\n\n"]))
    assert deltas == ["Hello"] and llm.text == "Hello" and llm.finished
    assert error is not None and "not valid UTF-8" in str(error)
