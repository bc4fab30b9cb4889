"""Deadlines per stage and caps on what a server sends (issue 11, "Turns that never end", "Unbounded
input"): servers that keep the connection alive without ever finishing must hit a deadline that
names its stage and its configuration key, not reset a per-read timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from daemon.clients.llm import LlmStream, OpenAiCompatibleLlm
from daemon.config import LlmSettings
from daemon.errors import LlmError, LlmTimeout
from daemon.tools.stubs.openai import OpenAiBehaviour, OpenAiStub
from states.events import ChatMessage

T = 5.0  # generous bound on anything that could hang
QUESTION = [ChatMessage("user", "你好")]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def llm_settings(url: str, **overrides: Any) -> LlmSettings:
    values: dict[str, Any] = {
        "url": url,
        "connect_timeout_s": 2.0,
        "first_token_timeout_s": 5.0,
        "read_timeout_s": 5.0,
        "reply_timeout_s": 5.0,
    }
    return LlmSettings(**{**values, **overrides})


async def llm_collect(llm: OpenAiCompatibleLlm) -> tuple[list[str], LlmStream | None, LlmError | None]:
    """Every delta, the stream, and the LlmError that ended it (None when it ended cleanly)."""
    deltas: list[str] = []
    stream: LlmStream | None = None
    error: LlmError | None = None

    async def run() -> None:
        nonlocal stream, error
        try:
            async with llm.stream_chat(QUESTION) as stream:
                async for delta in stream:
                    deltas.append(delta)
        except LlmError as exc:
            error = exc

    await asyncio.wait_for(run(), T)
    return deltas, stream, error


# -- LLM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["vllm", "llama_cpp"])
async def test_llm_sending_only_pings_hits_the_first_token_deadline(http: httpx.AsyncClient, style: str) -> None:
    behaviour = OpenAiBehaviour(misbehave="ping_only", ping_interval_s=0.02, style=style)
    async with OpenAiStub(behaviour=behaviour) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, first_token_timeout_s=0.5), http)
        deltas, _, error = await llm_collect(llm)
        assert deltas == []
        assert isinstance(error, LlmTimeout)
        assert "first token" in str(error) and "llm.first_token_timeout_s" in str(error)
        assert await stub.wait_for_disconnects(1, timeout=T)  # the client hung up


async def test_llm_trickling_bytes_hits_the_reply_deadline(http: httpx.AsyncClient) -> None:
    behaviour = OpenAiBehaviour(misbehave="trickle", trickle_interval_s=0.002, first_token_delay_s=0)
    async with OpenAiStub(behaviour=behaviour) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, reply_timeout_s=0.8), http)
        deltas, stream, error = await llm_collect(llm)
        assert isinstance(error, LlmTimeout)
        assert "LLM reply" in str(error) and "llm.reply_timeout_s" in str(error)
        assert stream is not None and stream.text == "".join(deltas)  # what came is kept
        assert await stub.wait_for_disconnects(1, timeout=T)


async def test_llm_pings_between_tokens_do_not_reset_the_stall_deadline(http: httpx.AsyncClient) -> None:
    # llama.cpp pings while it is quiet; a token every 5 s with pings in between is a stall.
    behaviour = OpenAiBehaviour(style="llama_cpp", first_token_delay_s=0, tokens_per_s=0.2, ping_interval_s=0.02)
    async with OpenAiStub(behaviour=behaviour) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, read_timeout_s=0.4), http)
        deltas, _, error = await llm_collect(llm)
        assert len(deltas) == 1
        assert isinstance(error, LlmTimeout)
        assert "stalled" in str(error) and "llm.read_timeout_s" in str(error)


async def test_llm_reply_deadline_bounds_a_slow_but_steady_stream(http: httpx.AsyncClient) -> None:
    # Each token comes well within the stall deadline, but the whole answer takes too long.
    behaviour = OpenAiBehaviour(first_token_delay_s=0, tokens_per_s=10, default_answer="一二三四五六七八九十" * 5)
    async with OpenAiStub(behaviour=behaviour) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, read_timeout_s=2.0, reply_timeout_s=0.6), http)
        deltas, _, error = await llm_collect(llm)
        assert 1 <= len(deltas) < 50
        assert isinstance(error, LlmTimeout) and "llm.reply_timeout_s" in str(error)


async def test_llm_hanging_server_names_the_first_token_deadline(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="hang")) as stub:
        llm = OpenAiCompatibleLlm(llm_settings(stub.url, first_token_timeout_s=0.3), http)
        _, _, error = await llm_collect(llm)
        assert isinstance(error, LlmTimeout) and "llm.first_token_timeout_s" in str(error)


def test_llm_defaults_suit_a_talking_robot() -> None:
    s = LlmSettings()
    assert s.connect_timeout_s <= 3 and s.first_token_timeout_s <= 10 and s.read_timeout_s <= 10
    assert s.first_token_timeout_s < s.reply_timeout_s <= 60
