"""Fuzzing the control API: a real server on 127.0.0.1 gets random and mutated requests (any
method, path, headers and body; a token or none; the conversation failing in each typed way) and
broken HTTP on a raw socket. It answers every request, never with a 500, every error as JSON
``{"error": "..."}``, and is still up afterwards."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import example, given
from hypothesis import strategies as st

from daemon.config import ControlSettings
from daemon.control.metrics import Metrics
from daemon.control.port import Busy
from daemon.control.server import ControlServer
from daemon.errors import AsrError, HardwareError, LlmError
from tests.fake_control import FakeControl
from tests.fuzzing import JSON_VALUES, fuzz, mutated

TOKEN = "fuzz-token"
MAX_BODY = 2048
ROUTES = ["/listen", "/display", "/wake", "/say", "/stop", "/status", "/metrics"]
"""Every route but GET /events, which streams until the client leaves."""
REAL_BODIES = [
    b'{"text": "\xe4\xbd\xa0\xe5\xa5\xbd", "interrupt": true}',
    b'{"text": "Battery low."}',
    b"text=%E4%BD%A0%E5%A5%BD",
    b"",
]
FAILURES: list[BaseException | None] = [None, Busy("shutting down"), AsrError("x"), LlmError("y"), HardwareError("z")]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


paths = st.one_of(
    st.sampled_from(ROUTES),
    st.sampled_from(ROUTES).flatmap(lambda r: mutated(r.encode(), max_edits=2)).map(lambda b: b.decode("latin-1")),
    st.tuples(st.sampled_from(ROUTES), st.text(max_size=12)).map(lambda t: f"{t[0]}?{t[1]}"),
).map(lambda p: "/" + quote(p.lstrip("/"), safe="/?=&%"))  # httpx sends printable URLs only
bodies = st.one_of(
    st.sampled_from(REAL_BODIES).flatmap(mutated),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.just(b"{" * 3000),  # nested deeper than json follows: was a 500
    st.just(b"x" * (MAX_BODY + 1)),
)
content_types = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz",
     "multipart/form-data", "application/json; charset=latin-1", "application/x-www-form-urlencoded; charset=bogus",
     "", "\x7f"]
)  # fmt: skip
requests = st.builds(
    Request,
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=paths,
    headers=st.fixed_dictionaries(
        {},
        optional={
            "Content-Type": content_types,
            "Authorization": st.sampled_from([f"Bearer {TOKEN}", "Bearer nope", "bearer", TOKEN, "Basic Zm9v"]),
            "Accept": st.sampled_from(["*/*", "text/event-stream", "application/json"]),
        },
    ),
    body=bodies,
)


async def _serve(token: str | None, fail: BaseException | None, batch: list[Request]) -> list[httpx.Response]:
    control = FakeControl(fail=fail)
    settings = ControlSettings(listen="127.0.0.1:0", token=token, max_body_bytes=MAX_BODY)
    server = ControlServer(settings, control, metrics=Metrics())
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{server.address}", timeout=10) as client:
            answers = []
            for r in batch:
                headers = {k: v for k, v in r.headers.items() if _header_ok(v)}
                answers.append(await client.request(r.method, r.path, headers=headers, content=r.body))
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            control.fail = None
            alive = await client.get("/status", headers=auth)
            assert alive.status_code == 200 and alive.json()["state"] == "idle"
        return answers
    finally:
        await server.aclose()


def _header_ok(value: str) -> bool:
    return value.isascii() and value.isprintable()


@fuzz(40)
@given(
    token=st.sampled_from([None, TOKEN]),
    fail=st.sampled_from(FAILURES),
    batch=st.lists(requests, min_size=1, max_size=8),
)
@example(token=None, fail=None, batch=[Request("POST", "/say", {"Content-Type": "application/json"}, b"[" * 3000)])
@example(  # a form in a charset Python does not know: was a 500 (LookupError)
    token=None,
    fail=None,
    batch=[
        Request("POST", "/display", {"Content-Type": "application/x-www-form-urlencoded; charset=bogus"}, b"text=hi")
    ],
)
@example(  # a form that is not UTF-8: was a 500 (UnicodeDecodeError)
    token=None,
    fail=None,
    batch=[Request("POST", "/display", {"Content-Type": "application/x-www-form-urlencoded"}, b"\x80")],
)
def test_every_request_gets_an_answer_never_a_500_and_errors_are_json(
    token: str | None, fail: BaseException | None, batch: list[Request]
) -> None:
    for request, response in zip(batch, asyncio.run(_serve(token, fail, batch)), strict=True):
        assert response.status_code != 500, (request, response.text)
        if response.status_code >= 400 and request.method != "HEAD":
            assert response.headers["content-type"].startswith("application/json"), (request, response.text)
            body = response.json()
            assert isinstance(body, dict) and isinstance(body.get("error"), str), (request, body)


RAW_REQUESTS = [
    b"POST /say HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b'Content-Length: 16\r\n\r\n{"text": "hi!!"}',
    b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /display HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n7\r\ntext=hi\r\n0\r\n\r\n",
]
RAW_READ_S = 0.3
"""How long a broken request's answer is waited for: a cut request gets none (the server waits for the rest)."""


async def _raw(data: bytes) -> bytes:
    server = ControlServer(ControlSettings(listen="127.0.0.1:0"), FakeControl(), metrics=Metrics())
    await server.start()
    try:
        host, port = server.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(data)  # no EOF after it: aiohttp drops the answer of a half-closed connection
        await writer.drain()
        answer = b""
        try:
            async with asyncio.timeout(RAW_READ_S):
                while chunk := await reader.read(65536):
                    answer += chunk
        except TimeoutError:
            pass  # a request cut short: the server still waits for its rest
        finally:
            writer.close()
        async with httpx.AsyncClient(base_url=f"http://{server.address}") as client:
            assert (await client.get("/status")).status_code == 200  # still up
        return answer
    finally:
        await server.aclose()


@fuzz(25)
@given(data=st.sampled_from(RAW_REQUESTS).flatmap(lambda r: mutated(r, max_edits=5)))
def test_broken_http_never_gets_a_500_and_the_server_stays_up(data: bytes) -> None:
    answer = asyncio.run(_raw(data))
    assert not answer.startswith(b"HTTP/1.1 500"), answer[:200]


def test_the_fuzzed_request_shapes_are_the_real_ones() -> None:
    """The unmutated raw requests are served normally, so the mutations start from real traffic."""
    answers: list[Any] = [asyncio.run(_raw(r)) for r in RAW_REQUESTS]
    assert [a.split(b" ", 2)[1] for a in answers] == [b"202", b"200", b"200"]
