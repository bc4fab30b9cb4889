"""The stand-ins' fault-matrix misbehaviours (trickle, ping_only, endless, flood, down) over real
connections, and the run-time switch that flips them (in-process and in the stand-ins' own process)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from daemon.__main__ import build_parser
from daemon.clients.asr import build_config_message
from daemon.clients.tts import build_http_request
from daemon.config import AsrSettings
from daemon.tools.bench.stub_process import StubProcess, StubProcessError
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.openai import OpenAiBehaviour, OpenAiStub
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour, PaddleSpeechStub
from daemon.tools.stubs.runner import run_stubs
from daemon.tools.stubs.switch import StubSwitch, SwitchServer
from tests.log_watch import watch_logs

CHAT = {"model": "moss", "stream": True, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
PCM_0_1_S = bytes(range(256)) * 18 + bytes(192)  # 4800 bytes: 0.1 s at 24 kHz


async def _chat_chunks(stub: OpenAiStub, count: int) -> list[bytes]:
    """The first ``count`` body chunks of a streamed chat completion."""
    chunks: list[bytes] = []
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("POST", stub.url + "/chat/completions", json=CHAT) as response,
    ):
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            if len(chunks) == count:
                break
    return chunks


async def test_llm_trickle_sends_the_stream_one_byte_at_a_time() -> None:
    behaviour = OpenAiBehaviour(misbehave="trickle", trickle_interval_s=0.001, first_token_delay_s=0)
    async with OpenAiStub(behaviour=behaviour) as stub:
        chunks = await _chat_chunks(stub, 40)
    assert all(len(chunk) == 1 for chunk in chunks)
    assert b"".join(chunks).startswith(b"data: {")


async def test_llm_ping_only_sends_nothing_but_comments() -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="ping_only", ping_interval_s=0.01)) as stub:
        chunks = await _chat_chunks(stub, 5)
    events = [e for e in b"".join(chunks).split(b"\n\n") if e]
    assert len(events) >= 4 and all(e.startswith(b": ping - ") for e in events)


async def test_llm_flood_ignores_max_tokens_and_sends_an_enormous_answer() -> None:
    behaviour = OpenAiBehaviour(misbehave="flood", flood_chars=20_000, default_answer="Blah. ")
    async with OpenAiStub(behaviour=behaviour) as stub, httpx.AsyncClient(timeout=30) as http:
        response = await http.post(stub.url + "/chat/completions", json=CHAT)
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in response.text.split("\n\n")
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    assert len(text) == 20_000 and response.text.endswith("data: [DONE]\n\n")


async def test_tts_http_trickle_endless_and_flood() -> None:
    request = build_http_request("Hello.", 0)
    async with (
        PaddleSpeechStub(behaviour=PaddleSpeechBehaviour(pcm_override=PCM_0_1_S)) as stub,
        httpx.AsyncClient(timeout=10) as http,
    ):
        stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM_0_1_S, misbehave="trickle", trickle_interval_s=1e-3)
        async with http.stream("POST", stub.url, json=request) as response:
            pieces = []
            async for piece in response.aiter_raw():
                pieces.append(piece)
                if len(pieces) == 20:
                    break
        assert all(len(p) == 1 for p in pieces)
        assert base64.b64encode(PCM_0_1_S).startswith(b"".join(pieces))

        stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM_0_1_S, misbehave="flood", flood_audio_s=1.0)
        flood = await http.post(stub.url, json=request)
        seconds = len(base64.b64decode(flood.content)) / 48000
        assert 1.0 <= seconds < 1.15  # the 0.1 s clause over and over, to 1 s, then a normal end

        # endless: real-time pacing, so a few tenths of a second bring a few clauses, and more come
        stub.behaviour = PaddleSpeechBehaviour(pcm_override=PCM_0_1_S, misbehave="endless")
        async with http.stream("POST", stub.url, json=request) as response:
            received = 0
            async for piece in response.aiter_raw():
                received += len(piece)
                if received > 3 * len(base64.b64encode(PCM_0_1_S)):
                    break
        assert received > 3 * len(base64.b64encode(PCM_0_1_S))


async def test_tts_websocket_trickle_sends_three_bytes_at_a_time() -> None:
    # Not faster: uvicorn's websocket answers a close late when a send follows it within a millisecond.
    behaviour = PaddleSpeechBehaviour(misbehave="trickle", trickle_interval_s=0.05)
    async with PaddleSpeechStub(behaviour=behaviour, protocol="websocket") as stub, connect(stub.url) as ws:
        await ws.send(json.dumps({"task": "tts", "signal": "start"}))
        assert json.loads(await ws.recv())["status"] == 0
        await ws.send(json.dumps({"text": "Hello.", "spk_id": 0}))
        messages = [json.loads(await ws.recv()) for _ in range(5)]
    assert all(m["status"] == 1 and len(base64.b64decode(m["audio"])) == 3 for m in messages)


async def _asr_results(stub: FunAsrStub, count: int, *, frames: int = 3) -> list[dict[str, Any]]:
    """Configuration, ``frames`` of audio, the end marker; then the first ``count`` results."""
    settings = AsrSettings(url=stub.url)
    results: list[dict[str, Any]] = []
    async with connect(stub.url, subprotocols=["binary"], max_size=2**24) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps(build_config_message(settings)))
        for _ in range(frames):
            await ws.send(bytes(settings.frame_bytes))
        await ws.send(json.dumps({"is_speaking": False}))
        while len(results) < count:
            results.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    return results


async def test_asr_trickle_and_flood() -> None:
    behaviour = FunAsrBehaviour(transcript_override="hi", misbehave="trickle", trickle_interval_s=0.001)
    async with FunAsrStub(behaviour=behaviour) as stub:
        trickle = await _asr_results(stub, 5)
        assert [r["text"] for r in trickle] == ["a"] * 5
        assert not any(r["mode"] == "2pass-offline" for r in trickle)

        stub.behaviour = FunAsrBehaviour(transcript_override="hi", misbehave="flood")
        flood = await _asr_results(stub, 50, frames=6)
    lengths = [len(r["text"]) for r in flood]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0]  # ever longer
    assert not any(r["is_final"] for r in flood)


def _refused(url: str) -> bool:
    port = httpx.URL(url.replace("ws://", "http://")).port
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_the_switch_takes_each_stand_in_down_and_back_over_http() -> None:
    asr = FunAsrStub(behaviour=FunAsrBehaviour(transcript_override="hi"))
    llm, tts = OpenAiStub(), PaddleSpeechStub()
    async with asr, llm, tts, SwitchServer(StubSwitch(asr, llm, tts)) as server, httpx.AsyncClient(timeout=10) as http:
        for service, stub in (("asr", asr), ("llm", llm), ("tts", tts)):
            answer = await http.post(server.url, json={"service": service, "misbehave": "down"})
            assert answer.status_code == 200 and answer.json()[service] == "down"
            assert _refused(stub.url)
            answer = await http.post(server.url, json={"service": service, "misbehave": None})
            assert answer.json() == {"asr": None, "llm": None, "tts": None}
            assert not _refused(stub.url)
        answer = await http.post(server.url, json={"service": "llm", "misbehave": "cut"})
        assert answer.json()["llm"] == "cut" and llm.behaviour.misbehave == "cut"
        assert (await http.get(server.url)).json() == {"asr": None, "llm": "cut", "tts": None}
        for bad in ({"service": "tts", "misbehave": "ping_only"}, {"service": "gpu"}, "nope"):
            answer = await http.post(server.url, content=json.dumps(bad))
            assert answer.status_code == 400 and answer.json()["error"]
        assert (await http.post(server.url, content=b"{")).status_code == 400


async def test_a_stand_in_in_its_own_process_is_told_to_misbehave() -> None:
    async with StubProcess() as stubs, httpx.AsyncClient(timeout=10) as http:
        assert await stubs.misbehave("llm", "error_500") == {"asr": None, "llm": "error_500", "tts": None}
        response = await http.post(stubs.urls.llm + "/chat/completions", json=CHAT)
        assert response.status_code == 500
        switched = await http.post(stubs.urls.control, json={"service": "llm", "misbehave": None})
        assert switched.json()["llm"] is None
        assert (await http.post(stubs.urls.llm + "/chat/completions", json=CHAT)).status_code == 200
        with pytest.raises(StubProcessError, match="cannot 'flap'"):
            await stubs.misbehave("tts", "flap")


async def test_moss_voice_stubs_serves_the_switch_on_its_control_port() -> None:
    ports = ("--asr-port", "0", "--llm-port", "0", "--tts-port", "0", "--control-port", "0")
    args = build_parser().parse_args(["stubs", *ports])
    stop = asyncio.Event()
    with watch_logs() as logs:
        running = asyncio.create_task(run_stubs(args, stop))
        ready = await asyncio.wait_for(logs.wait_for("stubs_ready"), 30)
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(ready["misbehave"], json={"service": "tts", "misbehave": "error_500"})
            assert answer.json()["tts"] == "error_500"
            assert (await http.post(ready["tts"], json=build_http_request("Hi.", 0))).status_code == 500
        stop.set()
        assert await asyncio.wait_for(running, 30) == 0
