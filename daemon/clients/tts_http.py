"""PaddleSpeech's HTTP streaming TTS: one POST per sentence, a bare base64 body.

See docs/protocols.md "PaddleSpeech: HTTP stream": the body has no separator and no
Content-Type, and a 200 does not mean success (a cut stream or no audio is a TtsError).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import httpx
import structlog

from daemon.clients.http_pool import send_retrying_stale, warm_up_connection
from daemon.clients.tls import untrusted_certificate_message
from daemon.clients.tts_common import (
    ClauseBudget,
    Clock,
    SampleRate,
    TtsAudioStream,
    audio_cap_bytes,
    describe,
    error_detail,
    http_timeout,
    int_spk_id,
    read_excerpt,
)
from daemon.config import TtsSettings
from daemon.errors import TtsError, TtsTimeout

log = structlog.get_logger()

__all__ = ["PaddleSpeechHttpTts", "build_http_request"]


def build_http_request(text: str, spk_id: int) -> dict[str, Any]:
    """The JSON body of POST /paddlespeech/tts/streaming: always ``text`` and an int ``spk_id``.

    speed, volume and sample_rate are left out: the streaming endpoint ignores them
    (docs/protocols.md "PaddleSpeech: HTTP stream").
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return {"text": text, "spk_id": int_spk_id(spk_id)}


class PaddleSpeechHttpTts:
    """POST /paddlespeech/tts/streaming, decoding the chunked base64 body as it arrives."""

    def __init__(self, settings: TtsSettings, http: httpx.AsyncClient, *, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._rate = SampleRate(settings, http)

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
        url = self._settings.endpoint
        body = build_http_request(text, self._settings.spk_id)
        log.info("tts_request", protocol="http", chars=len(text))
        request = self._http.build_request("POST", url, json=body, timeout=http_timeout(self._settings))
        started = self._clock()
        budget = ClauseBudget(self._settings, text)
        try:
            async with budget.waiting(url):
                response = await send_retrying_stale(self._http, request)
        except TtsTimeout as timeout:  # the clause's budget ran out before the headers
            log.debug("tts_error", url=url, error=str(timeout))
            raise
        except httpx.TimeoutException as exc:
            error: TtsError = TtsTimeout(f"TTS request to {url} timed out: {describe(exc)}")
            log.debug("tts_error", url=url, error=str(error))
            raise error from exc
        except httpx.HTTPError as exc:
            untrusted = untrusted_certificate_message("tts", url, exc)
            error = TtsError(untrusted or f"TTS request to {url} failed: {describe(exc)}")
            log.debug("tts_error", url=url, error=str(error))
            raise error from exc
        cap = audio_cap_bytes(self._settings, text, self._rate.known)
        stream = _HttpAudioStream(
            text, self._settings, self._clock, response, started, budget=budget, max_pcm_bytes=cap
        )
        try:
            if response.status_code != 200:
                excerpt = await read_excerpt(response)
                status = response.status_code
                error = TtsError(f"TTS server {url} answered HTTP {status}: {error_detail(excerpt)}", status=status)
                log.debug("tts_error", url=url, status=response.status_code, error=str(error))
                stream.finished = True
                raise error
            yield stream
        finally:
            await stream.aclose()


class _HttpAudioStream(TtsAudioStream):
    def __init__(
        self,
        text: str,
        settings: TtsSettings,
        clock: Clock,
        response: httpx.Response,
        started: float,
        *,
        budget: ClauseBudget,
        max_pcm_bytes: int,
    ) -> None:
        super().__init__(text, settings.endpoint, clock, budget=budget, max_pcm_bytes=max_pcm_bytes)
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
            message = f"TTS stream from {self.url}: nothing received for {self._read_timeout_s} s ({describe(exc)})"
            raise TtsTimeout(self._no_audio_or(message)) from exc
        except httpx.HTTPError as exc:
            raise TtsError(self._no_audio_or(f"TTS stream from {self.url} was cut: {describe(exc)}")) from exc

    async def _close(self) -> None:
        # An unfinished body makes httpx drop the connection instead of pooling it, so the
        # server sees the disconnect (barge-in).
        await self._chunks.aclose()
        await self._response.aclose()
