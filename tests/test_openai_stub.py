"""The OpenAI-compatible stand-in on the wire, checked with plain httpx (not our client)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from daemon.tools.stubs.openai import EXAMPLE_STREAM, OpenAiBehaviour, OpenAiStub, tokenize

T = 5.0


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=T) as client:
        yield client


def chat_body(question: str = "你好", **extra: Any) -> dict[str, Any]:
    return {"model": "moss", "messages": [{"role": "user", "content": question}], **extra}


def stream_body(question: str = "你好", **extra: Any) -> dict[str, Any]:
    return chat_body(question, stream=True, stream_options={"include_usage": True}, **extra)


async def raw_stream(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    async with http.stream("POST", f"{url}/chat/completions", json=body) as response:
        data = await asyncio.wait_for(response.aread(), T)
    return response, data


def events(data: bytes, sep: bytes = b"\n\n") -> list[bytes]:
    return [e for e in data.split(sep) if e]


def payloads(data: bytes, sep: bytes = b"\n\n") -> list[Any]:
    out: list[Any] = []
    for event in events(data, sep):
        if event.startswith(b":"):
            continue
        text = event.removeprefix(b"data: ").decode()
        out.append(text if text == "[DONE]" else json.loads(text))
    return out


def test_tokenize() -> None:
    assert tokenize("你好！") == ["你", "好", "！"]
    assert tokenize("Hello wonderful world.") == ["Hell", "o", " wond", "erfu", "l", " worl", "d", "."]
    for text in ["", "  a  b ", "MOSS是复旦大学的模型, version 003!\n好", "x" * 30]:
        assert "".join(tokenize(text)) == text
    assert all(len(t) <= 5 for t in tokenize("supercalifragilistic expialidocious"))


def test_behaviour_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="style"):
        OpenAiBehaviour(style="tgi")
    with pytest.raises(ValueError, match="misbehave"):
        OpenAiBehaviour(misbehave="explode")
    with pytest.raises(ValueError, match="error_shape"):
        OpenAiBehaviour(error_shape="weird")


async def test_scripted_answers_match_the_last_user_message(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(
        answers={"WEATHER": "It is sunny.", "名字": "我叫MOSS。"}, default_answer="Pardon?", first_token_delay_s=0
    )
    async with OpenAiStub(behaviour=behaviour) as stub:

        async def ask(messages: list[dict[str, str]]) -> str:
            response = await http.post(f"{stub.url}/chat/completions", json={"model": "moss", "messages": messages})
            assert response.status_code == 200
            return response.json()["choices"][0]["message"]["content"]

        assert await ask([{"role": "user", "content": "How is the weather today?"}]) == "It is sunny."
        assert await ask([{"role": "user", "content": "你的名字是什么"}]) == "我叫MOSS。"
        assert await ask([{"role": "user", "content": "something else"}]) == "Pardon?"
        earlier = [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "thanks"},
        ]
        assert await ask(earlier) == "Pardon?"


async def test_non_streaming_completion_shape(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(default_answer="一二三四五六")) as stub:
        body = (await http.post(f"{stub.url}/chat/completions", json=chat_body(max_tokens=4))).json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "一二三四", "tool_calls": []}
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4


async def test_vllm_stream_on_the_wire(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(default_answer="你好！Hi<eom>tail", first_token_delay_s=0, tokens_per_s=0)
    async with OpenAiStub(behaviour=behaviour) as stub:
        response, data = await raw_stream(http, stub.url, stream_body(stop=["<eom>"]))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert "你".encode() in data and b"\\u" not in data  # raw UTF-8
    assert b", " not in data and b'": ' not in data  # compact JSON
    assert data.endswith(b"data: [DONE]\n\n") and b"\r\n" not in data
    chunks = payloads(data)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert "".join(texts) == "你好！Hi" and "<eom>" not in "".join(texts)
    final = chunks[-3]["choices"][0]
    assert (final["finish_reason"], final["stop_reason"]) == ("stop", "<eom>")
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] == len(texts)
    assert len({c["id"] for c in chunks[:-1]}) == 1


async def test_vllm_stream_without_include_usage_has_no_usage_chunk(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(first_token_delay_s=0, tokens_per_s=0)) as stub:
        _, data = await raw_stream(http, stub.url, chat_body(stream=True, stop="好"))
    chunks = payloads(data)
    assert all(c == "[DONE]" or c["choices"] for c in chunks)
    final = chunks[-2]["choices"][0]
    assert final["stop_reason"] == "好"  # stop as a plain string works too


async def test_llama_cpp_stream_on_the_wire(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(
        style="llama_cpp", default_answer="你好 there", first_token_delay_s=0.05, tokens_per_s=20, ping_interval_s=0.02
    )
    async with OpenAiStub(behaviour=behaviour) as stub:
        response, data = await raw_stream(http, stub.url, stream_body(model="anything-goes"))
        health = await http.get(stub.url.removesuffix("/v1") + "/health")
    assert response.status_code == 200
    assert b"\\u4f60" in data and "你".encode() not in data  # \u escapes
    assert b'"delta": {' in data  # ", " / ": " separators
    assert b": ping - " in data
    assert data.endswith(b"data: [DONE]\r\n\r\n")
    chunks = payloads(data, b"\r\n\r\n")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-3]["choices"][0]["delta"] == {"content": ""}
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert not any("usage" in c or "stop_reason" in c.get("choices", [{}])[0] for c in chunks[:-1])
    assert health.status_code == 404 and health.json() == {"detail": "Not Found"}


async def test_llama_cpp_validation_errors_are_500(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(style="llama_cpp")) as stub:
        response = await http.post(f"{stub.url}/chat/completions", json={"model": "m"})
    assert response.status_code == 500


async def test_token_pacing(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(default_answer="一二三四五六七八九十", first_token_delay_s=0.2, tokens_per_s=20)
    async with OpenAiStub(behaviour=behaviour) as stub:
        started = time.monotonic()
        arrivals: list[float] = []
        async with http.stream("POST", f"{stub.url}/chat/completions", json=stream_body()) as response:
            async for line in response.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 10
    assert 0.15 < arrivals[0] < 2.0  # first token delay
    assert 0.3 < arrivals[-1] - arrivals[0] < 3.0  # 9 intervals of 50 ms = 0.45 s


async def test_request_validation_like_vllm(http: httpx.AsyncClient) -> None:
    async with OpenAiStub() as stub:
        url = f"{stub.url}/chat/completions"
        no_stream = await http.post(url, json=chat_body(stream_options={"include_usage": True}))
        assert no_stream.status_code == 400
        assert no_stream.json()["error"]["message"] == "Stream options can only be defined when `stream=True`."
        missing = await http.post(url, json={"model": "moss"})
        assert missing.status_code == 400 and "messages" in missing.json()["error"]["message"]
        not_json = await http.post(url, content=b"{nope", headers={"content-type": "application/json"})
        assert not_json.status_code == 400
        unknown = await http.post(url, json=chat_body(model="x"))
        assert unknown.status_code == 404
        assert unknown.json() == {
            "error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "param": None, "code": 404}
        }
        stub.behaviour = OpenAiBehaviour(error_shape="old")
        old = await http.post(url, json=chat_body(model="x"))
        assert old.json() == {
            "object": "error",
            "message": "The model `x` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
        no_model = await http.post(url, json={"messages": [{"role": "user", "content": "hi"}]})
        assert no_model.status_code == 200 and no_model.json()["model"] == "moss"
        elsewhere = await http.get(stub.url.removesuffix("/v1") + "/v1/nothing")
        assert elsewhere.status_code == 404 and elsewhere.json() == {"detail": "Not Found"}


async def test_api_key(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(api_key="k")) as stub:
        url = f"{stub.url}/chat/completions"
        assert (await http.post(url, json=chat_body())).json() == {"error": "Unauthorized"}
        wrong = await http.post(url, json=chat_body(), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        models = await http.get(f"{stub.url}/models")
        assert models.status_code == 401
        ok = await http.post(url, json=chat_body(), headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200
        health = await http.get(stub.url.removesuffix("/v1") + "/health")
        assert health.status_code == 200  # /health never needs the key


async def test_health_models_and_recorded_requests(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(models=["moss", "moss-base"])) as stub:
        health = await http.get(f"http://127.0.0.1:{stub.port}/health")
        models = await http.get(f"{stub.url}/models", headers={"X-Test": "1"})
        stub.behaviour = OpenAiBehaviour(misbehave="health_503")
        dead = await http.get(f"http://127.0.0.1:{stub.port}/health")
    assert (health.status_code, health.content) == (200, b"")
    assert [m["id"] for m in models.json()["data"]] == ["moss", "moss-base"]
    assert models.json()["object"] == "list"
    assert dead.status_code == 503
    seen = [(r.method, r.path) for r in stub.requests]
    assert seen == [("GET", "/health"), ("GET", "/v1/models"), ("GET", "/health")]
    assert stub.requests[1].headers["x-test"] == "1"
    assert stub.requests[1].client is not None


async def test_raw_chunks_are_sent_verbatim(http: httpx.AsyncClient) -> None:
    chunks = [EXAMPLE_STREAM[:10], EXAMPLE_STREAM[10:400], EXAMPLE_STREAM[400:]]
    async with OpenAiStub(behaviour=OpenAiBehaviour(raw_chunks=chunks)) as stub:
        _, data = await raw_stream(http, stub.url, stream_body())
    assert data == EXAMPLE_STREAM
    assert stub.requests[0].body["stream"] is True


async def test_client_disconnect_is_observed(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(default_answer="一二三四五六七八九十" * 10, first_token_delay_s=0, tokens_per_s=20)
    async with OpenAiStub(behaviour=behaviour) as stub:
        async with http.stream("POST", f"{stub.url}/chat/completions", json=stream_body()) as response:
            async for _ in response.aiter_bytes():
                break
        closed_at = time.monotonic()
        assert await stub.wait_for_disconnects(1, timeout=2.0)
        assert stub.disconnect_times[0] - closed_at < 2.0
        assert (stub.streams_started, stub.streams_completed) == (1, 0)


async def test_stop_is_prompt_during_a_slow_stream(http: httpx.AsyncClient) -> None:
    stub = OpenAiStub(behaviour=OpenAiBehaviour(first_token_delay_s=0, tokens_per_s=1))
    await stub.start()
    async with http.stream("POST", f"{stub.url}/chat/completions", json=stream_body()) as response:
        started = time.monotonic()
        await asyncio.wait_for(stub.stop(), T)
        assert time.monotonic() - started < 3
        with pytest.raises(httpx.RemoteProtocolError):  # dropped like a killed server, no [DONE]
            await asyncio.wait_for(response.aread(), T)


# -- misbehaviours on the wire -----------------------------------------------------------


async def test_refuse_and_swap_back(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="refuse")) as stub:
        port = stub.port
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{stub.url}/models")
        await stub.set_behaviour(OpenAiBehaviour())
        assert stub.port == port and stub.listening
        assert (await http.get(f"{stub.url}/models")).status_code == 200
        await stub.set_behaviour(OpenAiBehaviour(misbehave="refuse"))
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{stub.url}/models")


async def test_starting_refuses_then_comes_up(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="starting", starting_s=0.3)) as stub:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{stub.port}/health")
        deadline = time.monotonic() + T
        while not stub.listening:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert (await http.get(f"http://127.0.0.1:{stub.port}/health")).status_code == 200


async def test_hang_accepts_and_never_answers(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="hang")) as stub:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{stub.url}/chat/completions", json=stream_body(), timeout=0.3)
        assert len(stub.requests) == 1  # the request did arrive
        assert await stub.wait_for_disconnects(1, timeout=2.0)
        started = time.monotonic()
        pending = asyncio.create_task(http.get(f"http://127.0.0.1:{stub.port}/health", timeout=T))
        await asyncio.sleep(0.1)
    assert time.monotonic() - started < 3  # stop() released the hanging handler
    (outcome,) = await asyncio.wait_for(asyncio.gather(pending, return_exceptions=True), T)
    assert isinstance(outcome, httpx.HTTPError) or outcome.status_code != 200


async def test_error_500(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="error_500")) as stub:
        response = await http.post(f"{stub.url}/chat/completions", json=stream_body())
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "InternalServerError"


@pytest.mark.parametrize("style", ["vllm", "llama_cpp"])
async def test_error_midstream(http: httpx.AsyncClient, style: str) -> None:
    behaviour = OpenAiBehaviour(style=style, misbehave="error_midstream", first_token_delay_s=0, tokens_per_s=0)
    async with OpenAiStub(behaviour=behaviour) as stub:
        response, data = await raw_stream(http, stub.url, stream_body())
    assert response.status_code == 200
    chunks = payloads(data, b"\r\n\r\n" if style == "llama_cpp" else b"\n\n")
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if isinstance(c, dict) and "choices" in c]
    assert [c for c in contents if c] == tokenize(behaviour.default_answer)[:2]
    assert chunks[-2] == {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}
    assert chunks[-1] == "[DONE]"


async def test_cut_drops_the_connection(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(misbehave="cut", first_token_delay_s=0, tokens_per_s=0)
    async with OpenAiStub(behaviour=behaviour) as stub:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("POST", f"{stub.url}/chat/completions", json=stream_body()) as response:
                async for part in response.aiter_bytes():
                    received += part
    assert "你".encode() in received and b"[DONE]" not in received


async def test_garbage_and_truncate(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="garbage", tokens_per_s=0)) as stub:
        _, garbage = await raw_stream(http, stub.url, stream_body())
        stub.behaviour = OpenAiBehaviour(misbehave="truncate", tokens_per_s=0)
        _, truncated = await raw_stream(http, stub.url, stream_body())
    assert b"data: this is not JSON {\n\n" in garbage
    chunks = payloads(truncated)
    assert chunks[-1] == "[DONE]"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len(chunks) == 4  # role chunk, 2 content chunks, [DONE]
