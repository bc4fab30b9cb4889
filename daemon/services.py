"""The three services as the conversation sees them: one client per endpoint (``url`` may be a
list), behind a :class:`~daemon.clients.guarded.ServiceGuard` each, with the probes that tell
whether an endpoint answers (at start-up and, for an endpoint marked down, in the background).

The probes are the cheap ones the daemon always ran at start: the ASR opens and closes a
session, the LLM passes its readiness check (``/health``, ``/v1/models`` serves the model), the
TTS tells its sample rate. Each is bounded by ``probe_s``, whatever the services' own read
timeouts: a TTS that accepts and never answers costs start-up ``probe_s``, not ``read_timeout_s``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from daemon.clients.asr import FunAsrClient
from daemon.clients.backoff import Backoff
from daemon.clients.guarded import PROBE_S, GuardedAsr, GuardedLlm, GuardedTts, ServiceGuard
from daemon.clients.llm import OpenAiCompatibleLlm
from daemon.clients.tidying import Tidying
from daemon.clients.tts import make_tts
from daemon.clients.tts_common import SampleRate
from daemon.config import Settings
from daemon.resampled_tts import ResampledTts
from states.ports import EventSink, TtsClient

__all__ = ["Services", "build_services"]


@dataclass
class Services:
    asr: GuardedAsr
    llm: GuardedLlm
    tts_clients: list[TtsClient]
    """One per ``tts.url``, speaking at its own rate."""
    guards: dict[str, ServiceGuard]

    async def probe_all(self) -> None:
        """Start-up: every endpoint of every service at once; never raises."""
        await asyncio.gather(*(guard.probe_all() for guard in self.guards.values()))

    async def tts_rate(self) -> int | None:
        """The rate of the first TTS endpoint up (asked by its probe, so known); None: none is up."""
        guard = self.guards["tts"]
        usable = guard.usable()
        if not usable:
            return None
        try:
            return await guard.first(lambda i: self.tts_clients[i].sample_rate())
        except Exception:  # noqa: BLE001 - went down since its probe: as if none were up
            return None

    def tts(self, output_rate: int) -> GuardedTts:
        """The TTS port: each endpoint's audio resampled to ``output_rate``."""
        return GuardedTts(self.guards["tts"], [ResampledTts(c, output_rate) for c in self.tts_clients])

    def start(self) -> None:
        """Background probes from now on (call once the event bus has its listeners)."""
        for guard in self.guards.values():
            guard.start()

    async def aclose(self) -> None:
        for guard in self.guards.values():
            await guard.aclose()


def build_services(
    s: Settings,
    llm_http: httpx.AsyncClient,
    tts_http: httpx.AsyncClient,
    *,
    events: EventSink | None = None,
    probe_s: float = PROBE_S,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    tidying: Tidying | None = None,
    tts_tls: ssl.SSLContext | None = None,
) -> Services:
    """The clients and guards of ``s``'s endpoints (nothing is contacted yet). ``tidying``: where
    the ASR sessions leave their close handshakes (``FunAsrClient``). ``tts_tls``: the TTS's TLS
    context (``tts_http`` was built with it), for a wss:// websocket."""
    asr_clients = [FunAsrClient(s.asr.at(url), tidying=tidying) for url in s.asr.urls]
    llm_clients = [OpenAiCompatibleLlm(s.llm.at(url), llm_http) for url in s.llm.urls]
    tts_clients = [make_tts(s.tts.at(url), tts_http, tls=tts_tls) for url in s.tts.urls]
    rate_known = [False] * len(tts_clients)

    async def probe_asr(i: int) -> None:
        session = await asr_clients[i].open_session()
        await session.aclose()

    async def probe_llm(i: int) -> None:
        # Its own deadline a little before the guard's: its message says what it waited for.
        await llm_clients[i].wait_ready(max_wait_s=probe_s * 0.8)

    async def probe_tts(i: int) -> None:
        if rate_known[i]:  # the client keeps the rate it was told: ask afresh
            await SampleRate(s.tts.at(s.tts.urls[i]), tts_http).get()
        else:
            await tts_clients[i].sample_rate()
            rate_known[i] = True

    def guard(service: str, urls: tuple[str, ...], probe: Callable[[int], Awaitable[None]]) -> ServiceGuard:
        return ServiceGuard(service, urls, probe, events=events, backoff=backoff, probe_timeout_s=probe_s, sleep=sleep)

    guards = {
        "asr": guard("asr", s.asr.urls, probe_asr),
        "llm": guard("llm", s.llm.urls, probe_llm),
        "tts": guard("tts", s.tts.urls, probe_tts),
    }
    return Services(
        asr=GuardedAsr(guards["asr"], asr_clients),
        llm=GuardedLlm(guards["llm"], llm_clients),
        tts_clients=tts_clients,
        guards=guards,
    )
