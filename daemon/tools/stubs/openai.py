"""Loopback stand-in for an OpenAI-compatible chat server: vLLM by default, llama.cpp's on request.

A real HTTP server (Starlette on uvicorn, in the caller's event loop) that speaks the wire
format of protocols.md section 3 and the llama-cpp-python variations of 4.2: scripted answers
streamed token by token at a configurable pace, request validation like vLLM's, and the
misbehaviours the client has to survive (refused connections, hangs, 500s, errors in the
middle of a stream, cut connections, garbage, a dead engine, a slow start).

    async with OpenAiStub(behaviour=OpenAiBehaviour(answers={"weather": "Sunny."})) as stub:
        settings = LlmSettings(url=stub.url)          # http://127.0.0.1:PORT/v1
        ...
        assert stub.disconnects == 1                  # the client went away mid-stream
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
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.tools.stubs.serving import InLoopServer, bind_socket, serve
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

MISBEHAVIOURS = (
    None,
    "refuse",  # nothing listens on the port: connection refused
    "hang",  # accept and read the request, never send the headers
    "error_500",  # chat completions answer 500 with an error body
    "error_midstream",  # 200, a few content chunks, then data: {"error": ...} and [DONE]
    "cut",  # 200, a few content chunks, then the connection drops (no [DONE])
    "garbage",  # 200, a few content chunks, then a data line that is not JSON
    "truncate",  # 200, a few content chunks, then [DONE] without a finish chunk (llama.cpp preempted)
    "health_503",  # GET /health answers 503: the engine is dead
    "starting",  # not listening for starting_s after start(), then up (the model is loading)
)

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
"""The example stream of protocols.md 3.3, byte for byte: "你好！", stop/<eom>, usage 21/3/24."""


@dataclass
class OpenAiBehaviour:
    """How the stand-in answers. Tests may swap ``stub.behaviour`` between requests."""

    answers: dict[str, str] = field(default_factory=dict)
    """Question substring (case-insensitive, matched against the last user message) -> answer."""
    default_answer: str = "你好！我是MOSS，很高兴为你服务。"
    first_token_delay_s: float = 0.05
    """From the request to the first text chunk (queueing plus prefill)."""
    tokens_per_s: float = 50.0
    """Pace of the content chunks after the first; 0 sends them as fast as possible."""
    style: str = "vllm"
    """vllm: compact raw-UTF-8 JSON, role+"" first chunk, stop_reason, usage chunk.
    llama_cpp: ", "-separated \\u-escaped JSON, CRLF events, role-only first chunk, an empty
    content chunk before the finish chunk, no stop_reason, no usage, ``: ping`` comments,
    no /health, any model name accepted, validation errors as 500, a new request cuts the
    running stream."""
    error_shape: str = "new"
    """Error bodies: "new" = {"error": {...}} (vLLM >= 0.10.1), "old" = flat {"object": "error", ...}."""
    api_key: str | None = None
    """When set, /v1/* need ``Authorization: Bearer <api_key>`` (401 otherwise)."""
    models: list[str] = field(default_factory=lambda: ["moss"])
    """Served model names; the first is used when a request names none."""
    raw_chunks: list[bytes] | None = None
    """When set, a valid streaming request gets exactly these bytes as its body, one write each."""
    raw_chunk_delay_s: float = 0.01
    """Pause between raw chunks, so that they tend to arrive in separate reads."""
    misbehave: str | None = None
    """One of MISBEHAVIOURS."""
    misbehave_after_chunks: int = 2
    """Content chunks sent before error_midstream / cut / garbage / truncate strike."""
    starting_s: float = 0.5
    """misbehave="starting": how long the port refuses connections (model loading)."""
    ping_interval_s: float = 15.0
    """llama_cpp style: a ``: ping - <time>`` comment whenever the stream was quiet this long."""

    def __post_init__(self) -> None:
        if self.style not in ("vllm", "llama_cpp"):
            raise ValueError(f"style must be 'vllm' or 'llama_cpp', not {self.style!r}")
        if self.error_shape not in ("new", "old"):
            raise ValueError(f"error_shape must be 'new' or 'old', not {self.error_shape!r}")
        if self.misbehave not in MISBEHAVIOURS:
            raise ValueError(f"misbehave must be one of {MISBEHAVIOURS}, not {self.misbehave!r}")

    def answer_for(self, messages: list[dict[str, Any]]) -> str:
        """The scripted answer for the last user message, or ``default_answer``."""
        question = ""
        for message in reversed(messages):
            if message.get("role") == "user":
                question = _content_text(message.get("content")).lower()
                break
        for key, answer in self.answers.items():
            if key.lower() in question:
                return answer
        return self.default_answer


@dataclass(frozen=True)
class ReceivedRequest:
    """One request the stand-in received (``stub.requests``)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    """Parsed JSON, None when empty, the raw text when it was not JSON."""
    at: float
    """time.monotonic() on arrival."""
    client: tuple[str, int] | None = None
    """The peer's (host, port): a new port means a new connection."""


@dataclass
class _Plan:
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


class _Ctl:
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


class _StubCut(Exception):
    """Raised inside a stream on purpose: uvicorn then drops the connection mid-body."""


class _QuietCutFilter(logging.Filter):
    """Keeps uvicorn from logging the deliberate ``cut`` as an application crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _is_deliberate_cut(exc)


def _is_deliberate_cut(exc: BaseException | None) -> bool:
    if isinstance(exc, _StubCut):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_deliberate_cut(e) for e in exc.exceptions)
    return False


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietCutFilter) for f in logger.filters):
        logger.addFilter(_QuietCutFilter())


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _validate(body: Any) -> str | None:
    """vLLM-like request validation; the problem as a message, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    messages = body.get("messages")
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list) or not messages:
        return "messages: Input should be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages.{i}: Input should be an object with a role"
        if not isinstance(message.get("content"), str | list):
            return f"messages.{i}.content: Input should be a valid string"
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return "stream: Input should be a valid boolean"
    if body.get("stream_options") is not None and not stream:
        return "Stream options can only be defined when `stream=True`."
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop))
    ):
        return "stop: Input should be a valid string or list of strings"
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"{key}: Input should be a positive integer"
    return None


class OpenAiStub:
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
        self._active: set[_Ctl] = set()
        self._llama_streams: set[_Ctl] = set()
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

    async def __aenter__(self) -> OpenAiStub:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

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
        problem = _validate(body)
        if problem is not None:
            return self._error(b, bad_status, problem, "BadRequestError")
        model = body.get("model") or b.models[0]
        if b.style == "vllm" and model not in b.models:
            return self._error(b, 404, f"The model `{model}` does not exist.", "NotFoundError")
        if b.style == "llama_cpp":
            for ctl in list(self._llama_streams):  # llama.cpp: a new request cuts the running one
                ctl.interrupt("preempted")
        plan = self._plan(b, body, model)
        ctl = _Ctl()
        if not body.get("stream", False):
            return await self._complete(b, plan, ctl)
        if b.raw_chunks is not None:
            events: AsyncGenerator[bytes, None] = self._raw_events(b, ctl)
        elif b.style == "llama_cpp":
            events = self._llama_events(b, plan, ctl)
        else:
            events = self._vllm_events(b, plan, ctl)
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

    def _plan(self, b: OpenAiBehaviour, body: dict[str, Any], model: str) -> _Plan:
        answer = b.answer_for(body["messages"])
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
        if isinstance(limit, int) and len(tokens) > limit:
            tokens, finish, stop_reason = tokens[:limit], "length", None
        prompt_tokens = sum(len(tokenize(_content_text(m.get("content")))) + 4 for m in body["messages"])
        options = body.get("stream_options") or {}
        return _Plan(
            model=model,
            tokens=tokens,
            finish_reason=finish,
            stop_reason=stop_reason,
            prompt_tokens=prompt_tokens,
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        )

    async def _hang(self, request: Request) -> Response:
        """Never answer: wait until the client goes away (counted as a disconnect) or stop()."""
        ctl = _Ctl()
        self._active.add(ctl)
        stopped = asyncio.ensure_future(ctl.event.wait())
        gone = asyncio.ensure_future(self._wait_disconnect(request))
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

    @staticmethod
    async def _wait_disconnect(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    def _record_disconnect(self) -> None:
        self.disconnects += 1
        self.disconnect_times.append(time.monotonic())
        log.info("openai_stub_client_disconnected", count=self.disconnects)

    async def _complete(self, b: OpenAiBehaviour, plan: _Plan, ctl: _Ctl) -> Response:
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
        self, events: AsyncGenerator[bytes, None], ctl: _Ctl, b: OpenAiBehaviour
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
                raise _StubCut("stub stopped mid-stream: dropping the connection like a killed server")
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

    async def _raw_events(self, b: OpenAiBehaviour, ctl: _Ctl) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        for i, chunk in enumerate(b.raw_chunks or []):
            if i and not await ctl.sleep_until(loop.time() + b.raw_chunk_delay_s):
                return
            yield chunk

    async def _vllm_events(self, b: OpenAiBehaviour, plan: _Plan, ctl: _Ctl) -> AsyncGenerator[bytes, None]:
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
        tokens, n = plan.tokens, len(plan.tokens)
        strike = self._strike_at(b, n)
        interval = 1.0 / b.tokens_per_s if b.tokens_per_s > 0 else 0.0
        for i, token in enumerate(tokens):
            if i == strike:
                break
            if i and not await ctl.sleep_until(first + i * interval):
                return
            yield event([choice({"content": token}, final=(i == n - 1 and strike is None))])
        if strike is not None:
            async with contextlib.aclosing(self._misbehave_midstream(b, ctl)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        if n == 0:
            yield event([choice({"content": ""}, final=True)])
        if plan.include_usage:
            yield event([], usage=plan.usage)
        yield b"data: [DONE]\n\n"

    async def _llama_events(self, b: OpenAiBehaviour, plan: _Plan, ctl: _Ctl) -> AsyncGenerator[bytes, None]:
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
            """Wait until ``until``, with a ping comment whenever the stream was quiet too long."""
            nonlocal last_sent
            while True:
                ping_at = last_sent + b.ping_interval_s
                if ping_at >= until:
                    await ctl.sleep_until(until)
                    return
                if not await ctl.sleep_until(ping_at):
                    return
                last_sent = loop.time()
                yield f": ping - {time.strftime('%Y-%m-%d %H:%M:%S')}.000000\r\n\r\n".encode()

        first = loop.time() + b.first_token_delay_s
        async with contextlib.aclosing(pause(first)) as pings:
            async for ping in pings:
                yield ping
        if ctl.event.is_set():
            if ctl.reason == "preempted":
                yield b"data: [DONE]\r\n\r\n"
            return
        yield event({"role": "assistant"})
        tokens, n = plan.tokens, len(plan.tokens)
        strike = self._strike_at(b, n)
        interval = 1.0 / b.tokens_per_s if b.tokens_per_s > 0 else 0.0
        for i, token in enumerate(tokens):
            if i == strike:
                break
            if i:
                async with contextlib.aclosing(pause(first + i * interval)) as pings:
                    async for ping in pings:
                        yield ping
                if ctl.event.is_set():
                    if ctl.reason == "preempted":
                        yield b"data: [DONE]\r\n\r\n"
                    return
            yield event({"content": token})
        if strike is not None:
            async with contextlib.aclosing(self._misbehave_midstream(b, ctl, crlf=True)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        yield event({"content": ""})
        yield event({}, finish=plan.finish_reason)
        yield b"data: [DONE]\r\n\r\n"

    @staticmethod
    def _strike_at(b: OpenAiBehaviour, n_tokens: int) -> int | None:
        """Index of the token before which a mid-stream misbehaviour strikes (None: it does not)."""
        if b.misbehave in ("error_midstream", "cut", "garbage", "truncate"):
            return min(b.misbehave_after_chunks, n_tokens)
        return None

    async def _misbehave_midstream(
        self, b: OpenAiBehaviour, ctl: _Ctl, *, crlf: bool = False
    ) -> AsyncGenerator[bytes, None]:
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
            raise _StubCut("misbehave=cut: dropping the connection mid-stream")
