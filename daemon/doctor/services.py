"""The doctor's service checks: each service spoken to with its real protocol, through the
daemon's own clients (daemon/clients/), once, with the config's connect timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from daemon.clients.asr import FunAsrClient
from daemon.clients.http_pool import make_http_client
from daemon.clients.llm import OpenAiCompatibleLlm
from daemon.clients.tls import make_tls_context, transport_risks
from daemon.clients.tts import make_tts
from daemon.config import AsrSettings, LlmSettings, Settings, TtsSettings
from daemon.doctor import Finding
from daemon.errors import HardwareError, ServiceError

SILENCE_S = 0.5
SYNTHESIS_TEXT = "你好"


def _named(url: str, exc: BaseException) -> str:
    """The error's text, with the URL in front when the text does not name it."""
    text = str(exc) or type(exc).__name__
    return text if url in text else f"{url}: {text}"


async def _each(urls: tuple[str, ...], check: Callable[[str], Awaitable[list[Finding]]]) -> list[Finding]:
    """Every endpoint of a service (``url`` may be a list), checked at once."""
    return [finding for found in await asyncio.gather(*(check(url) for url in urls)) for finding in found]


async def check_asr(s: Settings) -> list[Finding]:
    """Handshake, 0.5 s of silence, the end marker: a final answer (empty text is fine)."""
    return await _each(s.asr.urls, lambda url: _check_asr(s.asr.at(url)))


async def _check_asr(settings: AsrSettings) -> list[Finding]:
    url = settings.endpoint
    try:
        session = await FunAsrClient(settings).open_session()
        await session.send_audio(bytes(int(16000 * SILENCE_S) * 2))
        transcript = await session.finish()
    except (ServiceError, OSError) as exc:
        return [Finding("asr", "FAIL", _named(url, exc), f"start the FunASR server or fix asr.url ({url})")]
    return [Finding("asr", "ok", f"{url}: handshake and a silent session (transcript {transcript.text!r})")]


async def check_llm(s: Settings, *, max_wait_s: float) -> list[Finding]:
    """``/health`` and ``/v1/models`` once (the daemon's readiness check): the model is served."""
    return await _each(s.llm.urls, lambda url: _check_llm(s.llm.at(url), max_wait_s=max_wait_s))


async def _check_llm(settings: LlmSettings, *, max_wait_s: float) -> list[Finding]:
    url = settings.endpoint
    async with make_http_client(make_tls_context(verify=settings.tls_verify, ca_file=settings.ca_file)) as http:
        try:
            model = await OpenAiCompatibleLlm(settings, http).wait_ready(max_wait_s=max_wait_s)
        except ServiceError as exc:
            fix = f"start the LLM server, or fix llm.url ({url}) / llm.model ({settings.model!r}) / the API key"
            return [Finding("llm", "FAIL", _named(url, exc), fix)]
    return [Finding("llm", "ok", f"{url}: serves {model!r}")]


async def check_tts(s: Settings) -> list[Finding]:
    """The sample-rate endpoint, then one short synthesis that must bring audio."""
    return await _each(s.tts.urls, lambda url: _check_tts(s.tts.at(url)))


async def _check_tts(settings: TtsSettings) -> list[Finding]:
    url = settings.endpoint
    fix = f"start the PaddleSpeech server or fix tts.url ({url})"
    tls = make_tls_context(verify=settings.tls_verify, ca_file=settings.ca_file)
    async with make_http_client(tls) as http:
        tts = make_tts(settings, http, tls=tls)
        try:
            rate = await tts.sample_rate()
        except ServiceError as exc:
            return [Finding("tts", "FAIL", _named(settings.samplerate_url, exc), fix)]
        try:
            size = 0
            async with tts.synthesize(SYNTHESIS_TEXT) as stream:
                async for chunk in stream:
                    size += len(chunk)
        except ServiceError as exc:
            return [Finding("tts", "FAIL", _named(url, exc), fix)]
    seconds = size / 2 / rate
    return [Finding("tts", "ok", f"{url}: {rate} Hz; {SYNTHESIS_TEXT!r} synthesised into {seconds:.2f} s of audio")]


async def check_transport(s: Settings) -> list[Finding]:
    """Whether whoever is on the path to a service could read or forge its traffic (no network)."""
    risks = transport_risks(s)
    if not risks:
        return [Finding("transport", "ok", "every TLS certificate is checked; no secret crosses the network in clear")]
    return [Finding("transport", "warn", f"{service}: {risk}", "see the README, Security") for service, risk in risks]


async def check_hotword(s: Settings) -> list[Finding]:
    """The wake engine builds (its library imports, its model files load)."""
    from daemon.wake_sources import make_wake_engine  # imports the engine's library only here

    h = s.wake.hotword
    if h.engine == "off":
        return [Finding("hotword", "ok", "off (no wake word)")]
    try:
        engine = await asyncio.to_thread(make_wake_engine, s)
    except (HardwareError, ServiceError, OSError, ValueError) as exc:
        fix = "install the engine (pip install '.[hotword]') and check wake.hotword.model_dir / phrases"
        return [Finding("hotword", "FAIL", f"engine {h.engine!r}: {exc}", fix)]
    if engine is not None:
        await engine.aclose()
    where = f", model {h.model_dir}" if h.model_dir else ""
    return [Finding("hotword", "ok", f"engine {h.engine!r} builds for {', '.join(h.phrases)}{where}")]
