"""What the two PaddleSpeech TTS clients share: the sample-rate query, the audio stream base and small helpers.

``TtsAudioStream`` turns the base64 pieces a protocol delivers into whole 16-bit samples and
decides whether the sentence was spoken (docs/protocols.md "PaddleSpeech: base64 in pieces",
"PaddleSpeech: audio to the speaker"); ``tts_http`` and ``tts_websocket`` supply the pieces.

Two bounds hold for every clause whatever the server does: a :class:`ClauseBudget` of time spent
waiting on the server (``tts.clause_timeout_s``; a server that drips bytes runs it out), and an
audio cap (:func:`audio_cap_bytes`) past which the clause is cut and logged
``tts_clause_too_long`` (a server that streams audio for ever).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog

from daemon.clients.b64stream import Base64StreamDecoder
from daemon.clients.tls import make_tls_context, untrusted_certificate_message
from daemon.config import TtsSettings
from daemon.errors import TtsError, TtsTimeout

log = structlog.get_logger()

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "ClauseBudget",
    "Clock",
    "SampleRate",
    "TtsAudioStream",
    "audio_cap_bytes",
    "body_excerpt",
    "describe",
    "error_detail",
    "excerpt",
    "http_timeout",
    "int_spk_id",
    "quote",
    "read_excerpt",
]

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 96000
EXCERPT_CHARS = 300

Clock = Callable[[], float]


class SampleRate:
    """GET {url}/samplerate once, validate it, and remember it."""

    def __init__(self, settings: TtsSettings, http: httpx.AsyncClient | None) -> None:
        self._settings = settings
        self._http = http
        self._rate: int | None = None
        self._lock = asyncio.Lock()

    @property
    def known(self) -> int | None:
        """The rate if it was fetched already; never asks the server."""
        return self._rate

    async def get(self) -> int:
        if self._rate is not None:
            return self._rate
        async with self._lock:
            if self._rate is None:
                if self._http is not None:
                    self._rate = await self._fetch(self._http)
                else:
                    tls = make_tls_context(verify=self._settings.tls_verify, ca_file=self._settings.ca_file)
                    async with httpx.AsyncClient(verify=tls) as http:
                        self._rate = await self._fetch(http)
                log.info("tts_sample_rate", url=self._settings.samplerate_url, sample_rate=self._rate)
        return self._rate

    async def _fetch(self, http: httpx.AsyncClient) -> int:
        url = self._settings.samplerate_url
        try:
            response = await http.get(url, timeout=http_timeout(self._settings))
        except httpx.TimeoutException as exc:
            raise TtsTimeout(f"TTS sample rate request to {url} timed out: {describe(exc)}") from exc
        except httpx.HTTPError as exc:
            untrusted = untrusted_certificate_message("tts", url, exc)
            raise TtsError(untrusted or f"cannot reach TTS server {url}: {describe(exc)}") from exc
        if response.status_code != 200:
            excerpt = error_detail(response.content)
            raise TtsError(f"TTS sample rate request to {url} got HTTP {response.status_code}: {excerpt}")
        try:
            body = response.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json can follow
            raise TtsError(f"TTS sample rate from {url} is not JSON: {body_excerpt(response.content)}") from exc
        rate = body.get("sample_rate") if isinstance(body, dict) else None
        if not isinstance(rate, int) or isinstance(rate, bool):
            excerpt = body_excerpt(response.content)
            raise TtsError(f"TTS sample rate from {url} has no integer 'sample_rate': {excerpt}")
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise TtsError(f"TTS sample rate {rate} from {url} is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
        return rate


def audio_cap_bytes(settings: TtsSettings, text: str, sample_rate: int | None) -> int:
    """The most PCM one clause may bring: max(audio_cap_min_s, audio_cap_s_per_char per character)
    of 16-bit mono. An unknown rate counts as the highest accepted one, so a clause is never cut
    early because the rate was not asked yet."""
    seconds = max(settings.audio_cap_min_s, settings.audio_cap_s_per_char * len(text))
    return 2 * round(seconds * (sample_rate or MAX_SAMPLE_RATE))


class ClauseBudget:
    """The time one clause may spend waiting on the TTS server (``tts.clause_timeout_s``).

    Every wait (the request, the handshake, each chunk) goes through :meth:`waiting`, which
    charges its duration; time between waits (the caller playing audio) is free. When the budget
    runs out, :class:`TtsTimeout` names the stage, the limit and the clause.
    """

    def __init__(self, settings: TtsSettings, text: str) -> None:
        self.limit_s = settings.clause_timeout_s
        self.left_s = settings.clause_timeout_s
        self._text = text

    @asynccontextmanager
    async def waiting(self, url: str, received: int = 0) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout = asyncio.timeout(max(0.0, self.left_s))
        try:
            async with timeout:
                yield
        except TimeoutError as exc:
            if not timeout.expired():
                raise
            message = (
                f"TTS clause: {url} took more than {self.limit_s:g} s (tts.clause_timeout_s) "
                f"for {quote(self._text)}, {received} bytes of audio by then"
            )
            raise TtsTimeout(message) from exc
        finally:
            self.left_s -= loop.time() - started


class TtsAudioStream:
    """The PCM of one ``synthesize`` call, as an async iterator of whole-sample chunks.

    ``first_audio_at`` is the monotonic time the first audio arrived (None before that);
    ``pcm_bytes`` counts what has been yielded. Subclasses supply ``_receive``: the next
    base64 piece, or None at the proper end of the stream.
    """

    def __init__(
        self,
        text: str,
        url: str,
        clock: Clock,
        *,
        budget: ClauseBudget | None = None,
        max_pcm_bytes: int | None = None,
    ) -> None:
        self.text = text
        self.url = url
        self.first_audio_at: float | None = None
        self.pcm_bytes = 0
        self.finished = False
        """True once the stream ended, well or badly; False while audio may still come."""
        self._clock = clock
        self.started_at = clock()
        self._decoder = Base64StreamDecoder(frame_bytes=2)  # whole 16-bit samples only
        self._budget = budget
        self._max_pcm_bytes = max_pcm_bytes
        self.cut = False
        """True when the audio cap ended the clause (the server was still sending)."""

    def __aiter__(self) -> TtsAudioStream:
        return self

    async def __anext__(self) -> bytes:
        while not self.finished:
            try:
                if self._budget is None:
                    piece = await self._receive()
                else:
                    async with self._budget.waiting(self.url, self.pcm_bytes):
                        piece = await self._receive()
                if piece is None:
                    await self._after_last_piece()  # not charged to the budget: the audio is all here
                    self._end()
                    break
                pcm = self._decode(piece)
            except TtsError as exc:
                self.finished = True
                log.debug("tts_error", url=self.url, error=str(exc), bytes=self.pcm_bytes, ms=self._ms())
                raise
            if pcm and self._max_pcm_bytes is not None and self.pcm_bytes + len(pcm) > self._max_pcm_bytes:
                pcm = pcm[: self._max_pcm_bytes - self.pcm_bytes]
                self._cut_at_cap()
            if pcm:
                if self.first_audio_at is None:
                    self.first_audio_at = self._clock()
                    log.info("tts_first_audio", ms=self._ms(self.first_audio_at))
                self.pcm_bytes += len(pcm)
                return pcm
        raise StopAsyncIteration

    def _cut_at_cap(self) -> None:
        """The clause brought as much audio as it may: end it here (closing the connection)."""
        self.finished = True
        self.cut = True
        log.warning(
            "tts_clause_too_long",
            url=self.url,
            chars=len(self.text),
            clause=quote(self.text),
            cap_bytes=self._max_pcm_bytes,
            ms=self._ms(),
        )

    async def _receive(self) -> bytes | str | None:
        raise NotImplementedError

    async def _after_last_piece(self) -> None:
        """The protocol's goodbye once the last piece came (best effort, never raises TtsError)."""

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
            rest = self._decoder.close()
        except ValueError as exc:
            raise TtsError(f"TTS audio from {self.url} is cut: {exc}") from exc
        if rest:
            log.warning("tts_partial_sample_dropped", bytes=len(rest))
        if self.pcm_bytes == 0:
            raise TtsError(f"no audio for {quote(self.text)} from {self.url}")
        log.info("tts_finished", bytes=self.pcm_bytes, ms=self._ms())

    def _no_audio_or(self, message: str) -> str:
        """``message``, prefixed by "no audio" when nothing came at all."""
        if self.pcm_bytes == 0:
            return f"no audio for {quote(self.text)}: {message}"
        return message

    def _ms(self, at: float | None = None) -> int:
        return round(((self._clock() if at is None else at) - self.started_at) * 1000)


