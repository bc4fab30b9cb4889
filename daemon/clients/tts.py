"""PaddleSpeech streaming TTS clients: HTTP and websocket (docs/protocols.md, "PaddleSpeech streaming TTS").

Both yield PCM (int16 mono at ``await sample_rate()``) chunk by chunk as it arrives, in
whole samples. A sentence counts as spoken only if audio came and the stream ended properly:
zero audio, a cut stream, websocket status -1 or base64 that does not decode raise TtsError
("PaddleSpeech: HTTP stream", "PaddleSpeech: websocket"). Leaving the ``synthesize`` context
early closes the connection at once, which is the only way to cancel a synthesis
("PaddleSpeech: cancelling").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import httpx
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from daemon.clients.b64stream import Base64StreamDecoder
from daemon.clients.http_pool import send_retrying_stale, warm_up_connection
from daemon.config import TtsSettings
from daemon.errors import TtsError, TtsTimeout
from hardware.pcm import PcmFramer
from states.ports import TtsClient

log = structlog.get_logger()

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "PaddleSpeechHttpTts",
    "PaddleSpeechWsTts",
    "TtsAudioStream",
    "build_http_request",
    "make_tts",
]

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 96000
WS_END_REPLY_TIMEOUT_S = 2.0
"""How long to wait for "connection will be closed" after the end signal."""
WS_CLOSE_TIMEOUT_S = 1.0
"""Closing handshake after a complete exchange."""
WS_ABORT_CLOSE_TIMEOUT_S = 0.1
"""Closing handshake when the caller leaves early (barge-in): do not wait for a busy server."""
WS_MAX_MESSAGE_BYTES = 16 * 2**20
_EXCERPT_CHARS = 300

Clock = Callable[[], float]


def build_http_request(text: str, spk_id: int) -> dict[str, Any]:
    """The JSON body of POST /paddlespeech/tts/streaming: always ``text`` and an int ``spk_id``.

    speed, volume and sample_rate are left out: the streaming endpoint ignores them
    (docs/protocols.md "PaddleSpeech: HTTP stream").
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return {"text": text, "spk_id": _int_spk_id(spk_id)}


def build_ws_text_message(text: str, spk_id: int) -> dict[str, Any]:
    """The websocket text request; ``spk_id`` is required there (a missing key kills the session)."""
    return build_http_request(text, spk_id)


def make_tts(settings: TtsSettings, http: httpx.AsyncClient) -> TtsClient:
    """The client for ``settings.url``: ws(s):// gives the websocket protocol, http(s):// HTTP."""
    if settings.protocol == "websocket":
        return PaddleSpeechWsTts(settings, http=http)
    return PaddleSpeechHttpTts(settings, http)


# -- shared pieces ------------------------------------------------------------------------------


