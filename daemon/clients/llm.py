"""Streaming chat client for OpenAI-compatible servers: vLLM first, llama.cpp's server too.

Wire facts are in docs/protocols.md, section "OpenAI-compatible chat" (vLLM and llama.cpp). In short:

* One ``POST {url}/chat/completions`` with ``stream: true``; the answer is SSE (``data: {json}``
  events, then ``data: [DONE]``). Text comes in ``choices[0].delta.content``; role-only and
  empty deltas carry nothing; the usage chunk has ``choices: []``.
* A stream that ends without a ``finish_reason`` was cut (llama.cpp ends a running stream when
  a new request arrives): the text that arrived is yielded, then :class:`LlmError` is raised.
* Errors after the 200 come as ``data: {"error": ...}`` events; before it, as JSON bodies in
  two shapes (``{"error": {...}}`` from vLLM 0.10.1, flat ``{"object": "error", ...}`` before,
  ``{"error": "Unauthorized"}``, llama.cpp's ``{"detail": ...}``).
* Barge-in is closing the connection: vLLM aborts the generation when the client goes away.
  Leaving :meth:`OpenAiCompatibleLlm.stream_chat` early closes the response before it was
  read to the end, and httpx then closes the socket instead of pooling it.

This module sends the request, maps error statuses and waits for readiness; reading the stream
is ``daemon.clients.llm_stream``, parsing SSE is ``daemon.clients.sse``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog

from daemon.clients.http_pool import send_retrying_stale, warm_up_connection
from daemon.clients.llm_stream import LlmStream, error_message
from daemon.clients.tls import untrusted_certificate_message
from daemon.config import LlmSettings
from daemon.errors import LlmAuthError, LlmError, LlmNotFoundError, LlmTimeout
from states.events import ChatMessage
from states.repeats import RepeatedFault

__all__ = ["LlmStream", "OpenAiCompatibleLlm", "error_message"]

log = structlog.get_logger()

_ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of a non-200 body read to find the server's message."""
_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 2.0


