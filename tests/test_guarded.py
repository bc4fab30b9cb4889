"""Services marked down, failover between endpoints, background probes: daemon/clients/guarded.py,
against the loopback stand-ins. Probes are driven by an injected sleep, never by waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from daemon.clients.asr import FunAsrClient
from daemon.clients.backoff import Backoff
from daemon.clients.guarded import GuardedAsr, GuardedLlm, GuardedTts, ServiceGuard, marks_down
from daemon.clients.llm import OpenAiCompatibleLlm
from daemon.clients.tts import make_tts
from daemon.config import AsrSettings, LlmSettings, TtsSettings
from daemon.errors import AsrDown, LlmAuthError, LlmDown, LlmError, ServiceDown, TtsDown, TtsError
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.openai import OpenAiBehaviour, OpenAiStub
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour, PaddleSpeechStub
from states.events import ChatMessage
from tests.log_watch import watch_logs

T = 10.0
QUESTION = [ChatMessage("user", "你好")]
FAST = OpenAiBehaviour(first_token_delay_s=0.01, tokens_per_s=0)


class Gate:
    """An injected sleep: each call waits until the test lets one probe through (``open``)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._passes: asyncio.Queue[None] = asyncio.Queue()
        self._slept = asyncio.Event()

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self._slept.set()
        await self._passes.get()

    async def wait_sleeping(self, count: int) -> None:
        """Until the prober has begun its ``count``-th wait."""
        while len(self.delays) < count:
            self._slept.clear()
            await self._slept.wait()

    def open(self) -> None:
        self._passes.put_nowait(None)


