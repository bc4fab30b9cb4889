"""The control API over real connections: loopback TCP and a Unix socket, every route, the token,
the limits, bad requests, the event stream in order, and the metrics."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from daemon.config import ControlSettings
from daemon.control.metrics import Metrics
from daemon.control.port import Busy
from daemon.control.server import Address, ControlServer, control_api
from daemon.errors import AsrError, ControlError, HardwareError
from daemon.event_bus import Event
from tests.fake_control import FakeControl

TOKEN = "s3cret-token"


@dataclass
class Api:
    server: ControlServer
    control: FakeControl
    metrics: Metrics
    client: httpx.AsyncClient


def _client(address: str, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if address.startswith("unix:"):
        transport = httpx.AsyncHTTPTransport(uds=address[5:])
        return httpx.AsyncClient(transport=transport, base_url="http://moss-voice", headers=headers, timeout=10)
    return httpx.AsyncClient(base_url=f"http://{address}", headers=headers, timeout=10)


@pytest.fixture
def socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Short enough for a Unix socket path (108 bytes at most)."""
    return tmp_path_factory.mktemp("s")


Start = Callable[..., Any]


@pytest.fixture
async def start(socket_dir: Path) -> AsyncIterator[Start]:
    """``await start(listen, **settings)`` -> a running Api; all closed at the end of the test."""
    opened: list[Api] = []

    async def _start(
        listen: str, *, token: str | None = None, keepalive_s: float = 15.0, max_sse_clients: int = 16, **kwargs: Any
    ) -> Api:
        settings = ControlSettings(listen=listen, token=token, **kwargs)
        control, metrics = FakeControl(), Metrics()
        server = ControlServer(
            settings, control, metrics=metrics, max_sse_clients=max_sse_clients, keepalive_s=keepalive_s
        )
        await server.start()
        api = Api(server, control, metrics, _client(server.address, token))
        opened.append(api)
        return api

    yield _start
    for api in opened:
        await api.client.aclose()
        await api.server.aclose()


@pytest.fixture(params=["tcp", "unix"])
async def api(request: pytest.FixtureRequest, start: Start, socket_dir: Path) -> Api:
    listen = "127.0.0.1:0" if request.param == "tcp" else f"unix:{socket_dir}/control.sock"
    result: Api = await start(listen)
    return result


# --- every route, over TCP and over a Unix socket ---------------------------------------------


async def test_get_listen_returns_the_recognised_text_as_plain_text(api: Api) -> None:
    api.control.heard = "你好，现在几点"
    response = await api.client.get("/listen")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "你好，现在几点"
    assert api.control.calls == [("listen",)]


async def test_post_display_speaks_the_form_field_and_waits(api: Api) -> None:
    response = await api.client.post("/display", data={"text": "前方有台阶"})
    assert (response.status_code, response.text) == (200, "ok")
    response = await api.client.post("/display", files={"text": (None, "multipart too")})
    assert (response.status_code, response.text) == (200, "ok")
    response = await api.client.post("/display", files={"text": ("t.txt", "文件里的字".encode())})
    assert (response.status_code, response.text) == (200, "ok")
    assert api.control.calls == [
        ("say", "前方有台阶", False, True),
        ("say", "multipart too", False, True),
        ("say", "文件里的字", False, True),
    ]
    response = await api.client.post("/display", files={"text": ("t.bin", b"\xff\xfe")})
    assert response.status_code == 400
    assert "not UTF-8" in response.json()["error"]


async def test_post_wake(api: Api) -> None:
    response = await api.client.post("/wake")
    assert (response.status_code, response.json()) == (202, {"ok": True})
    assert api.control.calls == [("wake",)]


async def test_post_say_queues_or_interrupts(api: Api) -> None:
    response = await api.client.post("/say", json={"text": "hello"})
    assert (response.status_code, response.json()) == (202, {"ok": True})
    response = await api.client.post("/say", json={"text": "stop there", "interrupt": True})
    assert response.status_code == 202
    assert api.control.calls == [("say", "hello", False, False), ("say", "stop there", True, False)]


