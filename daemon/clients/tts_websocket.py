"""PaddleSpeech's websocket streaming TTS: one connection per sentence, JSON frames both ways.

See docs/protocols.md "PaddleSpeech: websocket" for the start / text / end sequence and the
status codes; a server that closes without a word is caught by the timeouts.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from daemon.clients.json_frame import json_object
from daemon.clients.tls import make_tls_context, untrusted_certificate_message
from daemon.clients.tts_common import (
    ClauseBudget,
    Clock,
    SampleRate,
    TtsAudioStream,
    audio_cap_bytes,
    body_excerpt,
    describe,
    excerpt,
)
from daemon.clients.tts_http import build_http_request
from daemon.config import TtsSettings
from daemon.errors import TtsError, TtsTimeout

log = structlog.get_logger()

__all__ = ["PaddleSpeechWsTts", "build_ws_text_message"]

WS_END_REPLY_TIMEOUT_S = 2.0
"""How long to wait for "connection will be closed" after the end signal."""
WS_CLOSE_TIMEOUT_S = 1.0
"""Closing handshake after a complete exchange."""
WS_ABORT_CLOSE_TIMEOUT_S = 0.1
"""Closing handshake when the caller leaves early (barge-in): do not wait for a busy server."""
WS_MAX_MESSAGE_BYTES = 4 * 2**20
"""About 65 s of 24 kHz audio in one message, more than the audio cap of the longest clause
(reply.max_clause_chars 120 x tts.audio_cap_s_per_char 0.4 s); PaddleSpeech sends a block of about 0.5 s per message."""


def build_ws_text_message(text: str, spk_id: int) -> dict[str, Any]:
    """The websocket text request; ``spk_id`` is required there (a missing key kills the session)."""
    return build_http_request(text, spk_id)


class PaddleSpeechWsTts:
    """The websocket protocol: one connection per ``synthesize`` call (docs/protocols.md "PaddleSpeech: websocket").

    ``http`` is only used for GET .../samplerate; without it a short-lived client is made.
    ``tls``: the context of wss:// connections (the one ``http`` was built with); None: built
    from ``settings.tls_verify`` and ``settings.ca_file`` at the first wss:// connection.
    """

    def __init__(
        self,
        settings: TtsSettings,
        http: httpx.AsyncClient | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._rate = SampleRate(settings, http)
        self._tls = tls

    async def sample_rate(self) -> int:
        return await self._rate.get()

    async def warm_up(self) -> None:
        """Nothing: every sentence has a websocket of its own, opened when it is sent."""

    def synthesize(self, text: str) -> AbstractAsyncContextManager[TtsAudioStream]:
        return self._synthesize(text)

    @asynccontextmanager
    async def _synthesize(self, text: str) -> AsyncIterator[TtsAudioStream]:
        settings = self._settings
        message = build_ws_text_message(text, settings.spk_id)
        log.info("tts_request", protocol="websocket", chars=len(text))
        started = self._clock()
        budget = ClauseBudget(settings, text)
        ws = await self._connect(budget)
        cap = audio_cap_bytes(settings, text, self._rate.known)
        stream = _WsAudioStream(text, settings, self._clock, ws, started, budget=budget, max_pcm_bytes=cap)
        try:
            await stream.handshake(message)
            yield stream
        finally:
            await stream.aclose()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = make_tls_context(verify=self._settings.tls_verify, ca_file=self._settings.ca_file)
        return self._tls

    async def _connect(self, budget: ClauseBudget) -> ClientConnection:
        url = self._settings.endpoint
        secure: dict[str, Any] = {"ssl": self._tls_context()} if url.startswith("wss:") else {}
        try:
            async with budget.waiting(url):
                return await connect(
                    url,
                    open_timeout=self._settings.connect_timeout_s,
                    close_timeout=WS_CLOSE_TIMEOUT_S,
                    ping_interval=None,  # the server blocks its loop while synthesizing ("PaddleSpeech: websocket")
                    max_size=WS_MAX_MESSAGE_BYTES,
                    proxy=None,
                    **secure,
                )
        except TtsTimeout as exc:  # the clause's budget ran out before the handshake
            log.debug("tts_error", url=url, error=str(exc))
            raise
        except TimeoutError as exc:
            timeout = self._settings.connect_timeout_s
            error: TtsError = TtsTimeout(f"TTS websocket {url}: no handshake within {timeout} s")
            cause: BaseException = exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = body_excerpt(bytes(exc.response.body or b""))
            message = f"TTS websocket {url} refused the handshake with HTTP {status}: {body}"
            error, cause = TtsError(message, status=status), exc
        except (OSError, WebSocketException) as exc:
            untrusted = untrusted_certificate_message("tts", url, exc)
            error = TtsError(untrusted or f"cannot connect to TTS websocket {url}: {describe(exc)}")
            cause = exc
        log.debug("tts_error", url=url, error=str(error))
        raise error from cause


class _WsAudioStream(TtsAudioStream):
    def __init__(
        self,
        text: str,
        settings: TtsSettings,
        clock: Clock,
        ws: ClientConnection,
        started: float,
        *,
        budget: ClauseBudget,
        max_pcm_bytes: int,
    ) -> None:
        super().__init__(text, settings.endpoint, clock, budget=budget, max_pcm_bytes=max_pcm_bytes)
        self.started_at = started
        self._handshake_budget = budget
        self._settings = settings
        self._ws = ws
        self._session: str | None = None
        self._completed = False
        """Status 2 arrived: the exchange ended as the protocol intends."""

    async def handshake(self, message: dict[str, Any]) -> None:
        """start -> "server ready" with a session, then the text request."""
        try:
            async with self._handshake_budget.waiting(self.url):
                await self._send({"task": "tts", "signal": "start"})
                reply = await self._recv_json("the 'server ready' reply to start")
            session = reply.get("session")
            if reply.get("status") != 0 or reply.get("signal") != "server ready" or not isinstance(session, str):
                raise TtsError(f"TTS websocket {self.url} answered start with {excerpt(reply)}")
            self._session = session
            await self._send(message)
        except TtsError as exc:
            self.finished = True
            log.debug("tts_error", url=self.url, error=str(exc))
            raise

    async def _receive(self) -> str | None:
        reply = await self._recv_json("audio")
        status = reply.get("status")
        if status == 1 and not isinstance(status, bool):
            audio = reply.get("audio")
            if not isinstance(audio, str):
                raise TtsError(f"TTS websocket {self.url} sent status 1 without a string 'audio': {excerpt(reply)}")
            return audio
        if status == 2 and not isinstance(status, bool):
            self._completed = True
            return None  # _after_last_piece says goodbye
        if status == -1:
            await self._end_session()
            raise TtsError(self._no_audio_or(f"TTS server {self.url} reported a synthesis error (status -1)"))
        raise TtsError(f"TTS websocket {self.url} sent an unexpected message: {excerpt(reply)}")

    async def _after_last_piece(self) -> None:
        await self._end_session()

    async def _end_session(self) -> None:
        """Send the end signal and wait briefly for "connection will be closed".

        Everything was received by now, so a server that does not acknowledge is logged, not raised.
        """
        try:
            await self._send({"task": "tts", "signal": "end", "session": self._session})
            timeout = min(WS_END_REPLY_TIMEOUT_S, self._settings.read_timeout_s)
            reply = await self._recv_json("the reply to end", timeout=timeout)
            if reply.get("signal") != "connection will be closed":
                log.warning("tts_ws_end_unexpected_reply", url=self.url, reply=excerpt(reply))
        except TtsError as exc:
            log.warning("tts_ws_end_unacknowledged", url=self.url, error=str(exc))

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self._ws.send(json.dumps(message, ensure_ascii=False))
        except ConnectionClosed as exc:
            raise TtsError(f"TTS websocket {self.url} closed the connection ({_close_reason(exc)})") from exc

    async def _recv_json(self, waiting_for: str, timeout: float | None = None) -> dict[str, Any]:
        timeout = self._settings.read_timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                raw = await self._ws.recv()
        except TimeoutError as exc:
            message = f"TTS websocket {self.url}: no message within {timeout} s while waiting for {waiting_for}"
            raise TtsTimeout(self._no_audio_or(message)) from exc
        except ConnectionClosed as exc:
            message = (
                f"TTS websocket {self.url} closed the connection with no reply"
                f" while waiting for {waiting_for} ({_close_reason(exc)})"
            )
            raise TtsError(self._no_audio_or(message)) from exc
        try:
            return json_object(raw)
        except ValueError as exc:
            raise TtsError(f"TTS websocket {self.url} sent {exc} while waiting for {waiting_for}") from exc

    async def _close(self) -> None:
        if not self._completed:
            # Barge-in or a failure: send the close frame but do not wait for a busy server.
            self._ws.close_timeout = WS_ABORT_CLOSE_TIMEOUT_S
        await self._ws.close()


def _close_reason(exc: ConnectionClosed) -> str:
    frame = exc.rcvd
    if frame is None:
        return "no close frame"
    return f"close code {frame.code}" + (f" {frame.reason!r}" if frame.reason else "")