def int_spk_id(spk_id: int) -> int:
    if isinstance(spk_id, bool) or not isinstance(spk_id, int):
        raise TypeError(f"spk_id must be int, got {type(spk_id).__name__}")
    return spk_id


def http_timeout(settings: TtsSettings) -> httpx.Timeout:
    """connect: connect_timeout_s; every read (headers, then each chunk): read_timeout_s."""
    return httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.connect_timeout_s,
    )


async def read_excerpt(response: httpx.Response) -> bytes:
    """The first few hundred bytes of an error body, without waiting for a long one."""
    data = b""
    try:
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= 4 * EXCERPT_CHARS:
                break
    except httpx.HTTPError:
        pass
    return data


def error_detail(body: bytes) -> str:
    """A 422's ``detail`` as "body.text: field required"; anything else as an excerpt."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body_excerpt(body)
    if isinstance(parsed, dict) and isinstance(parsed.get("detail"), list):
        parts = []
        for item in parsed["detail"]:
            if isinstance(item, dict):
                where = item.get("loc")  # FastAPI's is a list; a server of another kind may send anything
                path = where if isinstance(where, list) else [] if where is None else [where]
                loc = ".".join(str(p) for p in path)
                parts.append(f"{loc}: {item.get('msg', '?')}" if loc else str(item.get("msg", "?")))
        if parts:
            return "; ".join(parts)
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), dict):
        description = parsed["message"].get("description")
        if isinstance(description, str):
            return description
    return body_excerpt(body)


def body_excerpt(body: bytes) -> str:
    return excerpt(body.decode("utf-8", "replace")) if body else "(empty body)"


def excerpt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "...")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