def _root_url(base: str) -> str:
    """``http://h:8000/v1`` -> ``http://h:8000``: /health lives beside /v1, not under it."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class OpenAiCompatibleLlm:
    """``states.ports.LlmClient`` over an OpenAI-compatible ``/v1/chat/completions`` (vLLM, llama.cpp).

    The ``httpx.AsyncClient`` belongs to the caller, who closes it. ``clock`` timestamps the
    latencies (``LlmStream.started_at`` / ``first_token_at``); timeouts use the event loop.
    """

    def __init__(
        self,
        settings: LlmSettings,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._faults = RepeatedFault("llm_error")
        """A failing request or stream is logged the first time, then counted: once a minute a
        line with ``repeats``, and ``llm_recovered`` once a stream ends well."""
        base = settings.endpoint.rstrip("/")
        self._chat_url = f"{base}/chat/completions"
        self._models_url = f"{base}/models"
        self._health_url = f"{_root_url(base)}/health"

    # -- requests -----------------------------------------------------------------------

    def build_request(self, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        """The JSON body of a streamed chat completion.

        ``settings.system_prompt`` is put first unless the messages already start with a system
        message. Sampling parameters are always explicit (vLLM otherwise applies the model's
        generation_config.json). ``stream_options`` is only ever sent together with
        ``stream: true`` (vLLM rejects it otherwise with 400).
        """
        s = self._settings
        chat = [m.as_dict() for m in messages]
        if s.system_prompt and not (chat and chat[0]["role"] == "system"):
            chat.insert(0, {"role": "system", "content": s.system_prompt})
        stop = [s.stop] if isinstance(s.stop, str) else [str(x) for x in s.stop]
        return {
            "model": s.model,
            "messages": chat,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stop": stop,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def _headers(self, *, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept}
        if self._settings.api_key:
            headers["Authorization"] = f"Bearer {self._settings.api_key}"
        return headers

    @asynccontextmanager
    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmStream]:
        """Send the request and yield an :class:`LlmStream` once the 200 headers arrived.

        Raises before yielding: :class:`LlmAuthError` (401), :class:`LlmNotFoundError` (404),
        :class:`LlmError` (other statuses, connection refused), :class:`LlmTimeout`.
        Leaving the context before the stream ended closes the connection (barge-in).
        """
        s = self._settings
        body = self.build_request(messages)
        loop = asyncio.get_running_loop()
        started_at = self._clock()
        reply_deadline = loop.time() + s.reply_timeout_s
        deadline = min(loop.time() + s.first_token_timeout_s, reply_deadline)
        log.info("llm_request", model=s.model, messages=len(body["messages"]), url=self._chat_url)
        request = self._http.build_request(
            "POST",
            self._chat_url,
            json=body,
            headers=self._headers(accept="text/event-stream"),
            timeout=httpx.Timeout(
                connect=s.connect_timeout_s, read=None, write=s.connect_timeout_s, pool=s.connect_timeout_s
            ),
        )
        response = await self._send(request, deadline)
        stream = LlmStream(
            response,
            settings=s,
            url=self._chat_url,
            clock=self._clock,
            started_at=started_at,
            first_token_deadline=deadline,
            reply_deadline=reply_deadline,
            faults=self._faults,
        )
        try:
            yield stream
        finally:
            await stream.aclose()
        if stream.result is not None and not stream.failed:
            self._faults.recovered("llm_recovered", url=self._chat_url)

    async def _send(self, request: httpx.Request, deadline: float) -> httpx.Response:
        """Send and wait for the headers; any non-200 or transport failure becomes an LlmError."""
        url = str(request.url)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await send_retrying_stale(self._http, request)
            except TimeoutError as exc:
                s = self._settings
                limit, key = min((s.first_token_timeout_s, "first_token"), (s.reply_timeout_s, "reply"))
                raise LlmTimeout(
                    f"LLM {key.replace('_', ' ')}: no response from {url} within {limit:g} s (llm.{key}_timeout_s)"
                ) from exc
            except httpx.TimeoutException as exc:
                raise LlmTimeout(f"timed out connecting to {url} ({type(exc).__name__})") from exc
            except httpx.ConnectError as exc:
                untrusted = untrusted_certificate_message("llm", url, exc)
                raise LlmError(untrusted or f"cannot connect to {url}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise LlmError(f"request to {url} failed: {type(exc).__name__}: {exc}") from exc
            if response.status_code != 200:
                try:
                    raise await self._status_error(response, url)
                finally:
                    await response.aclose()
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                try:
                    detail = (await self._read_limited(response)).decode("utf-8", "replace")[:200]
                finally:
                    await response.aclose()
                raise LlmError(f"{url} answered {content_type or 'no content-type'}, not an event stream: {detail!r}")
        except LlmError as exc:
            self._faults.failed(error=str(exc), kind=type(exc).__name__, status=exc.status, url=url)
            raise
        return response

    async def _read_limited(self, response: httpx.Response) -> bytes:
        data = bytearray()
        try:
            async with asyncio.timeout(self._settings.read_timeout_s):
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) >= _ERROR_BODY_LIMIT:
                        break
        except (TimeoutError, httpx.HTTPError) as exc:
            log.debug("llm_error_body_unreadable", error=repr(exc))
        return bytes(data[:_ERROR_BODY_LIMIT])

    async def _status_error(self, response: httpx.Response, url: str) -> LlmError:
        """A typed error carrying the server's own message, from a non-200 response."""
        raw = await self._read_limited(response)
        status = response.status_code
        try:
            message = error_message(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
            message = raw.decode("utf-8", "replace").strip()[:300] or response.reason_phrase
        text = f"{message} (HTTP {status} from {url})"
        if status == 401:
            return LlmAuthError(f"{text}; check MOSS_VOICE_LLM_API_KEY", status=status)
        if status == 404:
            return LlmNotFoundError(text, status=status)
        return LlmError(text, status=status)

    # -- readiness ----------------------------------------------------------------------

    async def wait_ready(self, *, max_wait_s: float) -> str:
        """Wait until the server serves ``settings.model``; return that model id.

        Polls ``GET /health`` (beside /v1) with backoff while connections are refused: vLLM does
        not listen until the model is loaded, so refused means "starting". A 503 means the engine
        is dead (:class:`LlmError` at once). Without /health (404, llama.cpp) readiness is read from
        ``/v1/models``. :class:`LlmAuthError` is raised at once, never retried. If the model is not
        listed, :class:`LlmNotFoundError` names the served ids (except on servers without /health,
        which accept any model name: there a warning is logged). :class:`LlmTimeout` after
        ``max_wait_s``.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + max_wait_s
        delay = _BACKOFF_START_S
        last_problem = "no attempt made"
        attempts = 0
        while True:
            attempts += 1
            try:
                has_health = await self._check_health(deadline)
                served = await self._served_models(deadline)
            except _NotYet as exc:
                last_problem = str(exc)
                log.debug("llm_starting", problem=last_problem, attempt=attempts)
            except LlmError as exc:
                log.warning("llm_error", error=str(exc), kind=type(exc).__name__, status=exc.status)
                raise
            else:
                return self._pick_model(served, has_health, ms=round((loop.time() - started) * 1000))
            remaining = deadline - loop.time()
            if remaining <= 0:
                error = LlmTimeout(f"LLM at {self._settings.endpoint} not ready after {max_wait_s:g} s: {last_problem}")
                log.warning("llm_error", error=str(error), kind="LlmTimeout", attempts=attempts)
                raise error
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.6, _BACKOFF_MAX_S)

    async def warm_up(self) -> None:
        """A cheap GET of /models while the ASR finishes: the chat request that follows finds an
        open connection (servers close idle ones after 5 s, and a TLS handshake to a remote GPU
        server costs round trips). Never raises: the request itself reports a dead server."""
        await warm_up_connection(
            self._http,
            self._models_url,
            headers=self._headers(),
            timeout_s=self._settings.connect_timeout_s,
            service="llm",
        )

    def _pick_model(self, served: list[str], has_health: bool, *, ms: int) -> str:
        model = self._settings.model
        if model not in served:
            if not has_health:
                log.warning("llm_model_not_listed", model=model, served=served, url=self._settings.endpoint)
                return model
            error = LlmNotFoundError(
                f"model {model!r} is not served at {self._settings.endpoint}; served: {', '.join(served) or 'none'}",
                status=404,
            )
            log.warning("llm_error", error=str(error), kind="LlmNotFoundError")
            raise error
        log.info("llm_ready", model=model, served=served, ms=ms)
        return model

    async def _get(self, url: str, deadline: float) -> httpx.Response:
        """One readiness GET; refused/timeouts/5xx-from-a-proxy become :class:`_NotYet`."""
        remaining = deadline - asyncio.get_running_loop().time()
        timeout = max(0.05, min(self._settings.connect_timeout_s, remaining))
        try:
            response = await self._http.get(url, headers=self._headers(), timeout=httpx.Timeout(timeout))
        except (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError) as exc:
            untrusted = untrusted_certificate_message("llm", url, exc)
            if untrusted is not None:  # waiting will not change the certificate
                raise LlmError(untrusted) from exc
            raise _NotYet(f"{url}: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise LlmError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code in (502, 504):
            raise _NotYet(f"{url}: HTTP {response.status_code} (a proxy in front of a server that is not up)")
        return response

    async def _check_health(self, deadline: float) -> bool:
        """True when /health said 200; False when the server has no /health (404)."""
        response = await self._get(self._health_url, deadline)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        if response.status_code == 503:
            raise LlmError(f"LLM engine at {self._health_url} is down (HTTP 503)", status=503)
        raise await self._status_error(response, self._health_url)

    async def _served_models(self, deadline: float) -> list[str]:
        response = await self._get(self._models_url, deadline)
        if response.status_code != 200:
            raise await self._status_error(response, self._models_url)
        try:
            data = response.json()["data"]
            ids = [str(item["id"]) for item in data]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise LlmError(f"unexpected /v1/models answer from {self._models_url}: {response.text[:200]!r}") from exc
        return ids

    async def aclose(self) -> None:
        """Nothing to release: the injected ``httpx.AsyncClient`` is closed by its owner."""


class _NotYet(Exception):
    """The server is not reachable yet (still starting); retried until the deadline."""
