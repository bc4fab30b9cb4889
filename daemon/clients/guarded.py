"""A service that keeps failing is marked down, said so at once, and probed in the background.

Each service (ASR, LLM, TTS) has one or more endpoints (``url`` may be a list: replicas, in order
of preference), each with a client of its own. A :class:`ServiceGuard` keeps every endpoint's
up/down state; ``GuardedAsr``, ``GuardedLlm`` and ``GuardedTts`` are the conversation's ports
(``states.ports``) in front of the clients, which stay as they are:

* A request goes to the first endpoint that is up. When it fails *before the endpoint answered*
  (see :func:`marks_down`), that endpoint is marked down and the next one up is tried at once,
  in the same request; nothing was heard yet, so nothing is said twice.
* When no endpoint is up, the request fails at once, untried, with the service's
  :class:`~daemon.errors.ServiceDown` error: "llm is down since 12:03:04: <last error>; retrying
  in the background", instead of the user waiting out a connect or read timeout on every turn.
* Each endpoint marked down is probed in the background (the start-up probe: an ASR session
  opened and closed, the LLM's readiness check, the TTS's sample rate) after waits that grow
  with :class:`~daemon.clients.backoff.Backoff` (0.5 s doubling to 30 s, +-20 %) until it
  answers, then it is up again and preferred again by its place in the list. A request told
  "down" cuts the current wait short: the service someone needs is probed at once, so the next
  request finds it if it is back, instead of up to 30 s later.

What marks an endpoint down, decided once here (:func:`marks_down`): a failure before the
endpoint gave any answer -- connection refused, name not resolved, a connect or handshake
timeout, a TLS failure, no response headers in time -- or an answer with an HTTP 5xx status (the
server is broken). What does not: a 4xx status (the request or the config is wrong, every
replica would say the same: 401 wrong key, 404 unknown model), and anything after the answer
began (a malformed payload, a stream cut or stalled, an error event in the stream): one bad
answer fails its turn and says nothing about the next.

Logs: ``service_down`` once when the last endpoint goes down, ``service_up`` when one is back
(with ``failures``: the failed probes and requests in between); with several endpoints also
``endpoint_down`` / ``endpoint_up`` per endpoint. Never a line per probe. The same names go to
the event bus (GET /status, STATUS=, the metrics read them).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from websockets.exceptions import InvalidStatus

from daemon.clients.backoff import Backoff
from daemon.errors import AsrDown, LlmDown, ServiceDown, ServiceError, TtsDown
from states.events import ChatMessage
from states.ports import AsrClient, AsrSession, EventSink, LlmClient, LlmStream, TtsClient
from states.repeats import RepeatedFault

__all__ = ["PROBE_S", "EndpointState", "GuardedAsr", "GuardedLlm", "GuardedTts", "ServiceGuard", "marks_down"]

log = structlog.get_logger()

PROBE_S = 3.0
"""How long one probe of one endpoint may take, at start-up and in the background."""

T = TypeVar("T")
Probe = Callable[[int], Awaitable[object]]
"""Probes the endpoint of that index; returns when it answers, raises when it does not."""

_DOWN_ERRORS: dict[str, type[ServiceDown]] = {"asr": AsrDown, "llm": LlmDown, "tts": TtsDown}


class _NoEvents:
    def emit(self, event: str, /, **fields: object) -> None:
        pass


def marks_down(exc: BaseException) -> bool:
    """Whether ``exc``, raised before the endpoint answered a request, marks the endpoint down:
    yes unless it is an answer with a status below 500 (see the module docstring)."""
    status = getattr(exc, "status", None)
    cause = exc.__cause__
    if status is None and isinstance(cause, InvalidStatus):
        status = cause.response.status_code
    return not (isinstance(status, int) and status < 500)


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@dataclass
class EndpointState:
    """One endpoint's health, as GET /status shows it."""

    url: str
    up: bool = True
    down_since: float | None = None
    """Wall-clock time it was marked down; None while up."""
    last_error: str | None = None
    failures: int = 0
    """Failed requests and probes since it was marked down."""
    prober: asyncio.Task[None] | None = field(default=None, repr=False)
    hurry: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    """Set by a request told "down": the prober's current wait ends now."""

    def snapshot(self) -> dict[str, Any]:
        return {"url": self.url, "up": self.up, "down_since": self.down_since, "last_error": self.last_error}