class _SampleRate:
    """GET {url}/samplerate once, validate it, and remember it."""

    def __init__(self, settings: TtsSettings, http: httpx.AsyncClient | None) -> None:
        self._settings = settings
        self._http = http
        self._rate: int | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> int:
        if self._rate is not None:
            return self._rate
        async with self._lock:
            if self._rate is None:
                if self._http is not None:
                    self._rate = await self._fetch(self._http)
                else:
                    async with httpx.AsyncClient() as http:
                        self._rate = await self._fetch(http)
                log.info("tts_sample_rate", url=self._settings.samplerate_url, sample_rate=self._rate)
        return self._rate

    async def _fetch(self, http: httpx.AsyncClient) -> int:
        url = self._settings.samplerate_url
        try:
            response = await http.get(url, timeout=_http_timeout(self._settings))
        except httpx.TimeoutException as exc:
            raise TtsTimeout(f"TTS sample rate request to {url} timed out: {_describe(exc)}") from exc
        except httpx.HTTPError as exc:
            raise TtsError(f"cannot reach TTS server {url}: {_describe(exc)}") from exc
        if response.status_code != 200:
            excerpt = _error_detail(response.content)
            raise TtsError(f"TTS sample rate request to {url} got HTTP {response.status_code}: {excerpt}")
        try:
            body = response.json()
        except ValueError as exc:
            raise TtsError(f"TTS sample rate from {url} is not JSON: {_body_excerpt(response.content)}") from exc
        rate = body.get("sample_rate") if isinstance(body, dict) else None
        if not isinstance(rate, int) or isinstance(rate, bool):
            excerpt = _body_excerpt(response.content)
            raise TtsError(f"TTS sample rate from {url} has no integer 'sample_rate': {excerpt}")
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise TtsError(f"TTS sample rate {rate} from {url} is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
        return rate


class TtsAudioStream:
    """The PCM of one ``synthesize`` call, as an async iterator of whole-sample chunks.

    ``first_audio_at`` is the monotonic time the first audio arrived (None before that);
    ``pcm_bytes`` counts what has been yielded. Subclasses supply ``_receive``: the next
    base64 piece, or None at the proper end of the stream.
    """

    def __init__(self, text: str, url: str, clock: Clock) -> None:
        self.text = text
        self.url = url
        self.first_audio_at: float | None = None
        self.pcm_bytes = 0
        self.finished = False
        """True once the stream ended, well or badly; False while audio may still come."""
        self._clock = clock
        self.started_at = clock()
        self._decoder = Base64StreamDecoder()
        self._framer = PcmFramer(2)

    def __aiter__(self) -> TtsAudioStream:
        return self

    async def __anext__(self) -> bytes:
        while not self.finished:
            try:
                piece = await self._receive()
                if piece is None:
                    self._end()
                    break
                pcm = self._framer.feed(self._decode(piece))
            except TtsError as exc:
                self.finished = True
                log.warning("tts_error", url=self.url, error=str(exc), bytes=self.pcm_bytes, ms=self._ms())
                raise
            if pcm:
                if self.first_audio_at is None:
                    self.first_audio_at = self._clock()
                    log.info("tts_first_audio", ms=self._ms(self.first_audio_at))
                self.pcm_bytes += len(pcm)
                return pcm
        raise StopAsyncIteration

    async def _receive(self) -> bytes | str | None:
        raise NotImplementedError

    async def _close(self) -> None:
        """Release the connection; called when the ``synthesize`` context exits."""

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            log.info("tts_closed_early", bytes=self.pcm_bytes, ms=self._ms())
        await self._close()

    def _decode(self, piece: bytes | str) -> bytes:
        try:
            return self._decoder.feed(piece)
        except ValueError as exc:
            raise TtsError(f"TTS server {self.url} sent audio that is not base64: {exc}") from exc

    def _end(self) -> None:
        """The server ended the stream properly: check that it was a whole, non-empty one."""
        self.finished = True
        try:
            self._decoder.close()
        except ValueError as exc:
            raise TtsError(f"TTS audio from {self.url} is cut: {exc}") from exc
        rest = self._framer.close()
        if rest:
            log.warning("tts_partial_sample_dropped", bytes=len(rest))
        if self.pcm_bytes == 0:
            raise TtsError(f"no audio for {_quote(self.text)} from {self.url}")
        log.info("tts_finished", bytes=self.pcm_bytes, ms=self._ms())

    def _no_audio_or(self, message: str) -> str:
        """``message``, prefixed by "no audio" when nothing came at all."""
        if self.pcm_bytes == 0:
            return f"no audio for {_quote(self.text)}: {message}"
        return message

    def _ms(self, at: float | None = None) -> int:
        return round(((self._clock() if at is None else at) - self.started_at) * 1000)


# -- HTTP ---------------------------------------------------------------------------------------


class PaddleSpeechHttpTts:
    """POST /paddlespeech/tts/streaming, decoding the chunked base64 body as it arrives."""

    def __init__(self, settings: TtsSettings, http: httpx.AsyncClient, *, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._rate = _SampleRate(settings, http)

    async def sample_rate(self) -> int:
        return await self._rate.get()

    async def warm_up(self) -> None:
        """A GET of .../samplerate while the ASR and the LLM work, so the first sentence's POST
        finds an open connection. Never raises."""
        await warm_up_connection(
            self._http, self._settings.samplerate_url, timeout_s=self._settings.connect_timeout_s, service="tts"
        )

    def synthesize(self, text: str) -> AbstractAsyncContextManager[TtsAudioStream]:
        return self._synthesize(text)

    @asynccontextmanager
    async def _synthesize(self, text: str) -> AsyncIterator[TtsAudioStream]:
        url = self._settings.url
        body = build_http_request(text, self._settings.spk_id)
        log.info("tts_request", protocol="http", chars=len(text))
        request = self._http.build_request("POST", url, json=body, timeout=_http_timeout(self._settings))
        started = self._clock()
        try:
            response = await send_retrying_stale(self._http, request)
        except httpx.TimeoutException as exc:
            error: TtsError = TtsTimeout(f"TTS request to {url} timed out: {_describe(exc)}")
            log.warning("tts_error", url=url, error=str(error))
            raise error from exc
        except httpx.HTTPError as exc:
            error = TtsError(f"TTS request to {url} failed: {_describe(exc)}")
            log.warning("tts_error", url=url, error=str(error))
            raise error from exc
        stream = _HttpAudioStream(text, self._settings, self._clock, response, started)
        try:
            if response.status_code != 200:
                excerpt = await _read_excerpt(response)
                error = TtsError(f"TTS server {url} answered HTTP {response.status_code}: {_error_detail(excerpt)}")
                log.warning("tts_error", url=url, status=response.status_code, error=str(error))
                stream.finished = True
                raise error
            yield stream
        finally:
            await stream.aclose()


class _HttpAudioStream(TtsAudioStream):
    def __init__(
        self, text: str, settings: TtsSettings, clock: Clock, response: httpx.Response, started: float
    ) -> None:
        super().__init__(text, settings.url, clock)
        self.started_at = started
        self._read_timeout_s = settings.read_timeout_s
        self._response = response
        # httpx implements aiter_raw as an async generator; keep it to close it explicitly.
        self._chunks = cast(AsyncGenerator[bytes, None], response.aiter_raw())

    async def _receive(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None
        except httpx.TimeoutException as exc:
            message = f"TTS stream from {self.url}: nothing received for {self._read_timeout_s} s ({_describe(exc)})"
            raise TtsTimeout(self._no_audio_or(message)) from exc
        except httpx.HTTPError as exc:
            raise TtsError(self._no_audio_or(f"TTS stream from {self.url} was cut: {_describe(exc)}")) from exc

    async def _close(self) -> None:
        # An unfinished body makes httpx drop the connection instead of pooling it, so the
        # server sees the disconnect (barge-in).
        await self._chunks.aclose()
        await self._response.aclose()


# -- websocket ----------------------------------------------------------------------------------


class PaddleSpeechWsTts:
    """The websocket protocol: one connection per ``synthesize`` call (docs/protocols.md "PaddleSpeech: websocket").

    ``http`` is only used for GET .../samplerate; without it a short-lived client is made.
    """

    def __init__(
        self,
        settings: TtsSettings,
        http: httpx.AsyncClient | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._rate = _SampleRate(settings, http)

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
        ws = await self._connect()
        stream = _WsAudioStream(text, settings, self._clock, ws, started)
        try:
            await stream.handshake(message)
            yield stream
        finally:
            await stream.aclose()

    async def _connect(self) -> ClientConnection:
        url = self._settings.url
        try:
            return await connect(
                url,
                open_timeout=self._settings.connect_timeout_s,
                close_timeout=WS_CLOSE_TIMEOUT_S,
                ping_interval=None,  # the server blocks its loop while synthesizing ("PaddleSpeech: websocket")
                max_size=WS_MAX_MESSAGE_BYTES,
                proxy=None,
            )
        except TimeoutError as exc:
            timeout = self._settings.connect_timeout_s
            error: TtsError = TtsTimeout(f"TTS websocket {url}: no handshake within {timeout} s")
            cause: BaseException = exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = _body_excerpt(bytes(exc.response.body or b""))
            error, cause = TtsError(f"TTS websocket {url} refused the handshake with HTTP {status}: {body}"), exc
        except (OSError, WebSocketException) as exc:
            error, cause = TtsError(f"cannot connect to TTS websocket {url}: {_describe(exc)}"), exc
        log.warning("tts_error", url=url, error=str(error))
        raise error from cause


class _WsAudioStream(TtsAudioStream):
    def __init__(self, text: str, settings: TtsSettings, clock: Clock, ws: ClientConnection, started: float) -> None:
        super().__init__(text, settings.url, clock)
        self.started_at = started
        self._settings = settings
        self._ws = ws
        self._session: str | None = None
        self._completed = False
        """Status 2 arrived: the exchange ended as the protocol intends."""

    async def handshake(self, message: dict[str, Any]) -> None:
        """start -> "server ready" with a session, then the text request."""
        try:
            await self._send({"task": "tts", "signal": "start"})
            reply = await self._recv_json("the 'server ready' reply to start")
            session = reply.get("session")
            if reply.get("status") != 0 or reply.get("signal") != "server ready" or not isinstance(session, str):
                raise TtsError(f"TTS websocket {self.url} answered start with {_excerpt(reply)}")
            self._session = session
            await self._send(message)
        except TtsError as exc:
            self.finished = True
            log.warning("tts_error", url=self.url, error=str(exc))
            raise

    async def _receive(self) -> str | None:
        reply = await self._recv_json("audio")
        status = reply.get("status")
        if status == 1 and not isinstance(status, bool):
            audio = reply.get("audio")
            if not isinstance(audio, str):
                raise TtsError(f"TTS websocket {self.url} sent status 1 without a string 'audio': {_excerpt(reply)}")
            return audio
        if status == 2 and not isinstance(status, bool):
            self._completed = True
            await self._end_session()
            return None
        if status == -1:
            await self._end_session()
            raise TtsError(self._no_audio_or(f"TTS server {self.url} reported a synthesis error (status -1)"))
        raise TtsError(f"TTS websocket {self.url} sent an unexpected message: {_excerpt(reply)}")

    async def _end_session(self) -> None:
        """Send the end signal and wait briefly for "connection will be closed".

        Everything was received by now, so a server that does not acknowledge is logged, not raised.
        """
        try:
            await self._send({"task": "tts", "signal": "end", "session": self._session})
            timeout = min(WS_END_REPLY_TIMEOUT_S, self._settings.read_timeout_s)
            reply = await self._recv_json("the reply to end", timeout=timeout)
            if reply.get("signal") != "connection will be closed":
                log.warning("tts_ws_end_unexpected_reply", url=self.url, reply=_excerpt(reply))
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
        if isinstance(raw, bytes):
            raise TtsError(f"TTS websocket {self.url} sent a binary frame while waiting for {waiting_for}")
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise TtsError(f"TTS websocket {self.url} sent a message that is not JSON: {_excerpt(raw)}") from exc
        if not isinstance(reply, dict):
            raise TtsError(f"TTS websocket {self.url} sent a JSON message that is not an object: {_excerpt(raw)}")
        return reply

    async def _close(self) -> None:
        if not self._completed:
            # Barge-in or a failure: send the close frame but do not wait for a busy server.
            self._ws.close_timeout = WS_ABORT_CLOSE_TIMEOUT_S
        await self._ws.close()


# -- helpers --------------------------------------------------------------------------------


def _int_spk_id(spk_id: int) -> int:
    if isinstance(spk_id, bool) or not isinstance(spk_id, int):
        raise TypeError(f"spk_id must be int, got {type(spk_id).__name__}")
    return spk_id


def _http_timeout(settings: TtsSettings) -> httpx.Timeout:
    """connect: connect_timeout_s; every read (headers, then each chunk): read_timeout_s."""
    return httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.connect_timeout_s,
    )


async def _read_excerpt(response: httpx.Response) -> bytes:
    """The first few hundred bytes of an error body, without waiting for a long one."""
    data = b""
    try:
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= 4 * _EXCERPT_CHARS:
                break
    except httpx.HTTPError:
        pass
    return data


def _error_detail(body: bytes) -> str:
    """A 422's ``detail`` as "body.text: field required"; anything else as an excerpt."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return _body_excerpt(body)
    if isinstance(parsed, dict) and isinstance(parsed.get("detail"), list):
        parts = []
        for item in parsed["detail"]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg', '?')}" if loc else str(item.get("msg", "?")))
        if parts:
            return "; ".join(parts)
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), dict):
        description = parsed["message"].get("description")
        if isinstance(description, str):
            return description
    return _body_excerpt(body)


def _body_excerpt(body: bytes) -> str:
    return _excerpt(body.decode("utf-8", "replace")) if body else "(empty body)"


def _excerpt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "...")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _close_reason(exc: ConnectionClosed) -> str:
    frame = exc.rcvd
    if frame is None:
        return "no close frame"
    return f"close code {frame.code}" + (f" {frame.reason!r}" if frame.reason else "")
