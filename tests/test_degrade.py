"""Degrading well, through the daemon: a dead TTS does not hold up start-up nor each clause, the
next LLM endpoint takes over, and /status, STATUS= and the metrics show a service down and back."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from daemon.app import EXIT_ANSWERED, EXIT_FAILED, App
from daemon.clients.guarded import ServiceGuard
from daemon.config import (
    AsrSettings,
    AudioSettings,
    ControlSettings,
    LlmSettings,
    Settings,
    TtsSettings,
    VadSettings,
    WakeSettings,
)
from daemon.control.metrics import Metrics
from daemon.event_bus import EventBus
from daemon.health import Health
from daemon.systemd_notify import Notifier
from daemon.systemd_status import StatusLine
from daemon.tools.stubs.funasr import make_question_wav
from daemon.tools.stubs.runner import demo_llm_behaviour, start_stubs
from states.model import Turn
from tests.test_guarded import Gate

pytestmark = pytest.mark.slow
RUN_TIMEOUT = 60
ANSWERS = {"weather": "It is sunny today."}


class BlackHole:
    """A TCP server that accepts and never answers; it keeps the first line of each request."""

    def __init__(self) -> None:
        self.request_lines: list[str] = []
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.append(writer)
        line = await reader.readline()
        self.request_lines.append(line.decode("latin-1").strip())

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[int]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        try:
            yield self._server.sockets[0].getsockname()[1]
        finally:
            for writer in self._held:
                writer.transport.abort()
            self._server.close()
            await self._server.wait_closed()


def free_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings(asr: str, llm: tuple[str, ...], tts: str, qwav: Path, out: Path, **tts_options: float) -> Settings:
    return Settings(
        asr=AsrSettings(url=asr, final_timeout_s=1.0),
        llm=LlmSettings(url=llm, first_token_timeout_s=5, read_timeout_s=5),
        tts=TtsSettings(url=tts, **tts_options),  # type: ignore[arg-type]
        audio=AudioSettings(input=f"wav:{qwav}", output=f"wav:{out}"),
        vad=VadSettings(end_silence_ms=500, no_speech_timeout_s=6),
        wake=WakeSettings(follow_up_s=0),
    )


def named(logs: list[dict], event: str) -> list[dict]:
    return [e for e in logs if e["event"] == event]


async def test_a_tts_that_never_answers_holds_up_neither_start_up_nor_each_clause(tmp_path: Path) -> None:
    """And /status and /metrics show it down."""
    qwav = make_question_wav("what is the weather like today", tmp_path / "q.wav")
    hole = BlackHole()
    async with AsyncExitStack() as stack:
        asr, llm, _ = await start_stubs(stack, llm=demo_llm_behaviour(answers=ANSWERS))
        port = await stack.enter_async_context(hole.serve())
        tts_url = f"http://127.0.0.1:{port}/paddlespeech/tts/streaming"
        # Timeouts of an hour: only the probe's bound can end the wait.
        hour = {"read_timeout_s": 3600.0, "connect_timeout_s": 3600.0}
        s = settings(asr.url, (llm.url,), tts_url, qwav, tmp_path / "r.wav", **hour)
        sock = tmp_path / "control.sock"
        s = dataclasses.replace(s, control=ControlSettings(listen=f"unix:{sock}"))
        seen: dict[str, object] = {}

        async def look(_: Turn) -> None:
            transport = httpx.AsyncHTTPTransport(uds=str(sock))
            async with httpx.AsyncClient(transport=transport, base_url="http://moss-voice") as http:
                seen["status"] = (await http.get("/status")).json()
                seen["metrics"] = (await http.get("/metrics")).text

        app = App(s, once=True, probe_s=2.0, on_turn_end=look)
        with capture_logs() as logs:
            code = await asyncio.wait_for(app.run(), RUN_TIMEOUT)
    assert code == EXIT_FAILED
    (down,) = [e for e in named(logs, "service_down") if e["service"] == "tts"]
    assert "no answer to the probe within 2 s" in down["error"]
    (ready,) = named(logs, "daemon_ready")
    assert ready["services"] == {"asr": "up", "llm": "up", "tts": "down"}
    assert ready["output_rate"] == 24000  # the fallback, said so:
    assert named(logs, "tts_samplerate_unavailable")
    (failed,) = named(logs, "turn_failed")
    assert failed["service"] == "tts" and failed["reason"].startswith("tts is down since ")
    assert not [line for line in hole.request_lines if line.startswith("POST")]  # no clause waited on it
    tts = seen["status"]["health"]["tts"]  # type: ignore[index]
    assert tts["ok"] is False and tts["down_since"] is not None
    assert tts["last_error"].startswith("tts is down since")  # the turn that found it down
    (endpoint,) = tts["endpoints"]
    assert endpoint["url"] == tts_url and endpoint["up"] is False and endpoint["down_since"] == tts["down_since"]
    assert endpoint["last_error"].endswith("no answer to the probe within 2 s")
    assert seen["status"]["health"]["llm"]["ok"] is True  # type: ignore[index]
    assert 'moss_voice_service_up{service="tts"} 0.0' in str(seen["metrics"])
    assert 'moss_voice_service_up{service="llm"} 1.0' in str(seen["metrics"])


async def test_the_second_llm_endpoint_answers_when_the_first_is_refused(tmp_path: Path) -> None:
    qwav = make_question_wav("what is the weather like today", tmp_path / "q.wav")
    refused = f"http://127.0.0.1:{free_port()}/v1"
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(stack, llm=demo_llm_behaviour(answers=ANSWERS))
        s = settings(asr.url, (refused, llm.url), tts.url, qwav, tmp_path / "r.wav")
        app = App(s, once=True, probe_s=2.0)
        with capture_logs() as logs:
            code = await asyncio.wait_for(app.run(), RUN_TIMEOUT)
    assert code == EXIT_ANSWERED
    (finished,) = named(logs, "turn_finished")
    assert finished["outcome"] == "answered" and finished["reply"]
    assert [r.path for r in llm.requests].count("/v1/chat/completions") == 1
    (ready,) = named(logs, "daemon_ready")
    assert ready["services"]["llm"] == "up" and ready["llm"] == [refused, llm.url]
    assert [e["url"] for e in named(logs, "endpoint_down")] == [refused]
    assert not named(logs, "service_down")


async def test_status_the_status_line_and_the_metrics_show_down_then_up() -> None:
    bus, gate, answering = EventBus(), Gate(), asyncio.Event()

    async def probe(i: int) -> None:
        if not answering.is_set():
            raise ConnectionRefusedError("refused")

    guard = ServiceGuard("llm", ["http://gpu1/v1", "http://gpu2/v1"], probe, events=bus, sleep=gate.sleep)
    health = Health(guards={"llm": guard})
    for name in ("asr", "llm", "tts"):
        health.probed(name, True)
    line, metrics = StatusLine(Notifier({}), health), Metrics()
    seen: list[str] = []
    changed = asyncio.Event()

    def observe(event: object) -> None:
        health.observe(event)  # type: ignore[arg-type]
        line.observe(event)  # type: ignore[arg-type]
        metrics.observe(event)  # type: ignore[arg-type]
        seen.append(event.name)  # type: ignore[attr-defined]
        changed.set()

    async def until(name: str) -> None:
        async with asyncio.timeout(10):
            while name not in seen:
                changed.clear()
                await changed.wait()

    follower = asyncio.create_task(bus.follow(observe))
    guard.start()
    guard.failed(0, ConnectionRefusedError("refused"))
    await until("endpoint_down")
    assert line.text() == "starting | asr up, llm up 1/2, tts up"
    guard.failed(1, ConnectionRefusedError("connection refused by gpu2"))
    await until("service_down")
    status = health.snapshot()["llm"]
    assert status["ok"] is False and "gpu2" in status["last_error"] and status["down_since"] is not None
    assert [e["up"] for e in status["endpoints"]] == [False, False]
    assert line.text() == "starting | asr up, llm down, tts up"
    text = metrics.render().decode()
    assert 'moss_voice_service_up{service="llm"} 0.0' in text
    assert 'moss_voice_service_downs_total{service="llm"} 1.0' in text
    assert 'moss_voice_endpoint_up{service="llm",url="http://gpu2/v1"} 0.0' in text
    answering.set()
    gate.open()
    await until("service_up")
    status = health.snapshot()["llm"]
    assert status["ok"] is True and status["down_since"] is None
    assert line.text().startswith("starting | asr up, llm up")
    assert 'moss_voice_service_up{service="llm"} 1.0' in metrics.render().decode()
    await guard.aclose()
    follower.cancel()


async def test_a_dead_llm_is_said_at_once_and_apologised_for(tmp_path: Path) -> None:
    qwav = make_question_wav("what is the weather like today", tmp_path / "q.wav")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with AsyncExitStack() as stack:
        asr, _, tts = await start_stubs(stack)
        app = App(settings(asr.url, (dead,), tts.url, qwav, tmp_path / "r.wav"), once=True, probe_s=2.0)
        with capture_logs() as logs:
            code = await asyncio.wait_for(app.run(), RUN_TIMEOUT)
    assert code == EXIT_FAILED
    (failed,) = named(logs, "turn_failed")
    assert failed["service"] == "llm" and failed["reason"].startswith("llm is down since ")
    assert "retrying in the background" in failed["reason"]
    assert named(logs, "failure_announced")[0]["sound"] == "apology"  # the TTS works: the robot says so
    assert len(named(logs, "service_down")) == 1