class ServiceGuard:
    """The up/down state of one service's endpoints, and the background probes of those down.

    ``probe(i)`` checks endpoint ``i``; each try is bounded by ``probe_timeout_s``. ``sleep`` and
    ``clock`` (wall clock, for ``down_since``) are injectable for tests. Background probes start
    with :meth:`start` (after start-up, so that what start-up found is announced once the event
    bus has its listeners) and stop with :meth:`aclose`.
    """

    def __init__(
        self,
        service: str,
        urls: Sequence[str],
        probe: Probe,
        *,
        events: EventSink | None = None,
        backoff: Backoff | None = None,
        probe_timeout_s: float = PROBE_S,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if not urls:
            raise ValueError(f"{service}: a guarded service needs at least one endpoint")
        self.service = service
        self.endpoints = [EndpointState(url) for url in urls]
        self._probe = probe
        self._events: EventSink = events if events is not None else _NoEvents()
        self._backoff = backoff if backoff is not None else Backoff()
        self._probe_timeout_s = probe_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._started = False
        self._closed = False
        # Logged once when it goes down (every_s = inf), counted until it is back.
        self._down = RepeatedFault("service_down", every_s=math.inf)
        self._endpoint_down = [RepeatedFault("endpoint_down", every_s=math.inf) for _ in urls]
        self._down_since: float | None = None
        self._last_error: str | None = None
        """The latest failure of any endpoint, request or probe: what a request told "down" reads."""

    # -- state ----------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """At least one endpoint is up."""
        return any(e.up for e in self.endpoints)

    @property
    def down_since(self) -> float | None:
        """Wall-clock time the service went down (every endpoint down); None while it is up."""
        return self._down_since

    def usable(self) -> list[int]:
        """The endpoints that are up, in order of preference."""
        return [i for i, e in enumerate(self.endpoints) if e.up]

    def down_error(self) -> ServiceDown:
        """The error a request gets, untried, while every endpoint is down."""
        since = self._down_since if self._down_since is not None else self._clock()
        last = self._last_error or "no endpoint answered"
        several = f" ({len(self.endpoints)} endpoints)" if len(self.endpoints) > 1 else ""
        at = time.strftime("%H:%M:%S", time.localtime(since))
        return _DOWN_ERRORS.get(self.service, ServiceDown)(
            f"{self.service} is down since {at}{several}: {last}; retrying in the background"
        )

    def snapshot(self) -> dict[str, Any]:
        """For GET /status: when the service went down, and each endpoint's state."""
        return {"down_since": self._down_since, "endpoints": [e.snapshot() for e in self.endpoints]}

    # -- requests -------------------------------------------------------------------------

    async def first(self, attempt: Callable[[int], Awaitable[T]]) -> T:
        """``attempt(i)`` on the first endpoint up; on a failure that marks it down, the next.
        Raises the service's ServiceDown, untried, when none is up; else the last failure."""
        last: ServiceError | None = None
        for i in self.usable():
            try:
                return await attempt(i)
            except ServiceError as exc:
                if not marks_down(exc):
                    raise
                self.failed(i, exc)
                last = exc
        if last is not None:
            raise last  # the turn that finds the service down reports what went wrong
        self._down.failed()  # counted, not logged: the first failure was
        for endpoint in self.endpoints:
            endpoint.hurry.set()  # someone wants it: probe now, so that the next request may find it back
        raise self.down_error()

    def failed(self, i: int, exc: BaseException) -> None:
        """Endpoint ``i`` failed in a way that marks it down (the caller decided: ``marks_down``)."""
        endpoint = self.endpoints[i]
        endpoint.last_error = self._last_error = _text(exc)
        endpoint.failures += 1
        if not endpoint.up:
            return
        endpoint.up = False
        endpoint.down_since = self._clock()
        several = len(self.endpoints) > 1
        if several:
            self._endpoint_down[i].failed(service=self.service, url=endpoint.url, error=endpoint.last_error)
            self._events.emit("endpoint_down", service=self.service, url=endpoint.url, error=endpoint.last_error)
        if not self.up:
            self._down_since = endpoint.down_since
            self._down.failed(service=self.service, url=endpoint.url, error=endpoint.last_error)
            self._events.emit("service_down", service=self.service, url=endpoint.url, error=endpoint.last_error)
        self._start_prober(i)

    def _recovered(self, i: int) -> None:
        endpoint = self.endpoints[i]
        if endpoint.up:
            return
        was_down = not self.up
        down_s = round(self._clock() - (endpoint.down_since or self._clock()), 1)
        failures, endpoint.failures = endpoint.failures, 0
        endpoint.up, endpoint.down_since, endpoint.last_error = True, None, None
        if len(self.endpoints) > 1:
            self._endpoint_down[i].total = failures  # what the endpoint's line reports
            self._endpoint_down[i].recovered("endpoint_up", service=self.service, url=endpoint.url, down_s=down_s)
            self._events.emit("endpoint_up", service=self.service, url=endpoint.url, down_s=down_s)
        if was_down:
            down_s = round(self._clock() - (self._down_since or self._clock()), 1)
            self._down_since = None
            self._down.recovered("service_up", service=self.service, url=endpoint.url, down_s=down_s)
            self._events.emit("service_up", service=self.service, url=endpoint.url, down_s=down_s)

    # -- probes ---------------------------------------------------------------------------

    async def probe_all(self) -> None:
        """Start-up: probe every endpoint at once (each bounded by ``probe_timeout_s``); those
        that fail are marked down. Never raises: a service may come later."""
        started = time.monotonic()

        async def one(i: int) -> None:
            try:
                await self._probe_once(i)
            except Exception as exc:  # noqa: BLE001 - a verdict, never fatal
                self.failed(i, exc)
            else:
                ms = round((time.monotonic() - started) * 1000)
                log.info("service_up", service=self.service, url=self.endpoints[i].url, ms=ms)

        await asyncio.gather(*(one(i) for i in range(len(self.endpoints))))

    def start(self) -> None:
        """From now on, probe each endpoint down in the background; announce the services found
        down (again, on the bus only: its listeners may have come after start-up)."""
        self._started = True
        for i, endpoint in enumerate(self.endpoints):
            if not endpoint.up:
                if len(self.endpoints) > 1:
                    error = endpoint.last_error
                    self._events.emit("endpoint_down", service=self.service, url=endpoint.url, error=error)
                self._start_prober(i)
        if not self.up:
            last = self.endpoints[-1]
            self._events.emit("service_down", service=self.service, url=last.url, error=last.last_error)

    async def aclose(self) -> None:
        """Stop probing."""
        self._closed = True
        probers = [e.prober for e in self.endpoints if e.prober is not None]
        for task in probers:
            task.cancel()
        for task in probers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _start_prober(self, i: int) -> None:
        endpoint = self.endpoints[i]
        if not self._started or self._closed or (endpoint.prober is not None and not endpoint.prober.done()):
            return
        endpoint.prober = asyncio.get_running_loop().create_task(
            self._probe_until_up(i), name=f"probe-{self.service}-{i}"
        )

    async def _probe_until_up(self, i: int) -> None:
        endpoint = self.endpoints[i]
        delays: Iterator[float] = self._backoff.delays()
        while not endpoint.up:
            await self._wait(endpoint, next(delays))
            endpoint.hurry.clear()  # a request during the probe does not ask for another at once
            try:
                await self._probe_once(i)
            except Exception as exc:  # noqa: BLE001 - counted; the next probe comes after a longer wait
                endpoint.last_error = self._last_error = _text(exc)
                endpoint.failures += 1
                if not self.up:
                    self._down.failed()  # counted, never logged here
                log.debug("probe_failed", service=self.service, url=endpoint.url, error=endpoint.last_error)
            else:
                self._recovered(i)

    async def _wait(self, endpoint: EndpointState, delay: float) -> None:
        """``delay`` (back-off), or less if a request is told the service is down meanwhile."""
        sleeping = asyncio.ensure_future(self._sleep(delay))
        hurried = asyncio.ensure_future(endpoint.hurry.wait())
        try:
            await asyncio.wait({sleeping, hurried}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeping, hurried):
                task.cancel()
            await asyncio.gather(sleeping, hurried, return_exceptions=True)

    async def _probe_once(self, i: int) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel.
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                await self._probe(i)
        except TimeoutError as exc:
            url = self.endpoints[i].url
            raise TimeoutError(f"{url}: no answer to the probe within {self._probe_timeout_s:g} s") from exc


class GuardedAsr:
    """``states.ports.AsrClient`` over one client per endpoint. The session is the chosen
    endpoint's own: once it is open, the ASR has answered."""

    def __init__(self, guard: ServiceGuard, clients: Sequence[AsrClient]) -> None:
        self.guard = guard
        self._clients = list(clients)

    async def open_session(self) -> AsrSession:
        return await self.guard.first(lambda i: self._clients[i].open_session())


class GuardedLlm:
    """``states.ports.LlmClient`` over one client per endpoint. A stream that got its 200 has
    answered: what fails after that is the turn's, not the endpoint's."""

    def __init__(self, guard: ServiceGuard, clients: Sequence[LlmClient]) -> None:
        self.guard = guard
        self._clients = list(clients)

    @asynccontextmanager
    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmStream]:
        async with AsyncExitStack() as stack:
            yield await self.guard.first(lambda i: stack.enter_async_context(self._clients[i].stream_chat(messages)))

    async def warm_up(self) -> None:
        """Warms the endpoint the next request will go to; none when all are down."""
        usable = self.guard.usable()
        if usable:
            await self._clients[usable[0]].warm_up()


class GuardedTts:
    """``states.ports.TtsClient`` over one client per endpoint (each yields audio at the rate it
    says: wrap each in ``ResampledTts`` when the endpoints may differ)."""

    def __init__(self, guard: ServiceGuard, clients: Sequence[TtsClient]) -> None:
        self.guard = guard
        self._clients = list(clients)

    async def sample_rate(self) -> int:
        return await self.guard.first(lambda i: self._clients[i].sample_rate())

    def synthesize(self, text: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._synthesize(text)

    @asynccontextmanager
    async def _synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        async with AsyncExitStack() as stack:
            yield await self.guard.first(lambda i: stack.enter_async_context(self._clients[i].synthesize(text)))

    async def warm_up(self) -> None:
        usable = self.guard.usable()
        if usable:
            await self._clients[usable[0]].warm_up()
