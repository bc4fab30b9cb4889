"""OpenAiCompatibleLlm against the loopback stand-in (and MockTransport for byte-exact edge cases).

Covers the cases of docs/protocols.md "OpenAI: tested cases", llama.cpp's variations included.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from daemon.clients.http_pool import make_http_client
from daemon.clients.llm import LlmStream, OpenAiCompatibleLlm, error_message
from daemon.config import LlmSettings
from daemon.errors import LlmAuthError, LlmError, LlmNotFoundError, LlmTimeout, ServiceTimeout
from daemon.tools.stubs.openai import EXAMPLE_STREAM, OpenAiBehaviour, OpenAiStub, tokenize
from states.events import ChatMessage, LlmResult
from states.ports import LlmClient

T = 5.0  # generous bound for anything that could hang
QUESTION = [ChatMessage("user", "你好")]
LONG_ANSWER = "从前有座山，山里有座庙，庙里有个老和尚在给小和尚讲故事。" * 5


def make_settings(url: str, **overrides: Any) -> LlmSettings:
    values: dict[str, Any] = {
        "url": url,
        "system_prompt": "你是机器人助手。",
        "stop": ("<eom>",),
        "max_tokens": 256,
        "connect_timeout_s": 2.0,
        "first_token_timeout_s": 5.0,
        "read_timeout_s": 5.0,
    }
    values.update(overrides)
    return LlmSettings(**values)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
async def stub() -> AsyncIterator[OpenAiStub]:
    async with OpenAiStub(behaviour=OpenAiBehaviour(first_token_delay_s=0.01, tokens_per_s=0)) as server:
        yield server


async def collect(
    llm: OpenAiCompatibleLlm, messages: Sequence[ChatMessage] = QUESTION
) -> tuple[list[str], LlmStream, BaseException | None]:
    """Every delta, the stream, and the error that ended it (None when it ended cleanly)."""
    deltas: list[str] = []
    error: BaseException | None = None

    async def run() -> LlmStream:
        nonlocal error
        async with llm.stream_chat(messages) as stream:
            try:
                async for delta in stream:
                    deltas.append(delta)
            except LlmError as exc:
                error = exc
        return stream

    stream = await asyncio.wait_for(run(), T)
    return deltas, stream, error


def sse(*events: object, end: bytes = b"\n\n") -> bytes:
    out = b""
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
        out += b"data: " + data.encode() + end
    return out


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta if delta is not None else {}, "finish_reason": finish}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice], **extra}


def mock_llm(
    body_chunks: Sequence[bytes] | Callable[[httpx.Request], httpx.Response],
    *,
    status: int = 200,
    content_type: str = "text/event-stream; charset=utf-8",
    **overrides: Any,
) -> tuple[OpenAiCompatibleLlm, httpx.AsyncClient, list[httpx.Request]]:
    """A client over httpx.MockTransport that answers with exactly these body chunks (one read each)."""
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if callable(body_chunks):
            return body_chunks(request)

        async def body() -> AsyncIterator[bytes]:
            for part in body_chunks:
                yield part

        return httpx.Response(status, headers={"content-type": content_type}, content=body())

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAiCompatibleLlm(make_settings("http://llm.test/v1", **overrides), client), client, seen


# -- SSE parse -------------------------------------------------------------------


def assert_example_result(deltas: list[str], stream: LlmStream, error: BaseException | None) -> None:
    assert error is None
    assert "".join(deltas) == "你好！"
    assert deltas == ["你好", "！"]
    assert stream.result == LlmResult(
        finish_reason="stop", usage={"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}
    )
    assert stream.stop_reason == "<eom>"


async def test_example_stream_split_at_every_byte_offset_mock() -> None:
    for offset in range(1, len(EXAMPLE_STREAM)):
        llm, client, _ = mock_llm([EXAMPLE_STREAM[:offset], EXAMPLE_STREAM[offset:]])
        async with client:
            assert_example_result(*await collect(llm))


async def test_example_stream_one_byte_per_read_mock() -> None:
    llm, client, _ = mock_llm([EXAMPLE_STREAM[i : i + 1] for i in range(len(EXAMPLE_STREAM))])
    async with client:
        assert_example_result(*await collect(llm))


def tricky_cuts() -> list[list[bytes]]:
    s = EXAMPLE_STREAM
    inside_data = 3  # "dat|a: {..."
    inside_ni = s.index("你".encode()) + 1  # between the first and second byte of 你
    inside_hao = s.index("好".encode()) + 2
    second_event_end = s.index(b"\n\n", s.index(b"\n\n") + 2) + 2  # events 1 and 2 in one read
    inside_fullwidth = s.index("！".encode()) + 1
    return [
        [s[:inside_data], s[inside_data:inside_ni], s[inside_ni:second_event_end], s[second_event_end:]],
        [s[:inside_hao], s[inside_hao:inside_fullwidth], s[inside_fullwidth:]],
        [s[:second_event_end], s[second_event_end:]],
    ]


@pytest.mark.parametrize("cuts", tricky_cuts(), ids=["data-utf8-two-events", "inside-hao-and-bang", "two-events"])
async def test_example_stream_split_over_loopback(http: httpx.AsyncClient, cuts: list[bytes]) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(raw_chunks=cuts, raw_chunk_delay_s=0.02)) as server:
        llm = OpenAiCompatibleLlm(make_settings(server.url), http)
        assert_example_result(*await collect(llm))


# -- first chunk and empty deltas ----------------------------------------------------


async def test_role_only_and_empty_deltas_produce_no_text() -> None:
    body = sse(
        chunk({"role": "assistant"}),
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": None}),
        chunk(),
        {"id": "x", "choices": [{"index": 0, "finish_reason": None}]},  # no delta at all
        chunk({"content": "好"}),
        chunk({"content": ""}),
        chunk({}, finish="stop"),
        "[DONE]",
    )
    llm, client, _ = mock_llm([body])
    async with client:
        deltas, stream, error = await collect(llm)
    assert error is None
    assert deltas == ["好"]
    assert stream.result == LlmResult("stop", None)


async def test_usage_chunk_with_empty_choices_is_guarded() -> None:
    body = sse(
        chunk({"content": "a"}, finish="length"),
        {"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
        {"id": "x", "usage": None},
        "[DONE]",
    )
    llm, client, _ = mock_llm([body])
    async with client:
        deltas, stream, error = await collect(llm)
    assert (deltas, error) == (["a"], None)
    assert stream.result == LlmResult("length", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})


# -- stop ----------------------------------------------------------------------------


async def test_stop_list_is_sent_and_marker_never_reaches_the_text(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(answers={"你好": "你好！<eom>这段不该出现"}, tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    deltas, stream, error = await collect(llm)
    assert error is None
    assert stub.requests[-1].body["stop"] == ["<eom>"]
    assert "".join(deltas) == "你好！"
    assert "<eom>" not in "".join(deltas)
    assert stream.result is not None and stream.result.finish_reason == "stop"
    assert stream.stop_reason == "<eom>"


async def test_stop_given_as_a_string_is_sent_as_a_list(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(answers={"你好": "好的<eom>多余"}, tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url, stop="<eom>"), http)
    deltas, stream, error = await collect(llm)
    assert stub.requests[-1].body["stop"] == ["<eom>"]
    assert (error, "".join(deltas)) == (None, "好的")
    assert stream.stop_reason == "<eom>"


# -- length --------------------------------------------------------------------------


async def test_length_finish_reason_is_surfaced(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(default_answer=LONG_ANSWER, tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url, max_tokens=5), http)
    deltas, stream, error = await collect(llm)
    assert error is None
    assert stub.requests[-1].body["max_tokens"] == 5
    assert "".join(deltas) == "".join(tokenize(LONG_ANSWER)[:5])
    assert stream.result is not None
    assert stream.result.finish_reason == "length"
    assert stream.result.usage is not None and stream.result.usage["completion_tokens"] == 5


# -- unknown model -------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["old", "new"])
async def test_unknown_model_is_a_typed_error_in_both_shapes(
    http: httpx.AsyncClient, stub: OpenAiStub, shape: str
) -> None:
    stub.behaviour = OpenAiBehaviour(error_shape=shape)
    llm = OpenAiCompatibleLlm(make_settings(stub.url, model="x"), http)
    with pytest.raises(LlmNotFoundError) as info:
        await asyncio.wait_for(collect(llm), T)
    assert "The model `x` does not exist." in str(info.value)
    assert info.value.status == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"object": "error", "message": "m1", "type": "BadRequestError", "param": None, "code": 400}, "m1"),
        ({"error": {"message": "m2", "type": "BadRequestError", "param": None, "code": 400}}, "m2"),
        ({"error": "Unauthorized"}, "Unauthorized"),
        ({"detail": "Invalid API key"}, "Invalid API key"),
        ({"error": {"error": {"message": "nested"}}}, "nested"),
        ({"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]}, "Field required"),
        ({"unexpected": 1}, '{"unexpected": 1}'),
        ("plain string", "plain string"),
    ],
)
def test_error_message_reads_every_shape(body: object, message: str) -> None:
    assert message in error_message(body)


async def test_non_json_error_body_and_other_statuses() -> None:
    def bad_gateway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, headers={"content-type": "text/html"}, content=b"<html>Bad Gateway</html>")

    llm, client, _ = mock_llm(bad_gateway)
    async with client:
        with pytest.raises(LlmError) as info:
            await collect(llm)
    assert info.value.status == 502
    assert "Bad Gateway" in str(info.value)
    assert type(info.value) is LlmError


async def test_server_error_500_before_streaming(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(misbehave="error_500", error_shape="old")
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    with pytest.raises(LlmError) as info:
        await collect(llm)
    assert info.value.status == 500
    assert "misbehave=error_500" in str(info.value)


# -- request builder -----------------------------------------------------------------


async def test_request_builder(http: httpx.AsyncClient) -> None:
    llm = OpenAiCompatibleLlm(make_settings("http://h/v1", temperature=0.3, top_p=0.9), http)
    body = llm.build_request([ChatMessage("user", "hi")])
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "moss"
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9 and body["max_tokens"] == 256
    assert body["stop"] == ["<eom>"]
    assert body["messages"] == [
        {"role": "system", "content": "你是机器人助手。"},
        {"role": "user", "content": "hi"},
    ]
    own_system = llm.build_request([ChatMessage("system", "s"), ChatMessage("user", "u")])
    assert [m["role"] for m in own_system["messages"]] == ["system", "user"]
    assert own_system["messages"][0]["content"] == "s"
    no_prompt = OpenAiCompatibleLlm(make_settings("http://h/v1", system_prompt=""), http)
    assert no_prompt.build_request([ChatMessage("user", "u")])["messages"] == [{"role": "user", "content": "u"}]


async def test_request_builder_never_sends_stream_options_without_stream(http: httpx.AsyncClient) -> None:
    for settings in (make_settings("http://h/v1"), make_settings("http://h/v1", stop=(), max_tokens=1)):
        body = OpenAiCompatibleLlm(settings, http).build_request(QUESTION)
        assert "stream_options" not in body or body.get("stream") is True


async def test_client_requests_pass_vllm_validation(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    deltas, _, error = await collect(llm)
    assert error is None and deltas
    sent = stub.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["accept"] == "text/event-stream"
    assert "authorization" not in sent.headers


# -- mid-stream error ----------------------------------------------------------------


@pytest.mark.parametrize("shape", ["new", "old"])
async def test_midstream_error_keeps_partial_text(http: httpx.AsyncClient, stub: OpenAiStub, shape: str) -> None:
    stub.behaviour = OpenAiBehaviour(misbehave="error_midstream", error_shape=shape, tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    deltas, stream, error = await collect(llm)
    assert deltas == tokenize(stub.behaviour.default_answer)[:2]
    assert stream.text == "".join(deltas)
    assert isinstance(error, LlmError)
    assert "boom" in str(error)


async def test_midstream_error_exact_event_of_the_protocol() -> None:
    body = (
        sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "部分"}))
        + b'data: {"error":{"message":"boom","type":"InternalServerError","code":500}}\n\n'
        + b"data: [DONE]\n\n"
    )
    llm, client, _ = mock_llm([body])
    async with client:
        deltas, stream, error = await collect(llm)
    assert deltas == ["部分"]
    assert isinstance(error, LlmError) and "boom" in str(error)
    assert stream.result is not None and stream.result.finish_reason is None


async def test_error_as_plain_string_mid_stream() -> None:
    llm, client, _ = mock_llm([sse(chunk({"content": "a"}), {"error": "engine died"}, "[DONE]")])
    async with client:
        deltas, _, error = await collect(llm)
    assert deltas == ["a"]
    assert isinstance(error, LlmError) and "engine died" in str(error)


# -- barge-in ------------------------------------------------------------------------


async def test_barge_in_closes_the_connection_and_the_next_request_succeeds(
    http: httpx.AsyncClient, stub: OpenAiStub
) -> None:
    stub.behaviour = OpenAiBehaviour(default_answer=LONG_ANSWER, first_token_delay_s=0.01, tokens_per_s=20)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)

    async def barge_in() -> tuple[list[str], LlmStream]:
        deltas: list[str] = []
        async with llm.stream_chat(QUESTION) as stream:
            async for delta in stream:
                deltas.append(delta)
                if len(deltas) == 2:
                    break
        return deltas, stream

    deltas, stream = await asyncio.wait_for(barge_in(), T)
    left_at = time.monotonic()
    assert len(deltas) == 2
    assert stream.result is None  # it did not end
    assert await stub.wait_for_disconnects(1, timeout=2.0), "the stand-in never saw the client go away"
    assert stub.disconnect_times[0] - left_at < 2.0
    assert stub.streams_completed == 0

    stub.behaviour = OpenAiBehaviour(first_token_delay_s=0.01, tokens_per_s=0)
    deltas2, stream2, error2 = await collect(llm)
    assert error2 is None and "".join(deltas2) == stub.behaviour.default_answer
    assert stream2.result is not None and stream2.result.finish_reason == "stop"
    first, second = stub.requests[-2], stub.requests[-1]
    assert first.client != second.client, "the aborted connection was reused"


async def test_cancelling_the_consumer_task_also_disconnects(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(default_answer=LONG_ANSWER, first_token_delay_s=0.01, tokens_per_s=20)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    got_two = asyncio.Event()

    async def speak() -> None:
        count = 0
        async with llm.stream_chat(QUESTION) as stream:
            async for _ in stream:
                count += 1
                if count == 2:
                    got_two.set()

    task = asyncio.create_task(speak())
    await asyncio.wait_for(got_two.wait(), T)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, T)
    assert await stub.wait_for_disconnects(1, timeout=2.0)


async def test_leaving_after_the_end_keeps_the_connection_for_reuse(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    for _ in range(2):
        _, _, error = await collect(llm)
        assert error is None
    assert stub.requests[-2].client == stub.requests[-1].client
    assert stub.disconnects == 0


# -- health and startup --------------------------------------------------------------


async def test_wait_ready_while_starting_then_up(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(misbehave="starting", starting_s=0.4)
    async with OpenAiStub(behaviour=behaviour) as server:
        llm = OpenAiCompatibleLlm(make_settings(server.url), http)
        with pytest.raises(LlmError, match="cannot connect"):  # refused while "loading"
            await collect(llm)
        started = time.monotonic()
        model = await asyncio.wait_for(llm.wait_ready(max_wait_s=T), T + 1)
        assert model == "moss"
        assert time.monotonic() - started > 0.1  # it had to retry
        paths = [r.path for r in server.requests]
        assert paths[:2] == ["/health", "/v1/models"]
        deltas, _, error = await collect(llm)
        assert error is None and deltas


async def test_wait_ready_health_503_marks_the_llm_down(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(misbehave="health_503")
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    started = time.monotonic()
    with pytest.raises(LlmError) as info:
        await asyncio.wait_for(llm.wait_ready(max_wait_s=10), T)
    assert info.value.status == 503
    assert not isinstance(info.value, ServiceTimeout)
    assert time.monotonic() - started < 3  # not retried until the deadline
    assert [r.path for r in stub.requests] == ["/health"]


async def test_wait_ready_uses_the_root_health_not_v1_health(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    llm = OpenAiCompatibleLlm(make_settings(stub.url + "/"), http)
    assert await asyncio.wait_for(llm.wait_ready(max_wait_s=T), T) == "moss"
    assert stub.requests[0].path == "/health"


async def test_wait_ready_model_not_served_lists_the_served_ids(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(models=["moss-moon-003-sft", "other"])
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    with pytest.raises(LlmNotFoundError) as info:
        await asyncio.wait_for(llm.wait_ready(max_wait_s=T), T)
    assert "moss-moon-003-sft" in str(info.value) and "other" in str(info.value)


async def test_wait_ready_refused_until_the_deadline(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="refuse")) as server:
        llm = OpenAiCompatibleLlm(make_settings(server.url), http)
        started = time.monotonic()
        with pytest.raises(LlmTimeout) as info:
            await asyncio.wait_for(llm.wait_ready(max_wait_s=0.6), T)
        assert 0.5 < time.monotonic() - started < 3
        assert f"127.0.0.1:{server.port}" in str(info.value)
        assert server.requests == []


async def test_wait_ready_llama_cpp_has_no_health_and_accepts_any_model(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(style="llama_cpp", models=["/models/moss.gguf"])
    async with OpenAiStub(behaviour=behaviour) as server:
        llm = OpenAiCompatibleLlm(make_settings(server.url), http)
        assert await asyncio.wait_for(llm.wait_ready(max_wait_s=T), T) == "moss"
        assert [r.path for r in server.requests] == ["/health", "/v1/models"]
        deltas, _, error = await collect(llm)
        assert error is None and "".join(deltas) == behaviour.default_answer


# -- auth ---------------------------------------------------------------------------


async def test_missing_api_key_is_an_auth_error_not_retried(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(api_key="sekrit")
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    with pytest.raises(LlmAuthError) as info:
        await collect(llm)
    assert info.value.status == 401 and "Unauthorized" in str(info.value)
    started = time.monotonic()
    with pytest.raises(LlmAuthError):
        await asyncio.wait_for(llm.wait_ready(max_wait_s=10), T)
    assert time.monotonic() - started < 3
    assert [r.path for r in stub.requests] == ["/v1/chat/completions", "/health", "/v1/models"]


async def test_api_key_is_sent_as_bearer(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(api_key="sekrit", tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url, api_key="sekrit"), http)
    assert await asyncio.wait_for(llm.wait_ready(max_wait_s=T), T) == "moss"
    deltas, _, error = await collect(llm)
    assert error is None and deltas
    assert stub.requests[-1].headers["authorization"] == "Bearer sekrit"


async def test_wrong_api_key_llama_cpp_detail_shape(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(style="llama_cpp", api_key="right")) as server:
        llm = OpenAiCompatibleLlm(make_settings(server.url, api_key="wrong"), http)
        with pytest.raises(LlmAuthError, match="Invalid API key"):
            await collect(llm)


# -- llama.cpp style ("OpenAI: chunks") and truncated streams ---------------------------------------------


async def test_llama_cpp_stream_with_pings_role_only_first_delta_and_no_usage(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(
        style="llama_cpp", answers={"你好": "你好，我是 MOSS robot!"}, tokens_per_s=25, ping_interval_s=0.02
    )
    async with OpenAiStub(behaviour=behaviour) as server:
        llm = OpenAiCompatibleLlm(make_settings(server.url), http)
        deltas, stream, error = await collect(llm)
    assert error is None
    assert "".join(deltas) == "你好，我是 MOSS robot!"
    assert all(deltas)
    assert stream.result == LlmResult(finish_reason="stop", usage=None)
    assert stream.stop_reason is None


async def test_llama_cpp_exact_bytes_mock() -> None:
    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            "id": "c",
            "model": "m",
            "created": 1,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"

    body = (
        b": ping - 2024-05-01 10:00:00.000000\r\n\r\n"
        + event({"role": "assistant"})
        + event({"content": "\u4f60\u597d"})
        + b": ping - 2024-05-01 10:00:15.000000\r\n\r\n"
        + event({"content": "!"})
        + event({"content": ""})
        + event({}, "stop")
        + b"data: [DONE]\r\n\r\n"
    )
    assert b"\\u4f60" in body
    llm, client, _ = mock_llm([body[i : i + 7] for i in range(0, len(body), 7)])
    async with client:
        deltas, stream, error = await collect(llm)
    assert (deltas, error) == (["你好", "!"], None)
    assert stream.result == LlmResult("stop", None)


async def test_truncated_stream_raises_after_the_partial_text(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(misbehave="truncate", tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    deltas, stream, error = await collect(llm)
    assert deltas == tokenize(stub.behaviour.default_answer)[:2]
    assert isinstance(error, LlmError) and "truncated" in str(error)
    assert stream.result is not None and stream.result.finish_reason is None


async def test_eof_without_done_or_finish_is_truncated() -> None:
    llm, client, _ = mock_llm([sse(chunk({"content": "半"}))])
    async with client:
        deltas, stream, error = await collect(llm)
    assert deltas == ["半"]
    assert isinstance(error, LlmError) and "truncated" in str(error)
    assert stream.result == LlmResult(finish_reason=None, usage=None)


async def test_eof_after_finish_without_done_is_fine() -> None:
    llm, client, _ = mock_llm([sse(chunk({"content": "完"}, finish="stop"))[:-2]])  # no blank line either
    async with client:
        deltas, stream, error = await collect(llm)
    assert (deltas, error) == (["完"], None)
    assert stream.result == LlmResult("stop", None)


async def test_llama_cpp_new_request_cuts_the_running_stream(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(style="llama_cpp", default_answer=LONG_ANSWER, tokens_per_s=20)
    async with OpenAiStub(behaviour=behaviour) as server:
        llm = OpenAiCompatibleLlm(make_settings(server.url), http)
        first_text = asyncio.Event()
        result: dict[str, Any] = {}

        async def long_one() -> None:
            async with llm.stream_chat(QUESTION) as stream:
                try:
                    async for _ in stream:
                        first_text.set()
                except LlmError as exc:
                    result["error"] = exc
                result["text"] = stream.text

        task = asyncio.create_task(long_one())
        await asyncio.wait_for(first_text.wait(), T)
        server.behaviour = OpenAiBehaviour(style="llama_cpp", tokens_per_s=0)
        deltas, _, error = await collect(llm)
        await asyncio.wait_for(task, T)
    assert error is None and "".join(deltas) == server.behaviour.default_answer
    assert "truncated" in str(result["error"])
    assert result["text"] and LONG_ANSWER.startswith(result["text"])


async def test_cut_connection_keeps_partial_text(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(misbehave="cut", tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    deltas, _, error = await collect(llm)
    assert deltas == tokenize(stub.behaviour.default_answer)[:2]
    assert isinstance(error, LlmError) and "truncated" in str(error)


async def test_garbage_event_is_a_clear_error_after_the_partial_text(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(misbehave="garbage", tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    deltas, _, error = await collect(llm)
    assert deltas == tokenize(stub.behaviour.default_answer)[:2]
    assert isinstance(error, LlmError) and "not JSON" in str(error)


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        ([1, 2], "not an object"),
        ({"choices": "nope"}, "choices"),
        ({"choices": [{"delta": "nope"}]}, "delta"),
        ({"choices": [{"delta": {"content": 5}}]}, "content"),
    ],
)
async def test_wrong_types_in_chunks_are_clear_errors(event: object, needle: str) -> None:
    llm, client, _ = mock_llm([sse(chunk({"content": "a"}), event, "[DONE]")])
    async with client:
        deltas, _, error = await collect(llm)
    assert deltas == ["a"]
    assert isinstance(error, LlmError) and needle in str(error)


async def test_oversized_event_is_a_clear_error() -> None:
    llm, client, _ = mock_llm([b"data: " + b"x" * (1024 * 1024 + 10)])
    async with client:
        deltas, _, error = await collect(llm)
    assert deltas == []
    assert isinstance(error, LlmError) and "bad SSE" in str(error)


async def test_reading_after_leaving_the_context_is_a_clear_error(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(default_answer=LONG_ANSWER, tokens_per_s=20)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    async with llm.stream_chat(QUESTION) as stream:
        first = await asyncio.wait_for(anext(stream), T)
    assert first
    with pytest.raises(LlmError, match="after its context was left"):
        await asyncio.wait_for(anext(stream), T)


async def test_a_200_that_is_not_an_event_stream() -> None:
    llm, client, _ = mock_llm([b'{"choices": []}'], content_type="application/json")
    async with client:
        with pytest.raises(LlmError, match="not an event stream"):
            await collect(llm)


# -- connection failures and timeouts ------------------------------------------------------


async def test_connection_refused_names_the_url(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="refuse")) as server:
        llm = OpenAiCompatibleLlm(make_settings(server.url), http)
        with pytest.raises(LlmError) as info:
            await collect(llm)
    assert f"http://127.0.0.1:{server.port}/v1/chat/completions" in str(info.value)
    assert not isinstance(info.value, ServiceTimeout)


async def test_connect_timeout_is_an_llm_timeout() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    llm, client, _ = mock_llm(slow)
    async with client:
        with pytest.raises(LlmTimeout, match="connecting"):
            await collect(llm)


async def test_hanging_server_hits_the_first_token_timeout(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="hang")) as server:
        llm = OpenAiCompatibleLlm(make_settings(server.url, first_token_timeout_s=0.3), http)
        started = time.monotonic()
        with pytest.raises(LlmTimeout):
            await collect(llm)
        assert time.monotonic() - started < 3
        assert await server.wait_for_disconnects(1, timeout=2.0)  # the client hung up


async def test_slow_first_token_hits_the_first_token_timeout(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(first_token_delay_s=3.0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url, first_token_timeout_s=0.3), http)
    started = time.monotonic()
    deltas, _, error = await collect(llm)
    assert deltas == []
    assert isinstance(error, LlmTimeout) and "no text" in str(error)
    assert time.monotonic() - started < 2.5
    assert await stub.wait_for_disconnects(1, timeout=2.0)


async def test_stalled_stream_hits_the_read_timeout(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(first_token_delay_s=0.01, tokens_per_s=1)
    llm = OpenAiCompatibleLlm(make_settings(stub.url, read_timeout_s=0.3), http)
    deltas, stream, error = await collect(llm)
    assert len(deltas) == 1
    assert isinstance(error, LlmTimeout) and "stalled" in str(error)
    assert stream.text == deltas[0]


# -- observability -------------------------------------------------------------------------


async def test_latency_timestamps_use_the_injected_clock_and_events_are_logged(
    http: httpx.AsyncClient, stub: OpenAiStub
) -> None:
    stub.behaviour = OpenAiBehaviour(first_token_delay_s=0.05, tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http, clock=lambda: 1000.0 + time.monotonic())
    with capture_logs() as logs:
        _, stream, error = await collect(llm)
    assert error is None
    assert stream.first_token_at is not None and stream.started_at > 1000.0
    assert stream.first_token_at - stream.started_at >= 0.03
    events = {e["event"]: e for e in logs}
    assert events["llm_request"]["model"] == "moss" and events["llm_request"]["messages"] == 2
    assert events["llm_first_token"]["ms"] >= 30
    assert events["llm_finished"]["finish_reason"] == "stop"
    assert events["llm_finished"]["usage"]["completion_tokens"] == len(tokenize(stub.behaviour.default_answer))


async def test_errors_are_logged(http: httpx.AsyncClient, stub: OpenAiStub) -> None:
    stub.behaviour = OpenAiBehaviour(misbehave="error_midstream", tokens_per_s=0)
    llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
    with capture_logs() as logs:
        await collect(llm)
    errors = [e for e in logs if e["event"] == "llm_error"]
    assert len(errors) == 1 and "boom" in errors[0]["error"]


async def test_implements_the_port(http: httpx.AsyncClient) -> None:
    llm: LlmClient = OpenAiCompatibleLlm(make_settings("http://h/v1"), http)
    assert callable(llm.stream_chat)


async def test_warm_up_leaves_an_open_connection_for_the_question(stub: OpenAiStub) -> None:
    async with make_http_client() as http:
        llm = OpenAiCompatibleLlm(make_settings(stub.url), http)
        await asyncio.wait_for(llm.warm_up(), T)
        await collect(llm)
    warm, chat = stub.requests[-2], stub.requests[-1]
    assert warm.path.endswith("/models") and chat.path.endswith("/chat/completions")
    assert warm.client is not None and warm.client == chat.client  # the same connection


async def test_warm_up_against_a_dead_server_is_quiet(http: httpx.AsyncClient) -> None:
    llm = OpenAiCompatibleLlm(make_settings("http://127.0.0.1:9/v1", connect_timeout_s=0.5), http)
    await asyncio.wait_for(llm.warm_up(), T)  # no exception: the question itself will say it
