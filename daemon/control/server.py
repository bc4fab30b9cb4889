"""The control API's HTTP server (aiohttp) on the daemon's own event loop.

Every handler calls one ``VoiceControl`` method and returns: the conversation does the work on
its own tasks, so a burst of requests costs the loop a few microseconds each and never holds up
the audio. Every error is JSON ``{"error": "..."}`` naming the route and what was wrong; an
unexpected exception becomes a 500 and a log line, never a dead daemon.

Who may call: loopback and a Unix socket (mode 0660: the daemon's user and group) need no token;
any other address refuses to start without one. When a token is set, every route requires
``Authorization: Bearer <token>``, compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from daemon.config import CONTROL_TOKEN_ENV, ControlSettings
from daemon.control.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from daemon.control.metrics import Metrics
from daemon.control.port import Busy, VoiceControl
from daemon.errors import ControlError, HardwareError, ServiceError
from daemon.event_bus import Subscription

log = structlog.get_logger()

SOCKET_MODE = 0o660
MAX_SSE_CLIENTS = 16
SSE_KEEPALIVE_S = 15.0
SSE_QUEUE = 256
"""Events one /events client may fall behind before it loses its oldest ones."""
SSE_WRITE_TIMEOUT_S = 30.0
"""A client that takes no bytes for this long is dropped (a stalled reader must not hold a slot)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Address:
    """``control.listen`` parsed: a TCP host and port, or a Unix socket path."""

    host: str | None = None
    port: int = 0
    path: str | None = None

    @classmethod
    def parse(cls, listen: str) -> Address:
        if listen.startswith("unix:"):
            return cls(path=listen[5:])
        host, _, port = listen.rpartition(":")
        return cls(host=host.strip("[]"), port=int(port))

    @property
    def is_local(self) -> bool:
        """A Unix socket or a loopback address: no token needed."""
        if self.path is not None:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return False  # a host name other than localhost may resolve to anything


@asynccontextmanager
async def control_api(settings: ControlSettings, control: VoiceControl) -> AsyncIterator[ControlServer | None]:
    """The control API for ``async with``: the metrics task and the server, started; both stopped
    at the end. Yields None (and starts nothing) when ``settings.listen`` is unset.
    Raises ControlError when the server cannot start."""
    if settings.listen is None:
        yield None
        return
    metrics = Metrics()
    counting = asyncio.create_task(metrics.run(control.bus), name="control-metrics")
    server = ControlServer(settings, control, metrics=metrics)
    try:
        await server.start()
        yield server
    finally:
        await server.aclose()
        counting.cancel()
        await asyncio.gather(counting, return_exceptions=True)


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=_dumps)


