"""Loopback stand-in for an OpenAI-compatible chat server: vLLM by default, llama.cpp's on request.

A real HTTP server (Starlette on uvicorn, in the caller's event loop) that speaks the wire
format of docs/protocols.md ("OpenAI-compatible chat"), vLLM's and llama.cpp's variations: scripted answers
streamed token by token at a configurable pace, request validation like vLLM's, and the
misbehaviours the client has to survive (refused connections, hangs, 500s, errors in the
middle of a stream, cut connections, garbage, a dead engine, a slow start).

    async with OpenAiStub(behaviour=OpenAiBehaviour(answers={"weather": "Sunny."})) as stub:
        settings = LlmSettings(url=stub.url)          # http://127.0.0.1:PORT/v1
        ...
        assert stub.disconnects == 1                  # the client went away mid-stream

The script and request validation are in ``openai_behaviour.py``, the streams' bytes in
``openai_stream.py``. What is left here (about 450 lines) is one job, the server: its listening
states (refuse, starting, up), its endpoints and what it observes; they share the stub's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.tools.stubs.lifecycle import StartStop
from daemon.tools.stubs.openai_behaviour import (
    MISBEHAVIOURS,
    OpenAiBehaviour,
    ReceivedRequest,
    validate_request,
)
from daemon.tools.stubs.openai_stream import (
    Ctl,
    Plan,
    StubCut,
    llama_events,
    ping_only_events,
    plan_for,
    raw_events,
    trickled,
    vllm_events,
)
from daemon.tools.stubs.serving import InLoopServer, bind_socket, serve, wait_http_disconnect
from daemon.tools.stubs.streaming import ClosingStreamingResponse
from daemon.tools.stubs.tokens import tokenize

__all__ = [
    "EXAMPLE_STREAM",
    "MISBEHAVIOURS",
    "OpenAiBehaviour",
    "OpenAiStub",
    "ReceivedRequest",
    "tokenize",
]

log = structlog.get_logger()

EXAMPLE_STREAM = (
    b'data: {"id":"chatcmpl-7f3a","object":"chat.completion.chunk","created":1718000000,"model":"moss",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-7f3a","object":"chat.completion.chunk","created":1718000000,"model":"moss",'
    b'"choices":[{"index":0,"delta":{"content":"\xe4\xbd\xa0\xe5\xa5\xbd"},"logprobs":null,"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-7f3a","object":"chat.completion.chunk","created":1718000000,"model":"moss",'
    b'"choices":[{"index":0,"delta":{"content":"\xef\xbc\x81"},"logprobs":null,"finish_reason":"stop",'
    b'"stop_reason":"<eom>"}]}\n\n'
    b'data: {"id":"chatcmpl-7f3a","object":"chat.completion.chunk","created":1718000000,"model":"moss",'
    b'"choices":[],"usage":{"prompt_tokens":21,"completion_tokens":3,"total_tokens":24}}\n\n'
    b"data: [DONE]\n\n"
)
"""A typical vLLM stream (docs/protocols.md "OpenAI: SSE framing"): "你好！", stop/<eom>, usage 21/3/24."""


class _QuietCutFilter(logging.Filter):
    """Keeps uvicorn from logging the deliberate ``cut`` as an application crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _is_deliberate_cut(exc)


def _is_deliberate_cut(exc: BaseException | None) -> bool:
    if isinstance(exc, StubCut):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_deliberate_cut(e) for e in exc.exceptions)
    return False


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietCutFilter) for f in logger.filters):
        logger.addFilter(_QuietCutFilter())


