"""Reading one streamed chat completion: SSE events in, text deltas and a result out.

The wire format is in docs/protocols.md, sections "OpenAI: SSE framing", "OpenAI: chunks" and
"OpenAI: errors"; ``daemon.clients.llm`` sends the request and hands the 200 response here.
Three deadlines bound a stream, each named in the :class:`LlmTimeout` it raises: the first text
by ``first_token_timeout_s``, each later event within ``read_timeout_s`` of the one before, and
the whole stream by ``reply_timeout_s``. They count from events, not bytes: keep-alive comments
(``: ping``, llama.cpp) or a server dripping one byte a second extend none of them.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable

import httpx
import structlog

from daemon.clients.sse import SseError, SseParser
from daemon.config import LlmSettings
from daemon.errors import LlmError, LlmTimeout
from states.events import LlmResult
from states.repeats import RepeatedFault

__all__ = ["LlmStream", "error_message"]

log = structlog.get_logger()

_CHARS_PER_TOKEN_LIMIT = 64
"""The text of one stream may not exceed this many characters per ``max_tokens``: a token is a
few characters, so more means a server that ignores ``max_tokens`` (the reply is cut at
``reply.max_reply_chars`` anyway; this bounds what is kept when nothing speakable comes)."""
_DRAIN_LIMIT = 64 * 1024
_DRAIN_TIMEOUT_S = 0.5
"""After ``[DONE]``, how long to wait for the end of the body so the connection can be reused."""


def error_message(body: object) -> str:
    """The human message inside any of the error shapes these servers send.

    Handles ``{"error": {"message": ...}}``, the flat ``{"object": "error", "message": ...}``,
    ``{"error": "Unauthorized"}``, ``{"detail": "..."}`` (also FastAPI's list form) and nesting
    of those; anything else is rendered as compact JSON.
    """
    for _ in range(4):  # unwrap {"error": {"error": ...}} a few levels, never forever
        if isinstance(body, dict) and body.get("error") not in (None, "", {}):
            body = body["error"]
        else:
            break
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        for key in ("message", "detail", "msg"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if value:
                return json.dumps(value, ensure_ascii=False)
    return json.dumps(body, ensure_ascii=False)[:500]


class LlmStream:
    """The text deltas of one streamed chat completion (implements ``states.ports.LlmStream``).

    ``async for delta in stream`` yields non-empty strings. Once the stream ended, ``result``
    holds the finish reason and usage. A mid-stream error, a cut connection or a missing finish
    reason raises :class:`LlmError` *after* every piece of text that arrived before it.
    """

    def __init__(
        self,
        response: httpx.Response,
        *,
        settings: LlmSettings,
        url: str,
        clock: Callable[[], float],
        started_at: float,
        first_token_deadline: float,
        reply_deadline: float | None = None,
        faults: RepeatedFault | None = None,
    ) -> None:
        """``faults``: where a failure is logged, so that one that recurs turn after turn is
        counted, not logged every time (the client's, shared by its requests)."""
        self.result: LlmResult | None = None
        self.failed = False
        """The stream ended in an error (its text so far kept)."""
        self._faults = faults if faults is not None else RepeatedFault("llm_error", every_s=0)
        self.started_at = started_at
        """Clock time at which the request was sent."""
        self.first_token_at: float | None = None
        """Clock time at which the first text arrived (for llm_first_token latency)."""
        self.text = ""
        """All text received so far (kept when the stream fails)."""
        self.stop_reason: str | int | None = None
        self._response = response
        self._chunks: AsyncIterator[bytes] = response.aiter_bytes()
        self._settings = settings
        self._url = url
        self._clock = clock
        self._deadline = first_token_deadline  # loop time
        self._reply_deadline = reply_deadline if reply_deadline is not None else float("inf")
        self._last_event_at = 0.0  # loop time of the last complete event, once text flows
        self._parser = SseParser()
        self._pending: deque[str] = deque()
        self._done = False  # no more reading: [DONE], EOF or an error
        self._saw_done_marker = False
        self._error: LlmError | None = None
        self._finish_reason: str | None = None
        self._usage: dict[str, int] | None = None
        self._closed = False

    def __aiter__(self) -> LlmStream:
        return self

    async def __anext__(self) -> str:
        while not self._pending:
            if self._closed and not self._done:
                raise LlmError(f"stream from {self._url} read after its context was left")
            if self._done:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise StopAsyncIteration
            await self._pump()
        return self._pending.popleft()

    @property
    def finished(self) -> bool:
        """True once the stream reached its end (normally or not)."""
        return self._done

    async def aclose(self) -> None:
        """Close the HTTP response. Before the end of the stream this closes the connection."""
        if self._closed:
            return
        self._closed = True
        if not self._done:
            log.info("llm_cancelled", chars=len(self.text), ms=self._ms_since_start())
        elif self._saw_done_marker and self._error is None:
            await self._drain()
        try:
            await self._chunks.aclose()  # type: ignore[attr-defined]
        finally:
            await self._response.aclose()

    # -- reading ------------------------------------------------------------------------

    async def _pump(self) -> None:
        """Read one network chunk and turn it into pending text, a result or an error."""
        loop = asyncio.get_running_loop()
        deadline, what = self._next_deadline()
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(self._chunks, None)
        except TimeoutError:
            self._fail(LlmTimeout(what))
            return
        except (httpx.HTTPError, httpx.StreamError) as exc:
            self._fail(
                LlmError(
                    f"stream from {self._url} truncated: connection broke after {len(self.text)} chars "
                    f"({type(exc).__name__}: {exc})"
                ),
                exc,
            )
            return
        try:
            events = self._parser.close() if chunk is None else self._parser.feed(chunk)
        except SseError as exc:
            self._fail(LlmError(f"bad SSE from {self._url}: {exc}"), exc)
            return
        if events:
            self._last_event_at = loop.time()
        for data in events:
            if self._done:
                break
            self._event(data)
        if self._parser.broken and not self._done:
            try:  # the text before a broken event was taken; now the error, without another read
                self._parser.close()
            except SseError as exc:
                self._fail(LlmError(f"bad SSE from {self._url}: {exc}"), exc)
            return
        if chunk is None and not self._done:
            self._end()
        await asyncio.sleep(0)  # a server flooding the stream must not starve the loop (the speaker)

    def _next_deadline(self) -> tuple[float, str]:
        """The loop time by which the next event must have come, and the error text if it does not."""
        s = self._settings
        if self.first_token_at is None:
            deadline = self._deadline
            what = f"LLM first token: no text from {self._url} within {s.first_token_timeout_s:g} s"
            what += " (llm.first_token_timeout_s)"
        else:
            deadline = self._last_event_at + s.read_timeout_s
            what = f"LLM stream stalled: no event from {self._url} for {s.read_timeout_s:g} s (llm.read_timeout_s)"
        if self._reply_deadline <= deadline:
            deadline = self._reply_deadline
            what = (
                f"LLM reply: not finished within {s.reply_timeout_s:g} s (llm.reply_timeout_s); "
                f"{len(self.text)} chars came from {self._url}"
            )
        return deadline, what

    def _event(self, data: str) -> None:
        if data.strip() == "[DONE]":
            self._saw_done_marker = True
            self._end()
            return
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested deeper than json can follow
            self._fail(LlmError(f"malformed stream event from {self._url} (not JSON): {data[:100]!r}"))
            return
        if not isinstance(obj, dict):
            self._fail(LlmError(f"malformed stream event from {self._url} (not an object): {data[:100]!r}"))
            return
        if obj.get("error") not in (None, "", {}):
            self._fail(LlmError(f"server error mid-stream: {error_message(obj)}"))
            return
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
        choices = obj.get("choices")
        if choices is None or choices == []:
            return  # the usage chunk, or a server-specific extra
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            self._fail(LlmError(f"malformed stream chunk from {self._url}: choices is {choices!r:.100}"))
            return
        choice = choices[0]
        delta = choice.get("delta")
        if delta is not None and not isinstance(delta, dict):
            self._fail(LlmError(f"malformed stream chunk from {self._url}: delta is {delta!r:.100}"))
            return
        content = (delta or {}).get("content")
        if content is not None and not isinstance(content, str):
            self._fail(LlmError(f"malformed stream chunk from {self._url}: content is {content!r:.100}"))
            return
        if content:
            limit = _CHARS_PER_TOKEN_LIMIT * self._settings.max_tokens
            if len(self.text) + len(content) > limit:
                self._fail(
                    LlmError(f"answer from {self._url} longer than {limit} characters: the server ignores max_tokens")
                )
                return
            if self.first_token_at is None:
                self.first_token_at = self._clock()
                log.info("llm_first_token", ms=self._ms(self.started_at, self.first_token_at))
            self.text += content
            self._pending.append(content)
        finish = choice.get("finish_reason")
        if finish is not None:
            self._finish_reason = str(finish)
            self.stop_reason = choice.get("stop_reason")

    def _end(self) -> None:
        """The stream ended ([DONE] or EOF): set ``result``; a missing finish reason is an error."""
        self._done = True
        self.result = LlmResult(finish_reason=self._finish_reason, usage=self._usage)
        if self._finish_reason is None:
            self._fail(
                LlmError(
                    f"stream from {self._url} truncated: it ended without a finish_reason after {len(self.text)} chars"
                )
            )
            return
        log.info(
            "llm_finished",
            finish_reason=self._finish_reason,
            stop_reason=self.stop_reason,
            usage=self._usage,
            chars=len(self.text),
            ms=self._ms_since_start(),
        )

    def _fail(self, error: LlmError, cause: BaseException | None = None) -> None:
        if cause is not None:
            error.__cause__ = cause
        self._done = True
        self._error = error
        if self.result is None:
            self.result = LlmResult(finish_reason=self._finish_reason, usage=self._usage)
        self.failed = True
        self._faults.failed(
            error=str(error), kind=type(error).__name__, chars=len(self.text), ms=self._ms_since_start()
        )

    async def _drain(self) -> None:
        """Read the (normally empty) rest of the body so the connection can go back to the pool."""
        read = 0
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                async for chunk in self._chunks:
                    read += len(chunk)
                    if read > _DRAIN_LIMIT:
                        break
        except (TimeoutError, httpx.HTTPError) as exc:
            log.debug("llm_drain_failed", error=repr(exc))

    def _ms(self, start: float, end: float) -> int:
        return round((end - start) * 1000)

    def _ms_since_start(self) -> int:
        return self._ms(self.started_at, self._clock())