async def test_post_stop(api: Api) -> None:
    response = await api.client.post("/stop")
    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert api.control.calls == [("stop",)]


async def test_get_status_is_the_controls_status(api: Api) -> None:
    response = await api.client.get("/status")
    assert response.status_code == 200
    assert response.json() == api.control.status()


async def test_get_metrics_counts_the_emitted_events(api: Api) -> None:
    bus = api.control.bus
    task = asyncio.create_task(api.metrics.run(bus))
    await asyncio.sleep(0)  # let it subscribe
    bus.emit("wake", turn_id=1, source="hotword", word="hey_mycroft")
    bus.emit("state_changed", src="idle", dst="listening", trigger="wake", turn_id=1)
    for outcome, first_audio in (("answered", 420), ("answered", 380), ("no_speech", None)):
        bus.emit("turn_finished", turn_id=1, outcome=outcome, first_audio_ms=first_audio, barge_in_ms=None)
    bus.emit("turn_failed", turn_id=2, service="llm", reason="timeout")
    bus.close()
    await task
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples['moss_voice_turns_total{outcome="answered"}'] == 2
    assert samples['moss_voice_turns_total{outcome="no_speech"}'] == 1
    assert samples['moss_voice_turns_total{outcome="failed"}'] == 0
    assert samples['moss_voice_wakes_total{source="hotword"}'] == 1
    assert samples['moss_voice_failures_total{service="llm"}'] == 1
    assert samples["moss_voice_first_audio_seconds_count"] == 2
    assert samples["moss_voice_first_audio_seconds_sum"] == pytest.approx(0.8)
    assert samples['moss_voice_first_audio_seconds_bucket{le="0.5"}'] == 2
    assert samples["moss_voice_barge_in_seconds_count"] == 0
    assert samples['moss_voice_state{state="listening"}'] == 1
    assert samples['moss_voice_state{state="idle"}'] == 0
    # what a soak watches: read at the scrape, on the daemon's loop
    assert samples["moss_voice_asyncio_tasks"] >= 1  # this request's own task at least
    assert samples["moss_voice_open_fds"] >= 3
    assert samples["process_resident_memory_bytes"] > 0


