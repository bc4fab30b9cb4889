"""The stand-ins in a process of their own (the latency benchmark's): URLs, records, errors."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from daemon.clients.tts import build_http_request
from daemon.tools.bench.stub_process import StubProcess, StubProcessError


async def test_the_stand_ins_serve_from_their_own_process_and_report_their_synthesis() -> None:
    async with StubProcess() as stubs:
        assert stubs.urls.asr.startswith("ws://127.0.0.1:")
        assert stubs.urls.llm.startswith("http://127.0.0.1:") and stubs.urls.llm.endswith("/v1")
        assert await stubs.synth_log() == []
        async with httpx.AsyncClient() as http:
            models = await asyncio.wait_for(http.get(stubs.urls.llm + "/models"), 10)
            assert models.status_code == 200
            response = await asyncio.wait_for(http.post(stubs.urls.tts, json=build_http_request("Hello.", 0)), 20)
            assert response.status_code == 200 and response.content
        log = await stubs.synth_log()
        assert [sentence for sentence, _ in log] == ["Hello."]
        assert 0 < log[0][1] < 10
        assert stubs.exitcode is None  # running
    assert stubs.exitcode == 0


async def test_a_client_that_leaves_a_stream_is_timed_across_the_processes() -> None:
    """The barge-in benchmark's cancel propagation: the child's record, on the parent's clock."""
    body = {"model": "moss", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    async with StubProcess() as stubs:
        assert await stubs.disconnect_times() == ([], [])
        async with (
            httpx.AsyncClient() as http,
            http.stream("POST", stubs.urls.llm + "/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            await asyncio.wait_for(anext(response.aiter_bytes()), 10)
            left_at = time.monotonic()
        for _ in range(200):  # the child notices on its own loop: ask until it has
            llm_closed, tts_closed = await stubs.disconnect_times()
            if llm_closed:
                break
            await asyncio.sleep(0.05)
        assert len(llm_closed) == 1 and tts_closed == []
        assert left_at <= llm_closed[0] < left_at + 10


async def test_a_stand_in_that_cannot_start_is_a_clear_error() -> None:
    with pytest.raises(StubProcessError, match="protocol"):
        async with StubProcess(tts_protocol="carrier-pigeon"):
            pass
