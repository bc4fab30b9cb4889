"""The OpenAI-compatible stand-in's streams: a chat completion as vLLM and as llama-cpp-python send
it (event framing, pacing, pings), raw scripted bytes, and the mid-stream misbehaviours."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from daemon.tools.stubs.openai_behaviour import OpenAiBehaviour, content_text
from daemon.tools.stubs.tokens import tokenize


@dataclass
class Plan:
    """What one chat completion will send."""

    model: str
    tokens: list[str]
    finish_reason: str
    stop_reason: str | None
    prompt_tokens: int
    include_usage: bool

    @property
    def usage(self) -> dict[str, int]:
        completion = len(self.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


class Ctl:
    """Per-request handle: lets stop() and llama.cpp preemption interrupt a waiting handler."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason: str | None = None

    def interrupt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()

    async def sleep_until(self, when: float) -> bool:
        """Sleep until loop time ``when``; False if interrupted first."""
        if self.event.is_set():
            return False
        delay = when - asyncio.get_running_loop().time()
        if delay <= 0:
            return True
        try:
            await asyncio.wait_for(self.event.wait(), delay)
        except TimeoutError:
            return True
        return False


class StubCut(Exception):
    """Raised inside a stream on purpose: uvicorn then drops the connection mid-body."""


def plan_for(b: OpenAiBehaviour, body: dict[str, Any], model: str) -> Plan:
    """What the answer to a valid chat request will be: its tokens, cut at a stop string or the token limit."""
    answer = b.answer_for(body["messages"])
    if b.misbehave == "flood":
        answer = (answer * (b.flood_chars // max(len(answer), 1) + 1))[: b.flood_chars]
    stops = body.get("stop") or []
    if isinstance(stops, str):
        stops = [stops]
    stop_reason: str | None = None
    cut_at = len(answer)
    for stop in stops:
        index = answer.find(stop) if stop else -1
        if 0 <= index < cut_at:
            cut_at, stop_reason = index, stop
    tokens = tokenize(answer[:cut_at])
    finish = "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and len(tokens) > limit and b.misbehave != "flood":
        tokens, finish, stop_reason = tokens[:limit], "length", None
    prompt_tokens = sum(len(tokenize(content_text(m.get("content")))) + 4 for m in body["messages"])
    options = body.get("stream_options") or {}
    return Plan(
        model=model,
        tokens=tokens,
        finish_reason=finish,
        stop_reason=stop_reason,
        prompt_tokens=prompt_tokens,
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


async def raw_events(b: OpenAiBehaviour, ctl: Ctl) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    for i, chunk in enumerate(b.raw_chunks or []):
        if i and not await ctl.sleep_until(loop.time() + b.raw_chunk_delay_s):
            return
        yield chunk


def paced_tokens(b: OpenAiBehaviour, plan: Plan, first: float) -> tuple[list[tuple[float, str]], int | None]:
    """The tokens sent before a mid-stream misbehaviour strikes, each with the loop time it is due
    (``first``, then one every 1/tokens_per_s), and the index it strikes at (None: it does not)."""
    strike = strike_at(b, len(plan.tokens))
    interval = 1.0 / b.tokens_per_s if b.tokens_per_s > 0 and b.misbehave != "flood" else 0.0
    return [(first + i * interval, token) for i, token in enumerate(plan.tokens[:strike])], strike


async def vllm_events(b: OpenAiBehaviour, plan: Plan, ctl: Ctl) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:16]}", int(time.time())

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"

    def choice(delta: dict[str, Any], final: bool = False) -> dict[str, Any]:
        c: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        if final:
            c["finish_reason"] = plan.finish_reason
            c["stop_reason"] = plan.stop_reason
        return c

    first = loop.time() + b.first_token_delay_s
    if not await ctl.sleep_until(first):
        return
    yield event([choice({"role": "assistant", "content": ""})])
    due, strike = paced_tokens(b, plan, first)
    n = len(plan.tokens)
    for i, (when, token) in enumerate(due):
        if i and not await ctl.sleep_until(when):
            return
        yield event([choice({"content": token}, final=(i == n - 1 and strike is None))])
    if strike is not None:
        async with contextlib.aclosing(misbehave_midstream(b, ctl)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    if n == 0:
        yield event([choice({"content": ""}, final=True)])
    if plan.include_usage:
        yield event([], usage=plan.usage)
    yield b"data: [DONE]\n\n"


async def llama_events(b: OpenAiBehaviour, plan: Plan, ctl: Ctl) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    cid, created = f"chatcmpl-{uuid.uuid4()}", int(time.time())
    last_sent = loop.time()

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        nonlocal last_sent
        last_sent = loop.time()
        obj = {
            "id": cid,
            "model": plan.model,
            "created": created,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"

    async def pause(until: float) -> AsyncGenerator[bytes, None]:
        """Wait until ``until``, with a ping comment whenever the stream was quiet too long; if a
        new request preempts the stream meanwhile, end it with [DONE] as llama.cpp does."""
        nonlocal last_sent
        while True:
            ping_at = last_sent + b.ping_interval_s
            if ping_at >= until:
                await ctl.sleep_until(until)
                break
            if not await ctl.sleep_until(ping_at):
                break
            last_sent = loop.time()
            yield f": ping - {time.strftime('%Y-%m-%d %H:%M:%S')}.000000\r\n\r\n".encode()
        if ctl.event.is_set() and ctl.reason == "preempted":
            yield b"data: [DONE]\r\n\r\n"

    first = loop.time() + b.first_token_delay_s
    async with contextlib.aclosing(pause(first)) as pings:
        async for ping in pings:
            yield ping
    if ctl.event.is_set():
        return
    yield event({"role": "assistant"})
    due, strike = paced_tokens(b, plan, first)
    for i, (when, token) in enumerate(due):
        if i:
            async with contextlib.aclosing(pause(when)) as pings:
                async for ping in pings:
                    yield ping
            if ctl.event.is_set():
                return
        yield event({"content": token})
    if strike is not None:
        async with contextlib.aclosing(misbehave_midstream(b, ctl, crlf=True)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    yield event({"content": ""})
    yield event({}, finish=plan.finish_reason)
    yield b"data: [DONE]\r\n\r\n"


def strike_at(b: OpenAiBehaviour, n_tokens: int) -> int | None:
    """Index of the token before which a mid-stream misbehaviour strikes (None: it does not)."""
    if b.misbehave in ("error_midstream", "cut", "garbage", "truncate"):
        return min(b.misbehave_after_chunks, n_tokens)
    return None


async def misbehave_midstream(b: OpenAiBehaviour, ctl: Ctl, *, crlf: bool = False) -> AsyncGenerator[bytes, None]:
    end = b"\r\n\r\n" if crlf else b"\n\n"
    if b.misbehave == "error_midstream":
        info: dict[str, Any] = {"message": "boom", "type": "InternalServerError", "code": 500}
        if b.error_shape == "old":
            info = {"object": "error", **info, "param": None}
        yield b"data: " + json.dumps({"error": info}, separators=(",", ":")).encode() + end
        yield b"data: [DONE]" + end
    elif b.misbehave == "garbage":
        yield b"data: this is not JSON {" + end
        yield b"data: [DONE]" + end
    elif b.misbehave == "truncate":
        yield b"data: [DONE]" + end
    elif b.misbehave == "cut":
        # Let the chunks already written leave before the connection drops.
        await ctl.sleep_until(asyncio.get_running_loop().time() + 0.02)
        raise StubCut("misbehave=cut: dropping the connection mid-stream")


async def ping_only_events(b: OpenAiBehaviour, ctl: Ctl) -> AsyncGenerator[bytes, None]:
    """misbehave="ping_only": keep the connection alive with comments and never send an event."""
    loop = asyncio.get_running_loop()
    end = b"\r\n\r\n" if b.style == "llama_cpp" else b"\n\n"
    while await ctl.sleep_until(loop.time() + b.ping_interval_s):
        yield b": ping - " + time.strftime("%Y-%m-%d %H:%M:%S").encode() + end


async def trickled(b: OpenAiBehaviour, events: AsyncGenerator[bytes, None], ctl: Ctl) -> AsyncGenerator[bytes, None]:
    """misbehave="trickle": the bytes of ``events``, one at a time, ``trickle_interval_s`` apart."""
    loop = asyncio.get_running_loop()
    async with contextlib.aclosing(events) as chunks:
        async for chunk in chunks:
            for i in range(len(chunk)):
                if not await ctl.sleep_until(loop.time() + b.trickle_interval_s):
                    return
                yield chunk[i : i + 1]