class Events:
    """An EventSink that a test can await."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def emit(self, event: str, /, **fields: object) -> None:
        self.seen.append((event, dict(fields)))
        self._changed.set()

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]

    async def wait_for(self, name: str) -> dict[str, Any]:
        while True:
            for event, fields in self.seen:
                if event == name:
                    return fields
            self._changed.clear()
            await self._changed.wait()


def chats(stub: OpenAiStub) -> int:
    return sum(1 for r in stub.requests if r.path == "/v1/chat/completions")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def guarded_llm(
    http: httpx.AsyncClient, urls: list[str], gate: Gate, events: Events | None = None, *, probes: bool = True
) -> tuple[GuardedLlm, ServiceGuard]:
    """``probes=False``: every probe fails (the endpoints stay down whatever they do)."""
    settings = LlmSettings(url=tuple(urls), connect_timeout_s=2.0, first_token_timeout_s=5.0, read_timeout_s=5.0)
    clients = [OpenAiCompatibleLlm(settings.at(url), http) for url in urls]

    async def probe(i: int) -> None:
        if not probes:
            raise ConnectionRefusedError("probe refused")
        await clients[i].wait_ready(max_wait_s=2.0)

    guard = ServiceGuard("llm", urls, probe, events=events, sleep=gate.sleep, probe_timeout_s=3.0)
    guard.start()
    return GuardedLlm(guard, clients), guard


async def answer(llm: GuardedLlm) -> str:
    async with asyncio.timeout(T), llm.stream_chat(QUESTION) as stream:
        return "".join([delta async for delta in stream])


def test_the_backoff_doubles_to_its_cap_with_jitter() -> None:
    exact = list(zip(range(8), Backoff(jitter=0).delays(), strict=False))
    assert [d for _, d in exact] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    low = [d for _, d in zip(range(8), Backoff().delays(lambda: 0.0), strict=False)]
    high = [d for _, d in zip(range(8), Backoff().delays(lambda: 0.999999), strict=False)]
    assert low[0] == pytest.approx(0.4) and low[-1] == pytest.approx(24.0)
    assert high[0] == pytest.approx(0.6) and high[-1] == pytest.approx(36.0)
    with pytest.raises(ValueError, match="first_s"):
        Backoff(first_s=0)


def test_what_marks_an_endpoint_down() -> None:
    assert marks_down(LlmError("cannot connect to http://x/v1: refused"))
    assert marks_down(LlmError("bad gateway", status=502))
    assert marks_down(TtsError("answered HTTP 500", status=500))
    assert not marks_down(LlmAuthError("wrong key", status=401))
    assert not marks_down(LlmError("top_p out of range", status=400))


async def test_the_next_endpoint_takes_over_when_the_first_is_refused(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=FAST) as first, OpenAiStub(behaviour=FAST) as second:
        await first.set_behaviour(OpenAiBehaviour(misbehave="refuse"))
        events, gate = Events(), Gate()
        llm, guard = guarded_llm(http, [first.url, second.url], gate, events)
        with watch_logs() as logs:
            assert await answer(llm) == FAST.default_answer  # no turn fails
            assert await answer(llm) == FAST.default_answer
        assert [e.up for e in guard.endpoints] == [False, True] and guard.up
        assert chats(second) == 2
        assert events.names() == ["endpoint_down"]  # the service stayed up
        assert [e["event"] for e in logs if e["event"] in ("endpoint_down", "service_down")] == ["endpoint_down"]
        assert "refused" in str(guard.endpoints[0].last_error) or "connect" in str(guard.endpoints[0].last_error)
        await guard.aclose()


async def test_all_down_fails_at_once_without_trying(http: httpx.AsyncClient) -> None:
    broken = OpenAiBehaviour(misbehave="error_500")
    async with OpenAiStub(behaviour=broken) as first, OpenAiStub(behaviour=broken) as second:
        events, gate = Events(), Gate()
        llm, guard = guarded_llm(http, [first.url, second.url], gate, events, probes=False)
        with watch_logs() as logs:
            with pytest.raises(LlmError, match="HTTP 500") as found:  # the turn that finds out: the real error
                await answer(llm)
            assert not isinstance(found.value, ServiceDown)
            assert (chats(first), chats(second)) == (1, 1)
            for _ in range(3):
                with pytest.raises(LlmDown) as down:
                    await answer(llm)
            assert (chats(first), chats(second)) == (1, 1)  # no request went to a known-down endpoint
        message = str(down.value)
        assert message.startswith("llm is down since ") and message.endswith("; retrying in the background")
        assert "(2 endpoints)" in message
        assert "HTTP 500" in message or "probe refused" in message  # the latest failure: a request's or a probe's
        assert down.value.service == "llm"
        assert [e["event"] for e in logs].count("service_down") == 1  # once, not per turn
        assert events.names() == ["endpoint_down", "endpoint_down", "service_down"]
        assert guard.down_since is not None
        await guard.aclose()


async def test_the_prober_marks_the_endpoint_up_when_it_answers_again(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="error_500")) as stub:
        events, gate = Events(), Gate()
        llm, guard = guarded_llm(http, [stub.url], gate, events)
        with watch_logs() as logs:
            with pytest.raises(LlmError):
                await answer(llm)
            with pytest.raises(LlmDown):
                await answer(llm)
            # Still broken for chat and now dead for /health too: the first probe fails, quietly.
            await stub.set_behaviour(OpenAiBehaviour(misbehave="health_503"))
            gate.open()
            async with asyncio.timeout(T):
                await gate.wait_sleeping(2)  # the first probe failed: the prober waits for its second try
            assert not guard.up and guard.endpoints[0].failures >= 2
            stub.behaviour = FAST
            gate.open()
            async with asyncio.timeout(T):
                up = await events.wait_for("service_up")
            assert await answer(llm) == FAST.default_answer
        assert up["url"] == stub.url
        assert gate.delays[1] > gate.delays[0]  # backing off
        names = [e["event"] for e in logs]
        assert names.count("service_down") == 1 and names.count("service_up") == 1
        assert "probe_failed" not in [e["event"] for e in logs if e.get("log_level") != "debug"]
        service_up = next(e for e in logs if e["event"] == "service_up")
        assert service_up["failures"] >= 2
        await guard.aclose()


async def test_tts_fails_over_and_is_down_at_once_when_all_are(http: httpx.AsyncClient) -> None:
    async with (
        PaddleSpeechStub(behaviour=PaddleSpeechBehaviour(misbehave="error_500")) as first,
        PaddleSpeechStub() as second,
    ):
        settings = TtsSettings(url=(first.url, second.url), read_timeout_s=5.0)
        clients = [make_tts(settings.at(url), http) for url in settings.urls]

        async def probe(i: int) -> None:
            await clients[i].sample_rate()

        gate = Gate()
        guard = ServiceGuard("tts", settings.urls, probe, sleep=gate.sleep)
        guard.start()
        tts = GuardedTts(guard, clients)
        async with asyncio.timeout(T), tts.synthesize("你好") as audio:
            pcm = b"".join([chunk async for chunk in audio])
        assert pcm and len(second.requests) == 1 and [e.up for e in guard.endpoints] == [False, True]
        second.behaviour = PaddleSpeechBehaviour(misbehave="error_500")
        with pytest.raises(TtsError, match="HTTP 500"):
            async with asyncio.timeout(T), tts.synthesize("你好"):
                pass
        with pytest.raises(TtsDown, match=r"^tts is down since"):
            await tts.sample_rate()
        await guard.aclose()


async def test_asr_fails_over_and_start_up_probes_every_endpoint() -> None:
    async with FunAsrStub(behaviour=FunAsrBehaviour(misbehave="refuse")) as first, FunAsrStub() as second:
        settings = AsrSettings(url=(first.url, second.url), connect_timeout_s=2.0)
        clients = [FunAsrClient(settings.at(url)) for url in settings.urls]

        async def probe(i: int) -> None:
            session = await clients[i].open_session()
            await session.aclose()

        guard = ServiceGuard("asr", settings.urls, probe, sleep=Gate().sleep)
        await guard.probe_all()
        assert [e.up for e in guard.endpoints] == [False, True]
        asr = GuardedAsr(guard, clients)
        session = await asr.open_session()
        await session.aclose()
        assert len(second.sessions) == 2  # the probe's and ours
        guard.failed(1, RuntimeError("gone"))
        with pytest.raises(AsrDown, match=r"asr is down since .*\(2 endpoints\): gone"):
            await asr.open_session()
        await guard.aclose()


async def test_a_bad_answer_or_a_4xx_fails_its_request_only(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="cut", tokens_per_s=0)) as first, OpenAiStub() as second:
        llm, guard = guarded_llm(http, [first.url, second.url], Gate())
        with pytest.raises(LlmError):  # cut mid-stream: the endpoint had answered
            await answer(llm)
        first.behaviour = OpenAiBehaviour(api_key="not-ours")
        with pytest.raises(LlmAuthError):  # 401: every replica would say the same
            await answer(llm)
        assert [e.up for e in guard.endpoints] == [True, True] and chats(second) == 0
        await guard.aclose()


async def test_a_request_told_down_hurries_the_probe(http: httpx.AsyncClient) -> None:
    async with OpenAiStub(behaviour=OpenAiBehaviour(misbehave="refuse")) as stub:
        events, gate = Events(), Gate()  # the gate never opens: only a request can end a wait
        llm, guard = guarded_llm(http, [stub.url], gate, events)
        with pytest.raises(LlmError):
            await answer(llm)
        await stub.set_behaviour(FAST)
        with pytest.raises(LlmDown):  # at once, untried...
            await answer(llm)
        assert chats(stub) == 0
        async with asyncio.timeout(T):
            await events.wait_for("service_up")  # ...but the probe went at once
        assert await answer(llm) == FAST.default_answer
        await guard.aclose()
