"""A loopback stand-in for PaddleSpeech's streaming TTS server (docs/protocols.md, "PaddleSpeech streaming TTS").

It speaks the real server's wire format: one protocol per server, like
``tts_online_application.yaml``; an HTTP POST answered by a chunked body of bare base64
strings with no Content-Type, or the websocket JSON sequence of "PaddleSpeech: websocket"; and
``GET .../samplerate`` in both modes. The voice is espeak-ng, resampled to the configured
rate and cut into PaddleSpeech-sized chunks (10 800 samples, the tail of each sentence a
multiple of 300 samples). Misbehaviours for the client tests are chosen in
:class:`PaddleSpeechBehaviour`.

The Starlette app runs under uvicorn in the caller's event loop, on a socket bound here so
that port 0 works. This module is the server; the script and the request check are in
``paddlespeech_behaviour.py``, the voice in ``paddlespeech_voice.py``. What is left (about 440
lines) is one job: both protocols' endpoints and the misbehaviours they act out share the stub's
pacing, stop and disconnect bookkeeping, so they stay in one class.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from daemon.tools.stubs.lifecycle import StartStop
from daemon.tools.stubs.paddlespeech_behaviour import (
    PaddleSpeechBehaviour,
    ReceivedRequest,
    validate_tts_request,
)
from daemon.tools.stubs.paddlespeech_voice import CHUNK_SAMPLES, HOP_SAMPLES, espeak_pcm, sentences, split_chunks
from daemon.tools.stubs.serving import InLoopServer, bind_socket, serve, wait_http_disconnect
from daemon.tools.stubs.streaming import ClosingStreamingResponse

log = structlog.get_logger()

__all__ = [
    "CHUNK_SAMPLES",
    "PATH",
    "SAMPLERATE_PATH",
    "PaddleSpeechBehaviour",
    "PaddleSpeechStub",
    "ReceivedRequest",
    "espeak_pcm",
]

PATH = "/paddlespeech/tts/streaming"
SAMPLERATE_PATH = PATH + "/samplerate"
_GARBAGE = b"<html>this is not base64!</html>\n"
_CLOSED_AT = "paddlespeech_stub.closed_at"
"""Scope key of a websocket's close time, a list holding one time.monotonic() once it closed."""


class _StubAbort(Exception):
    """Raised inside a response on purpose, so that uvicorn drops the connection like the real server."""


class _ClientGone(Exception):
    """The client disconnected while audio was being sent."""