class RequestError(Exception):
    """A bad request, answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ControlServer:
    """The control API. ``await start()`` binds, ``address`` is where, ``await aclose()`` stops.

    ``metrics`` is only rendered here; the caller runs ``metrics.run(bus)`` as a task of its own.
    """

    def __init__(
        self,
        settings: ControlSettings,
        control: VoiceControl,
        *,
        metrics: Metrics,
        max_sse_clients: int = MAX_SSE_CLIENTS,
        keepalive_s: float = SSE_KEEPALIVE_S,
    ) -> None:
        if settings.listen is None:
            raise ControlError("control.listen is not set: there is no control API to start")
        self._listen = settings.listen
        self._where = Address.parse(settings.listen)
        self._token = settings.token.encode() if settings.token else None
        self._max_body = settings.max_body_bytes
        self._control = control
        self._metrics = metrics
        self._max_sse = max_sse_clients
        self._keepalive_s = keepalive_s
        self._streams: list[Subscription] = []
        self._runner: web.AppRunner | None = None
        self._address: str | None = None
        self._closing = False

    @property
    def address(self) -> str:
        """Where it listens, in ``control.listen``'s form: ``127.0.0.1:PORT`` (the real port, also
        after asking for port 0), ``[::1]:PORT`` or ``unix:/PATH``."""
        if self._address is None:
            raise RuntimeError("ControlServer.address is known only after start()")
        return self._address

    async def start(self) -> None:
        if not self._where.is_local and self._token is None:
            raise ControlError(
                f"control.listen {self._listen!r} is not loopback or a Unix socket: "
                f"set a token in {CONTROL_TOKEN_ENV} (or listen on 127.0.0.1 or unix:/PATH)"
            )
        runner = web.AppRunner(self._build_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            self._address = await self._bind(runner)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("control_api_listening", address=self._address, token=self._token is not None)

    async def aclose(self) -> None:
        """Stop listening, end the /events streams, wait for the running requests (briefly).
        Closing twice is harmless."""
        if self._closing:
            return
        self._closing = True
        if self._runner is None:
            return  # never started
        for subscription in list(self._streams):
            self._control.bus.unsubscribe(subscription)
        await self._runner.cleanup()
        self._runner = None
        if self._where.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._where.path)
        log.info("control_api_closed", address=self._address)

    # --- binding ---------------------------------------------------------------------------

    async def _bind(self, runner: web.AppRunner) -> str:
        site: web.BaseSite
        if self._where.path is not None:
            path = self._where.path
            self._clear_socket_path(path)
            site = web.UnixSite(runner, path)
        else:
            site = web.TCPSite(runner, self._where.host, self._where.port)
        try:
            await site.start()
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise ControlError(f"control.listen {self._listen!r}: cannot listen: {reason}") from exc
        if self._where.path is not None:
            os.chmod(self._where.path, SOCKET_MODE)
            return f"unix:{self._where.path}"
        host, port = runner.addresses[0][:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _clear_socket_path(self, path: str) -> None:
        """Refuse a missing directory or a live daemon's socket; remove a dead daemon's socket."""
        parent = Path(path).parent
        if not parent.is_dir():
            raise ControlError(f"control.listen 'unix:{path}': the directory {parent} does not exist")
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"control.listen 'unix:{path}': the path exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)
            log.info("control_stale_socket_removed", path=path)
            return
        finally:
            probe.close()
        raise ControlError(f"control.listen 'unix:{path}': address already in use (another daemon answers there)")

    # --- the application ---------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._max_body, middlewares=[self._errors_middleware, self._auth_middleware]
        )
        app.router.add_get("/listen", self._listen_route, allow_head=False)
        app.router.add_post("/display", self._display)
        app.router.add_post("/wake", self._wake)
        app.router.add_post("/say", self._say)
        app.router.add_post("/stop", self._stop)
        app.router.add_get("/status", self._status, allow_head=False)
        app.router.add_get("/events", self._events, allow_head=False)
        app.router.add_get("/metrics", self._metrics_route, allow_head=False)
        return app  # no HEAD routes: a HEAD /listen must not start a turn

    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = f"{request.method} {request.path}"
        started = time.perf_counter()
        try:
            response = await handler(request)
        except RequestError as exc:
            response = json_error(exc.status, exc.message)
        except web.HTTPException as exc:
            response = json_error(exc.status, _http_error_message(route, exc, self._max_body))
        except Busy as exc:
            response = json_error(409, f"{route}: busy: {exc or 'the daemon is shutting down'}")
        except ServiceError as exc:
            response = json_error(502, f"{route}: the {exc.service} service failed: {exc}")
        except HardwareError as exc:
            response = json_error(503, f"{route}: the audio device failed: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("control_request_failed", route=route)
            response = json_error(500, f"{route}: internal error: {type(exc).__name__}")
        log.debug(
            "control_request", route=route, status=response.status, ms=round((time.perf_counter() - started) * 1000, 1)
        )
        return response

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
                log.warning("control_unauthorized", route=f"{request.method} {request.path}", remote=request.remote)
                return json_error(401, f"{request.method} {request.path}: missing or wrong bearer token")
        if request.content_length is not None and request.content_length > self._max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self._max_body, actual_size=request.content_length)
        return await handler(request)

    # --- routes -----------------------------------------------------------------------------

    async def _listen_route(self, request: web.Request) -> web.StreamResponse:
        text = await self._control.listen()
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _display(self, request: web.Request) -> web.StreamResponse:
        try:
            form = await request.post()
        except (ValueError, LookupError) as exc:  # not UTF-8, a broken multipart, an unknown charset
            return json_error(400, f"POST /display: the form cannot be read ({type(exc).__name__})")
        value = form.get("text")
        if isinstance(value, web.FileField):
            try:
                value = value.file.read().decode("utf-8")
            except UnicodeDecodeError:
                return json_error(400, "POST /display: the form field 'text' is not UTF-8")
        if not isinstance(value, str) or not value.strip():
            return json_error(400, "POST /display: the form field 'text' is missing or empty")
        await self._control.say(value, interrupt=False, wait=True)
        return web.Response(text="ok", content_type="text/plain", charset="utf-8")

    async def _wake(self, request: web.Request) -> web.StreamResponse:
        await self._control.wake()
        return web.json_response({"ok": True}, status=202)

    async def _say(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request, "POST /say")
        unknown = sorted(set(body) - {"text", "interrupt"})
        if unknown:
            return json_error(400, f"POST /say: unknown keys {unknown}; the keys are 'text' and 'interrupt'")
        text, interrupt = body.get("text"), body.get("interrupt", False)
        if not isinstance(text, str) or not text.strip():
            return json_error(400, "POST /say: 'text' must be a non-empty string")
        if not isinstance(interrupt, bool):
            return json_error(400, f"POST /say: 'interrupt' must be true or false, got {interrupt!r}")
        await self._control.say(text, interrupt=interrupt, wait=False)
        return web.json_response({"ok": True}, status=202)

    async def _stop(self, request: web.Request) -> web.StreamResponse:
        await self._control.stop()
        return web.json_response({"ok": True})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._control.status(), dumps=_dumps)

    async def _metrics_route(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self._closing:
            raise Busy("the control API is closing")
        if len(self._streams) >= self._max_sse:
            return json_error(503, f"GET /events: too many clients (at most {self._max_sse})")
        bus = self._control.bus
        subscription = bus.subscribe(maxsize=SSE_QUEUE)
        self._streams.append(subscription)
        remote = request.remote
        log.info("control_events_opened", remote=remote, clients=len(self._streams))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        try:
            await response.prepare(request)
            await self._stream(response, subscription, remote)
        except ConnectionResetError:
            log.info("control_events_client_gone", remote=remote)
        except TimeoutError:
            log.warning("control_events_client_stalled", remote=remote, seconds=SSE_WRITE_TIMEOUT_S)
        except Exception:  # a bug: the stream is already answered, so end it here, not in the middleware
            log.exception("control_events_failed", remote=remote)
        finally:
            if subscription in self._streams:
                self._streams.remove(subscription)
            bus.unsubscribe(subscription)
        return response

    async def _stream(self, response: web.StreamResponse, subscription: Subscription, remote: str | None) -> None:
        """Write events until the subscription closes. Raises TimeoutError for a client that has
        not taken a write for SSE_WRITE_TIMEOUT_S (its slot is freed), ConnectionResetError for
        one that went away."""

        async def send(text: str) -> None:
            async with asyncio.timeout(SSE_WRITE_TIMEOUT_S):
                await response.write(text.encode())

        await send(": moss-voice events\n\n")
        reported = 0
        while True:
            try:
                event = await asyncio.wait_for(subscription.get(), self._keepalive_s)
            except TimeoutError:
                await send(": keepalive\n\n")
                continue
            if event is None:
                break
            if subscription.dropped > reported:
                log.warning("control_events_client_behind", remote=remote, dropped=subscription.dropped - reported)
                await send(f": dropped {subscription.dropped - reported} events\n\n")
                reported = subscription.dropped
            await send(f"id: {event.seq}\nevent: {event.name}\ndata: {_dumps(event.as_dict())}\n\n")
        await response.write_eof()


def _dumps(value: Any) -> str:
    """Compact UTF-8 JSON on one line; a value JSON has no type for (a Path, an enum) as its str()."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


async def _json_object(request: web.Request, route: str) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except RecursionError:
        raise RequestError(400, f"{route}: the body is JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"{route}: the body is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise RequestError(400, f"{route}: the body must be a JSON object, got {type(body).__name__}")
    return body


def _http_error_message(route: str, exc: web.HTTPException, max_body: int) -> str:
    if isinstance(exc, web.HTTPNotFound):
        return f"{route}: no such route"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"{route}: method not allowed; allowed: {', '.join(sorted(exc.allowed_methods))}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"{route}: the body is larger than {max_body} bytes (control.max_body_bytes)"
    return exc.reason if exc.reason.startswith(route) else f"{route}: {exc.reason}"