def _samples(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


async def test_events_stream_in_order_as_sse(api: Api) -> None:
    bus = api.control.bus
    async with api.client.stream("GET", "/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.aiter_lines()
        assert await anext(lines) == ": moss-voice events"  # sent at once: the subscription exists
        bus.emit("state_changed", src="idle", dst="listening", trigger="wake", turn_id=7)
        bus.emit("transcript", turn_id=7, text="几点了")
        bus.emit("turn_finished", turn_id=7, outcome="answered", transcript="几点了", reply="三点", first_audio_ms=400)
        events = [await _next_event(lines) for _ in range(3)]
    assert [e["event"] for e in events] == ["state_changed", "transcript", "turn_finished"]
    assert [int(e["id"]) for e in events] == [1, 2, 3]
    data = [json.loads(e["data"]) for e in events]
    assert data[0] == {**data[0], "event": "state_changed", "seq": 1, "dst": "listening", "turn_id": 7}
    assert data[1]["text"] == "几点了"
    assert data[2]["outcome"] == "answered" and data[2]["first_audio_ms"] == 400


async def test_an_event_field_json_cannot_carry_arrives_as_text(api: Api) -> None:
    async with api.client.stream("GET", "/events") as response:
        lines = response.aiter_lines()
        assert await anext(lines) == ": moss-voice events"
        api.control.bus.emit("turn_failed", turn_id=1, service="audio", reason=Path("/dev/snd/pcmC0D0c"))
        event = await _next_event(lines)
    assert json.loads(event["data"])["reason"] == "/dev/snd/pcmC0D0c"


async def _next_event(lines: AsyncIterator[str]) -> dict[str, str]:
    """The fields of the next SSE event, comments skipped."""
    fields: dict[str, str] = {}
    async for line in lines:
        if not line:
            if fields:
                return fields
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        fields[name] = value
    raise AssertionError(f"the stream ended inside an event: {fields}")


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b'["text"]', "JSON object"),
        (b'{"text": 3}', "'text'"),
        (b'{"text": "  "}', "'text'"),
        (b'{"interrupt": true}', "'text'"),
        (b'{"text": "hi", "interrupt": "yes"}', "'interrupt'"),
        (b'{"text": "hi", "loud": true, "voice": "x"}', "['loud', 'voice']"),
    ],
)
async def test_bad_say_bodies_get_400_naming_the_problem(api: Api, body: bytes, needle: str) -> None:
    response = await api.client.post("/say", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("POST /say: ") and needle in error
    assert api.control.calls == []


@pytest.mark.parametrize("form", [{}, {"text": ""}, {"other": "x"}])
async def test_display_without_text_is_400(api: Api, form: dict[str, str]) -> None:
    response = await api.client.post("/display", data=form)
    assert response.status_code == 400
    assert "'text'" in response.json()["error"]
    assert api.control.calls == []


async def test_unknown_route_and_wrong_method_are_json(api: Api) -> None:
    response = await api.client.get("/nope")
    assert (response.status_code, response.json()) == (404, {"error": "GET /nope: no such route"})
    response = await api.client.get("/wake")
    assert response.status_code == 405
    assert response.json()["error"].startswith("GET /wake: method not allowed")


async def test_head_starts_nothing(api: Api) -> None:
    for path in ("/listen", "/status", "/events", "/metrics"):
        assert (await api.client.head(path)).status_code == 405, path
    assert api.control.calls == []


async def test_a_body_over_the_limit_is_413(start: Start) -> None:
    api = await start("127.0.0.1:0", max_body_bytes=100)
    response = await api.client.post("/say", json={"text": "x" * 200})
    assert response.status_code == 413
    assert "100 bytes" in response.json()["error"]
    response = await api.client.post("/display", data={"text": "y" * 200})
    assert response.status_code == 413
    response = await api.client.post("/say", json={"text": "short"})
    assert response.status_code == 202
    assert api.control.calls == [("say", "short", False, False)]


async def test_a_chunked_body_over_the_limit_is_413(start: Start) -> None:
    """No Content-Length: the limit holds while reading."""
    api = await start("127.0.0.1:0", max_body_bytes=100)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        yield b"z" * 300
        yield b'"}'

    response = await api.client.post("/say", content=chunks())
    assert response.status_code == 413
    assert api.control.calls == []


@pytest.mark.parametrize(
    ("fail", "status", "needle"),
    [
        (Busy("shutting down"), 409, "busy"),
        (AsrError("the connection closed"), 502, "asr"),
        (HardwareError("the microphone is gone"), 503, "audio device"),
        (RuntimeError("a bug"), 500, "internal error: RuntimeError"),
    ],
)
async def test_failures_of_the_control_are_json_and_the_server_lives_on(
    api: Api, fail: Exception, status: int, needle: str
) -> None:
    api.control.fail = fail
    with capture_logs() as logs:
        response = await api.client.get("/listen")
    assert response.status_code == status
    assert needle in response.json()["error"]
    failed = [e for e in logs if e["event"] == "control_request_failed"]
    assert len(failed) == (1 if status == 500 else 0)
    api.control.fail = None
    assert (await api.client.post("/wake")).status_code == 202


async def test_a_burst_of_requests_is_served_whole(api: Api) -> None:
    """200 calls at once, over a handful of connections: every one answered, none lost."""
    responses = await asyncio.gather(*(api.client.post("/say", json={"text": f"n{n}"}) for n in range(200)))
    assert [r.status_code for r in responses] == [202] * 200
    assert sorted(call[1] for call in api.control.calls) == sorted(f"n{n}" for n in range(200))


# --- the token -----------------------------------------------------------------------------


async def test_the_token_is_required_on_every_route_when_set(start: Start, socket_dir: Path) -> None:
    for listen in ("127.0.0.1:0", f"unix:{socket_dir}/t.sock"):
        api = await start(listen, token=TOKEN)
        async with _client(api.server.address) as anonymous, _client(api.server.address, "wrong") as wrong:
            for method, path in [("GET", "/listen"), ("POST", "/wake"), ("GET", "/events"), ("GET", "/nope")]:
                for client in (anonymous, wrong):
                    response = await client.request(method, path)
                    assert response.status_code == 401, (listen, method, path)
                    assert "bearer token" in response.json()["error"]
        assert api.control.calls == []
        assert (await api.client.post("/wake")).status_code == 202
        assert (await api.client.get("/listen")).text == "what time is it"


@pytest.mark.parametrize(
    ("listen", "local"),
    [
        ("127.0.0.1:8765", True),
        ("127.3.2.1:1", True),
        ("localhost:8765", True),
        ("[::1]:8765", True),
        ("unix:/run/moss-voice/control.sock", True),
        ("0.0.0.0:8765", False),
        ("[::]:8765", False),
        ("192.168.1.20:8765", False),
        ("robot.local:8765", False),
    ],
)
def test_which_addresses_need_no_token(listen: str, local: bool) -> None:
    assert Address.parse(listen).is_local is local


async def test_a_non_loopback_address_refuses_to_start_without_a_token(start: Start) -> None:
    for listen in ("0.0.0.0:0", "[::]:0", "robot.local:8765"):
        with pytest.raises(ControlError, match="MOSS_VOICE_CONTROL_TOKEN"):
            await start(listen)


async def test_a_non_loopback_address_starts_with_a_token(start: Start) -> None:
    api = await start("0.0.0.0:0", token=TOKEN)
    port = api.server.address.rpartition(":")[2]
    async with _client(f"127.0.0.1:{port}", TOKEN) as client:
        assert (await client.post("/stop")).status_code == 200


# --- binding -------------------------------------------------------------------------------


async def test_an_address_in_use_is_a_clear_error(start: Start) -> None:
    first = await start("127.0.0.1:0")
    with pytest.raises(ControlError, match="address already in use"):
        await start(first.server.address)


async def test_the_unix_socket_is_0660_and_removed_at_close(start: Start, socket_dir: Path) -> None:
    path = socket_dir / "m.sock"
    api = await start(f"unix:{path}")
    assert api.server.address == f"unix:{path}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    await api.server.aclose()
    assert not path.exists()


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(start: Start, socket_dir: Path) -> None:
    path = socket_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a daemon that died
    api = await start(f"unix:{path}")
    assert (await api.client.post("/wake")).status_code == 202
    with pytest.raises(ControlError, match="address already in use"):
        await start(f"unix:{path}")
    assert (await api.client.post("/wake")).status_code == 202  # the live one was left alone


async def test_a_missing_socket_directory_or_a_plain_file_is_a_clear_error(start: Start, socket_dir: Path) -> None:
    with pytest.raises(ControlError, match="does not exist"):
        await start(f"unix:{socket_dir}/missing/c.sock")
    (socket_dir / "file").write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        await start(f"unix:{socket_dir}/file")


def test_no_listen_address_is_a_clear_error() -> None:
    with pytest.raises(ControlError, match=r"control\.listen"):
        ControlServer(ControlSettings(), FakeControl(), metrics=Metrics())


# --- the event stream's limits ---------------------------------------------------------------


async def test_too_many_event_clients_get_503_and_close_ends_the_streams(start: Start) -> None:
    api = await start("127.0.0.1:0", max_sse_clients=2)
    streams = []
    for _ in range(2):
        stream = api.client.stream("GET", "/events")
        lines = (await stream.__aenter__()).aiter_lines()
        assert await anext(lines) == ": moss-voice events"
        streams.append((stream, lines))
    response = await api.client.get("/events")
    assert response.status_code == 503
    assert "too many clients" in response.json()["error"]
    assert (await api.client.post("/wake")).status_code == 202  # the other routes still answer
    await api.server.aclose()
    for stream, lines in streams:
        rest = [line async for line in lines]
        assert rest == [""]  # the blank line after the greeting, then the end of the stream
        await stream.__aexit__(None, None, None)


async def test_a_slow_event_client_loses_only_its_oldest_events(api: Api) -> None:
    bus = api.control.bus
    other = bus.subscribe(maxsize=1000)  # another subscriber, which keeps everything
    with capture_logs() as logs:
        async with api.client.stream("GET", "/events") as response:
            lines = response.aiter_lines()
            assert await anext(lines) == ": moss-voice events"
            for n in range(300):  # more than the client's queue (256), emitted before it reads any
                bus.emit("transcript", turn_id=n, text=str(n))
            assert [await anext(lines) for _ in range(2)] == ["", ": dropped 44 events"]
            events = [await _next_event(lines) for _ in range(256)]
    assert [json.loads(e["data"])["turn_id"] for e in events] == list(range(44, 300))
    assert [e["dropped"] for e in logs if e["event"] == "control_events_client_behind"] == [44]
    assert len(other._events) == 300 and other.dropped == 0


async def test_keepalive_comments_while_nothing_happens(start: Start) -> None:
    api = await start("127.0.0.1:0", keepalive_s=0.01)
    async with api.client.stream("GET", "/events") as response:
        lines = response.aiter_lines()
        seen = [await anext(lines) for _ in range(6)]
    assert seen.count(": keepalive") >= 2


async def test_control_api_runs_the_metrics_and_the_server_and_stops_both(unused_tcp_port: int) -> None:
    control = FakeControl()
    async with control_api(ControlSettings(listen=f"127.0.0.1:{unused_tcp_port}"), control) as server:
        assert server is not None and server.address == f"127.0.0.1:{unused_tcp_port}"
        await control.bus.subscribed.wait()  # the metrics task is counting
        control.bus.emit("wake", turn_id=1, source="button", word=None)
        async with _client(server.address) as client:
            # the metrics task, woken by the emit, runs while this request goes out
            samples = _samples((await client.get("/metrics")).text)
    assert samples['moss_voice_wakes_total{source="button"}'] == 1
    assert control.bus._subscribers == []
    async with _client(f"127.0.0.1:{unused_tcp_port}") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/status")


async def test_control_api_without_an_address_starts_nothing() -> None:
    control = FakeControl()
    async with control_api(ControlSettings(), control) as server:
        assert server is None
        assert not control.bus.subscribed.is_set()


# --- metrics, without a server -----------------------------------------------------------------


def _event(name: str, **fields: object) -> Event:
    return Event(name, dict(fields), 1, 0.0)


def test_metrics_start_idle_with_every_known_label_at_zero() -> None:
    samples = _samples(Metrics().render().decode())
    assert samples['moss_voice_state{state="idle"}'] == 1
    assert samples['moss_voice_state{state="speaking"}'] == 0
    assert samples['moss_voice_turns_total{outcome="said"}'] == 0
    assert samples['moss_voice_wakes_total{source="follow_up"}'] == 0
    assert samples['moss_voice_failures_total{service="daemon"}'] == 0


def test_metrics_state_follows_state_changed_even_to_an_unknown_state() -> None:
    metrics = Metrics()
    for dst in ("listening", "weird", "speaking"):
        metrics.observe(_event("state_changed", src="x", dst=dst, trigger="t", turn_id=1))
    samples = _samples(metrics.render().decode())
    states = {k: v for k, v in samples.items() if k.startswith("moss_voice_state{")}
    assert {k for k, v in states.items() if v == 1} == {'moss_voice_state{state="speaking"}'}
    assert states['moss_voice_state{state="weird"}'] == 0


def test_metrics_skip_missing_and_malformed_latencies() -> None:
    metrics = Metrics()
    with capture_logs() as logs:
        metrics.observe(_event("turn_finished", outcome="interrupted", barge_in_ms=85, asr_final_ms="fast"))
        metrics.observe(_event("turn_finished", outcome="answered", asr_final_ms=True, llm_first_token_ms=250.5))
    samples = _samples(metrics.render().decode())
    assert samples["moss_voice_barge_in_seconds_sum"] == pytest.approx(0.085)
    assert samples['moss_voice_barge_in_seconds_bucket{le="0.1"}'] == 1
    assert samples["moss_voice_asr_final_seconds_count"] == 0
    assert samples["moss_voice_llm_first_token_seconds_sum"] == pytest.approx(0.2505)
    assert [e["field"] for e in logs if e["event"] == "metrics_bad_field"] == ["asr_final_ms", "asr_final_ms"]