class PaddleSpeechStub(StartStop):
    """PaddleSpeech streaming TTS on loopback; ``protocol`` is "http" or "websocket".

    Observation hooks: ``requests`` (every synthesis request received), ``ws_messages``
    (every websocket JSON message), ``samplerate_requests``, ``completed`` (streams that
    ended normally), ``disconnects`` (clients that went away mid-stream), ``disconnect_times``
    (``time.monotonic()`` when each of those was seen), ``refused``, and ``synth_log``: one
    ``(sentence, seconds)`` per sentence the voice synthesized, in order (what the service itself
    spent, before the configured delays).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        behaviour: PaddleSpeechBehaviour | None = None,
        protocol: Literal["http", "websocket"] = "http",
    ) -> None:
        if protocol not in ("http", "websocket"):
            raise ValueError(f"protocol must be 'http' or 'websocket', got {protocol!r}")
        self.host = host
        self.port = port
        self.protocol = protocol
        self.behaviour = behaviour or PaddleSpeechBehaviour()
        self.requests: list[ReceivedRequest] = []
        self.ws_messages: list[Any] = []
        self.samplerate_requests = 0
        self.completed = 0
        self.disconnects = 0
        self.disconnect_times: list[float] = []
        self.synth_log: list[tuple[str, float]] = []
        self.refused = 0
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._server: InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "ws" if self.protocol == "websocket" else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{PATH}"

    @property
    def samplerate_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{SAMPLERATE_PATH}"

    @property
    def texts(self) -> list[Any]:
        """The ``text`` of every synthesis request, in order."""
        return [r.text for r in self.requests]

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("PaddleSpeechStub already started")
        sock = bind_socket(self.host, self.port)
        try:
            self.port = sock.getsockname()[1]
            config = uvicorn.Config(
                _quiet_aborts(_watch_ws_close(self._build_app())),
                http=self._protocol_class(),
                ws="websockets-sansio",
                lifespan="off",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=2,
            )
            self._stopping.clear()
            self._server, self._task = await serve(config, sock, name="paddlespeech-stub", timeout=10.0)
        except BaseException:
            sock.close()
            raise
        log.info("paddlespeech_stub_started", url=self.url, protocol=self.protocol)

    async def stop(self) -> None:
        """Stop serving; running responses end at their next chunk. Idempotent."""
        task, server = self._task, self._server
        self._task = self._server = None
        if task is None or server is None:
            return
        self._stopping.set()
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=10.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("paddlespeech_stub_stopped", url=self.url)

    async def wait_for_disconnects(self, count: int = 1, timeout: float = 2.0) -> None:
        """Wait until at least ``count`` mid-stream disconnects were seen (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while self.disconnects < count:
                self._changed.clear()
                await self._changed.wait()

    def _record_disconnect(self, at: float | None = None) -> None:
        """A client went away before its stream ended (``at``: when it closed, if known; else now)."""
        self.disconnect_times.append(time.monotonic() if at is None else at)
        self._note(disconnects=1)

    def _note(self, **changes: int) -> None:
        for name, delta in changes.items():
            setattr(self, name, getattr(self, name) + delta)
        self._changed.set()

    # -- the app ------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes: list[BaseRoute] = [Route(SAMPLERATE_PATH, self._samplerate, methods=["GET"])]
        if self.protocol == "http":
            routes.append(Route(PATH, self._http_tts, methods=["POST"]))
        else:
            routes.append(WebSocketRoute(PATH, self._ws_tts))
        return Starlette(routes=routes)

    def _protocol_class(self) -> type[H11Protocol]:
        stub = self

        class _Protocol(H11Protocol):
            """uvicorn's h11 protocol, except that "refuse" drops each connection as it arrives."""

            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                if stub.behaviour.misbehave == "refuse":
                    stub._note(refused=1)
                    transport.abort()

        return _Protocol

    async def _samplerate(self, request: Request) -> Response:
        self._note(samplerate_requests=1)
        behaviour = self.behaviour
        if behaviour.misbehave == "error_500":
            return JSONResponse(
                {"success": False, "code": 500, "message": {"description": "stand-in: error_500"}}, status_code=500
            )
        if behaviour.samplerate_override is not None:
            return JSONResponse(behaviour.samplerate_override)
        return JSONResponse({"sample_rate": behaviour.sample_rate})

    # -- HTTP -------------------------------------------------------------------------------

    async def _http_tts(self, request: Request) -> Response:
        behaviour = self.behaviour
        raw = await request.body()
        body, problems = validate_tts_request(raw)
        peer = (request.client.host, request.client.port) if request.client else None
        self.requests.append(ReceivedRequest("http", body, peer))
        self._note()
        if problems:
            return JSONResponse({"detail": problems}, status_code=422)
        if behaviour.misbehave == "hang":
            await self._hang_http(request)
            return PlainTextResponse("Internal Server Error", status_code=500)
        if behaviour.misbehave == "error_500":
            return PlainTextResponse("Internal Server Error", status_code=500)
        return ClosingStreamingResponse(self._http_body(behaviour, body["text"]))

    async def _http_body(self, behaviour: PaddleSpeechBehaviour, text: str) -> AsyncIterator[bytes]:
        """The response body: one base64 string per chunk, no separator, nothing else."""
        sent = 0
        try:
            if behaviour.misbehave in ("empty", "ws_error"):
                raise _StubAbort(f"{behaviour.misbehave}: no chunks, then an abrupt close")
            if behaviour.misbehave == "garbage":
                yield _GARBAGE
                yield _GARBAGE
                return
            async for piece in self._pieces(behaviour, text):
                if behaviour.misbehave == "trickle":
                    for i in range(len(piece)):
                        if not await self._pause(behaviour.trickle_interval_s):
                            return
                        yield piece[i : i + 1]
                else:
                    yield piece
                sent += 1
                if behaviour.misbehave == "truncate":
                    raise _StubAbort("truncate: one chunk, then the connection is dropped")
            if sent == 0:
                # The real server's generator crashes here (np.concatenate of nothing).
                raise _StubAbort(f"no audio for {text!r}: 200 with zero chunks, then an abrupt close")
            self._note(completed=1)
        except (asyncio.CancelledError, GeneratorExit):
            self._record_disconnect()
            log.info("paddlespeech_stub_client_gone", protocol="http", chunks_sent=sent)
            raise

    async def _hang_http(self, request: Request) -> None:
        """Never answer; return when the client goes away or the stub stops."""
        disconnected = asyncio.ensure_future(wait_http_disconnect(request))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if disconnected in done:
                self._record_disconnect()
        finally:
            for task in (disconnected, stopping):
                task.cancel()
            await asyncio.gather(disconnected, stopping, return_exceptions=True)

    # -- websocket -------------------------------------------------------------------------

    async def _ws_tts(self, websocket: WebSocket) -> None:
        """The message loop of PaddleSpeech's ws/tts_api.py, quirks included.

        See docs/protocols.md "PaddleSpeech: websocket".
        """
        if self.behaviour.misbehave == "error_500":
            await websocket.send_denial_response(PlainTextResponse("Internal Server Error", status_code=500))
            return
        await websocket.accept()
        peer = (websocket.client.host, websocket.client.port) if websocket.client else None
        session: str | None = None
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is None:
                    raise _StubAbort("binary frame")
                data = json.loads(message["text"])
                self.ws_messages.append(data)
                self._note()
                behaviour = self.behaviour
                if behaviour.misbehave == "hang":
                    continue
                if "signal" in data:
                    if data["signal"] == "start":
                        session = uuid.uuid1().hex
                        await websocket.send_json({"status": 0, "signal": "server ready", "session": session})
                    elif data["signal"] == "end":
                        reply = {"status": 0, "signal": "connection will be closed", "session": session}
                        await websocket.send_json(reply)
                        return
                    else:
                        await websocket.send_json({"status": 0, "signal": "no valid json data"})
                elif "text" in data:
                    if session is None:
                        raise _StubAbort("text before start: the engine handler is still None")
                    text, _spk_id = data["text"], data["spk_id"]
                    self.requests.append(ReceivedRequest("websocket", data, peer))
                    await self._ws_stream(websocket, behaviour, text)
                else:
                    log.info("paddlespeech_stub_invalid_request", message=data)
        except _ClientGone:
            return
        except Exception as exc:  # noqa: BLE001 - the real server catches everything, logs it and returns
            # Returning without a close message makes uvicorn drop the TCP connection: the
            # client sees the socket close with no error message, as with the real server.
            log.info("paddlespeech_stub_ws_session_ended", error=f"{type(exc).__name__}: {exc}")

    async def _ws_stream(self, websocket: WebSocket, behaviour: PaddleSpeechBehaviour, text: Any) -> None:
        sent = 0
        try:
            if behaviour.misbehave == "ws_error":
                await websocket.send_json({"status": -1, "audio": ""})
                return
            if behaviour.misbehave == "empty":
                raise _StubAbort("empty: the connection is dropped with no message")
            if behaviour.misbehave == "garbage":
                await websocket.send_json({"status": 1, "audio": _GARBAGE.decode("ascii")})
                await websocket.send_json({"status": 2, "audio": ""})
                return
            if behaviour.misbehave == "trickle":
                while await self._pause(behaviour.trickle_interval_s):
                    if websocket.scope.get(_CLOSED_AT):
                        raise WebSocketDisconnect()  # a send would not notice before the close times out
                    await websocket.send_json({"status": 1, "audio": "AAAA"})  # three zero bytes
                    sent += 1
                return
            async for piece in self._pieces(behaviour, text if isinstance(text, str) else str(text)):
                await websocket.send_json({"status": 1, "audio": piece.decode("ascii")})
                sent += 1
                if behaviour.misbehave == "truncate":
                    raise _StubAbort("truncate: one chunk, then the connection is dropped")
            # Text that yields no audio makes the engine raise, which the server reports as -1.
            await websocket.send_json({"status": 2 if sent else -1, "audio": ""})
            if sent:
                self._note(completed=1)
        except (WebSocketDisconnect, OSError) as exc:
            # Noticed at this send; the close itself may have come a pacing delay earlier.
            closed_at = websocket.scope.get(_CLOSED_AT) or [None]
            self._record_disconnect(closed_at[0])
            log.info("paddlespeech_stub_client_gone", protocol="websocket", chunks_sent=sent)
            raise _ClientGone() from exc

    # -- audio --------------------------------------------------------------------------------

    async def _pieces(self, behaviour: PaddleSpeechBehaviour, text: str) -> AsyncIterator[bytes]:
        """The base64 pieces for ``text``, paced as configured; stops early when the stub stops."""
        first = True
        async for pcm, raw in self._chunks(behaviour, text):
            if first:
                delay = behaviour.first_chunk_delay_s
            else:
                seconds = len(pcm) / 2 / behaviour.sample_rate
                delay = behaviour.chunk_delay_s + behaviour.realtime_factor * seconds
            if not await self._pause(delay):
                return
            first = False
            yield raw
        if behaviour.misbehave == "endless":  # the sentence never ends: silence for ever
            silence = base64.b64encode(bytes(CHUNK_SAMPLES * 2))
            while await self._pause(behaviour.chunk_delay_s):
                yield silence
                await asyncio.sleep(0)  # unpaced, still let the client and the stub's own loop run

    async def _chunks(self, behaviour: PaddleSpeechBehaviour, text: str) -> AsyncIterator[tuple[bytes, bytes]]:
        """(pcm, base64) per chunk; flood repeats the clause's chunks."""
        if behaviour.misbehave != "flood":
            async for chunk in self._clause_chunks(behaviour, text):
                yield chunk
            return
        chunks = [chunk async for chunk in self._clause_chunks(behaviour, text)]
        if not chunks:
            return
        sent_s = 0.0
        while True:
            for pcm, raw in chunks:
                yield pcm, raw
                sent_s += max(len(pcm), len(raw) * 3 // 4) / 2 / behaviour.sample_rate
                if sent_s >= behaviour.flood_audio_s:
                    return

    async def _clause_chunks(self, behaviour: PaddleSpeechBehaviour, text: str) -> AsyncIterator[tuple[bytes, bytes]]:
        """(pcm, base64) per chunk, sentence by sentence."""
        if behaviour.raw_body_pieces is not None:
            for raw in behaviour.raw_body_pieces:
                yield b"", bytes(raw)
            return
        if behaviour.pcm_override is not None:
            for pcm in split_chunks(behaviour.pcm_override):
                yield pcm, base64.b64encode(pcm)
            return
        for sentence in sentences(text):
            started = time.monotonic()
            pcm = await espeak_pcm(sentence, behaviour.sample_rate)
            self.synth_log.append((sentence, time.monotonic() - started))
            pcm += bytes(-len(pcm) % (2 * HOP_SAMPLES))
            for chunk in split_chunks(pcm):
                yield chunk, base64.b64encode(chunk)

    async def _pause(self, seconds: float) -> bool:
        """Sleep; False if the stub is stopping (the response should end now)."""
        if self._stopping.is_set():
            return False
        if seconds <= 0:
            return True
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return True
        return False


# -- helpers -------------------------------------------------------------------------------------


def _watch_ws_close(app: ASGIApp) -> ASGIApp:
    """Read each websocket's messages as they arrive, in order, into a queue the handler reads.

    The handler, like the real server, only notices a client that closed at its next send, up
    to a pacing delay later; reading eagerly records when the close really came
    (``scope[_CLOSED_AT]``), so that ``disconnect_times`` are the moments the connection closed.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await app(scope, receive, send)
            return
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        closed_at: list[float] = []

        async def pump() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    closed_at.append(time.monotonic())
                inbox.put_nowait(message)
                if message["type"] == "websocket.disconnect":
                    return

        reader = asyncio.create_task(pump(), name="paddlespeech-stub-ws-reader")
        try:
            await app({**scope, _CLOSED_AT: closed_at}, inbox.get, send)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    return wrapped


def _quiet_aborts(app: ASGIApp) -> ASGIApp:
    """Log deliberate aborts in one line instead of uvicorn's traceback; uvicorn still drops the connection."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except _StubAbort as exc:
            log.info("paddlespeech_stub_abort", reason=str(exc))

    return wrapped