class OpenAiStub(StartStop):
    """An OpenAI-compatible chat server on loopback. ``url`` is the base a client config uses.

    Observation hooks: ``requests`` (every request received), ``disconnects`` and
    ``disconnect_times`` (streams the client abandoned: the generator saw CancelledError or
    GeneratorExit), ``streams_started`` / ``streams_completed``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        behaviour: OpenAiBehaviour | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._behaviour = behaviour if behaviour is not None else OpenAiBehaviour()
        self.requests: list[ReceivedRequest] = []
        self.disconnects = 0
        self.disconnect_times: list[float] = []
        self.streams_started = 0
        self.streams_completed = 0
        self._app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_exception},
        )
        self._sock: socket.socket | None = None  # bound, not listening (refusing), when not serving
        self._server: InLoopServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._up_task: asyncio.Task[None] | None = None
        self._apply_task: asyncio.Task[None] | None = None
        self._listen_lock = asyncio.Lock()
        self._active: set[Ctl] = set()
        self._llama_streams: set[Ctl] = set()
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def behaviour(self) -> OpenAiBehaviour:
        return self._behaviour

    @behaviour.setter
    def behaviour(self, behaviour: OpenAiBehaviour) -> None:
        """Swap the behaviour. A change to or from refuse/starting is applied in the background;
        ``await stub.set_behaviour(b)`` waits for it."""
        self._behaviour = behaviour
        if self._started:
            previous = self._apply_task
            self._apply_task = asyncio.get_running_loop().create_task(
                self._apply_listening(previous), name=f"openai-stub-{self.port}-apply"
            )

    async def set_behaviour(self, behaviour: OpenAiBehaviour) -> None:
        self.behaviour = behaviour
        if self._apply_task is not None:
            await self._apply_task

    async def start(self) -> None:
        if self._started:
            return
        _install_log_filter()
        self._sock = bind_socket(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        self._started = True
        await self._apply_listening(None)
        log.info("openai_stub_started", url=self.url, style=self._behaviour.style, misbehave=self._behaviour.misbehave)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for task in (self._apply_task, self._up_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._apply_task = self._up_task = None
        await self._go_down(reserve=False)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        log.info("openai_stub_stopped", url=self.url)

    async def wait_for_disconnects(self, count: int = 1, *, timeout: float = 2.0) -> bool:
        """Wait until ``disconnects >= count``; False if that did not happen within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.disconnects < count:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def _apply_listening(self, previous: asyncio.Task[None] | None) -> None:
        """Make the listening state match the behaviour (refuse: down; starting: down, then up later)."""
        if previous is not None and not previous.done():
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        async with self._listen_lock:
            mode = self._behaviour.misbehave
            if self._up_task is not None and not self._up_task.done():
                self._up_task.cancel()
            if mode == "refuse":
                await self._go_down(reserve=True)
            elif mode == "starting":
                await self._go_down(reserve=True)
                self._up_task = asyncio.get_running_loop().create_task(
                    self._come_up_after(self._behaviour.starting_s), name=f"openai-stub-{self.port}-starting"
                )
            else:
                await self._go_up()

    async def _come_up_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._listen_lock:
            await self._go_up()

    async def _go_up(self) -> None:
        if self._server is not None:
            return
        sock = self._sock if self._sock is not None else bind_socket(self.host, self.port)
        config = uvicorn.Config(
            self._app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=2,
        )
        self._sock = None  # uvicorn owns (and closes) it now
        self._server, self._serve_task = await serve(config, sock, name=f"openai-stub-{self.port}", timeout=5.0)

    async def _go_down(self, *, reserve: bool) -> None:
        server, task = self._server, self._serve_task
        if server is not None and task is not None:
            self._server = self._serve_task = None
            for ctl in list(self._active):
                ctl.interrupt("shutdown")
            server.should_exit = True
            await asyncio.wait_for(task, 10.0)
        if reserve and self._sock is None:
            self._sock = bind_socket(self.host, self.port)  # keep the port, without listening: refused

    # -- endpoints ----------------------------------------------------------------------

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = raw.decode("utf-8", "replace")
        self.requests.append(
            ReceivedRequest(
                method=request.method,
                path=request.url.path,
                headers=dict(request.headers),
                body=body,
                at=time.monotonic(),
                client=(request.client.host, request.client.port) if request.client else None,
            )
        )
        return body

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        await self._record(request)
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "Internal Server Error"
        return JSONResponse({"detail": detail}, status_code=status)

    async def _health(self, request: Request) -> Response:
        b = self._behaviour
        await self._record(request)
        if b.misbehave == "hang":
            return await self._hang(request)
        if b.style == "llama_cpp":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if b.misbehave == "health_503":
            return Response(status_code=503)
        return Response(status_code=200)

    async def _models(self, request: Request) -> Response:
        b = self._behaviour
        await self._record(request)
        if b.misbehave == "hang":
            return await self._hang(request)
        if (denied := self._check_auth(request, b)) is not None:
            return denied
        data: list[dict[str, Any]]
        if b.style == "llama_cpp":
            data = [{"id": m, "object": "model", "owned_by": "me", "permissions": []} for m in b.models]
        else:
            data = [
                {
                    "id": m,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": f"/models/{m}",
                    "parent": None,
                    "max_model_len": 2048,
                    "permission": [],
                }
                for m in b.models
            ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Request) -> Response:
        b = self._behaviour
        body = await self._record(request)
        if b.misbehave == "hang":
            return await self._hang(request)
        if (denied := self._check_auth(request, b)) is not None:
            return denied
        bad_status = 500 if b.style == "llama_cpp" else 400
        if body is None or isinstance(body, str):
            return self._error(b, bad_status, "request body is not valid JSON", "BadRequestError")
        if b.misbehave == "error_500":
            return self._error(b, 500, "stub: internal server error (misbehave=error_500)", "InternalServerError")
        problem = validate_request(body)
        if problem is not None:
            return self._error(b, bad_status, problem, "BadRequestError")
        model = body.get("model") or b.models[0]
        if b.style == "vllm" and model not in b.models:
            return self._error(b, 404, f"The model `{model}` does not exist.", "NotFoundError")
        if b.style == "llama_cpp":
            for ctl in list(self._llama_streams):  # llama.cpp: a new request cuts the running one
                ctl.interrupt("preempted")
        plan = plan_for(b, body, model)
        ctl = Ctl()
        if not body.get("stream", False):
            return await self._complete(b, plan, ctl)
        if b.misbehave == "ping_only":
            events: AsyncGenerator[bytes, None] = ping_only_events(b, ctl)
        elif b.raw_chunks is not None:
            events = raw_events(b, ctl)
        elif b.style == "llama_cpp":
            events = llama_events(b, plan, ctl)
        else:
            events = vllm_events(b, plan, ctl)
        if b.misbehave == "trickle":
            events = trickled(b, events, ctl)
        return ClosingStreamingResponse(self._observed(events, ctl, b), media_type="text/event-stream")

    # -- helpers ------------------------------------------------------------------------

    def _check_auth(self, request: Request, b: OpenAiBehaviour) -> Response | None:
        if not b.api_key or request.headers.get("authorization") == f"Bearer {b.api_key}":
            return None
        if b.style == "llama_cpp":
            return JSONResponse({"detail": "Invalid API key"}, status_code=401)
        return JSONResponse({"error": "Unauthorized"}, status_code=401)

    def _error(self, b: OpenAiBehaviour, status: int, message: str, kind: str) -> JSONResponse:
        info = {"message": message, "type": kind, "param": None, "code": status}
        body = {"object": "error", **info} if b.error_shape == "old" else {"error": info}
        return JSONResponse(body, status_code=status)

    async def _hang(self, request: Request) -> Response:
        """Never answer: wait until the client goes away (counted as a disconnect) or stop()."""
        ctl = Ctl()
        self._active.add(ctl)
        stopped = asyncio.ensure_future(ctl.event.wait())
        gone = asyncio.ensure_future(wait_http_disconnect(request))
        try:
            done, _ = await asyncio.wait({stopped, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                self._record_disconnect()
        finally:
            self._active.discard(ctl)
            for task in (stopped, gone):
                task.cancel()
            await asyncio.gather(stopped, gone, return_exceptions=True)
        return Response(status_code=503)

    def _record_disconnect(self) -> None:
        self.disconnects += 1
        self.disconnect_times.append(time.monotonic())
        log.info("openai_stub_client_disconnected", count=self.disconnects)

    async def _complete(self, b: OpenAiBehaviour, plan: Plan, ctl: Ctl) -> Response:
        """A non-streaming answer (after the first-token delay)."""
        self._active.add(ctl)
        try:
            if not await ctl.sleep_until(asyncio.get_running_loop().time() + b.first_token_delay_s):
                return Response(status_code=503)
        finally:
            self._active.discard(ctl)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(plan.tokens)},
            "logprobs": None,
            "finish_reason": plan.finish_reason,
        }
        if b.style == "vllm":
            choice["message"]["tool_calls"] = []
            choice["stop_reason"] = plan.stop_reason
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": plan.model,
                "choices": [choice],
                "usage": plan.usage,
            }
        )

    async def _observed(
        self, events: AsyncGenerator[bytes, None], ctl: Ctl, b: OpenAiBehaviour
    ) -> AsyncGenerator[bytes, None]:
        """Wraps a stream's events: counts streams and notices a client that went away."""
        self.streams_started += 1
        self._active.add(ctl)
        if b.style == "llama_cpp":
            self._llama_streams.add(ctl)
        completed = False
        try:
            async for chunk in events:
                yield chunk
            if ctl.reason == "shutdown":
                raise StubCut("stub stopped mid-stream: dropping the connection like a killed server")
            completed = True
        except (asyncio.CancelledError, GeneratorExit):
            if ctl.reason != "shutdown":
                self._record_disconnect()
            raise
        finally:
            self._active.discard(ctl)
            self._llama_streams.discard(ctl)
            await events.aclose()
            if completed:
                self.streams_completed += 1
