"""The stand-ins' own handling, measured in the same run as the daemon's turns.

``bench latency``'s limit counts only the delays the stand-ins are *configured* to add; what
their own process spends (uvicorn, starlette, websockets, Python) would otherwise count as
moss-voice's overhead, though a real service's latency includes its own. So for each hop a bare
client makes the request the daemon makes on its critical path and times it to the event the
daemon waits for; minus the configured part, the rest is the stand-in's own handling.

These helpers deliberately do not use the daemon's clients: the point is to measure the
stand-in, not our client. Only the request bodies come from the daemon's builders
(``build_config_message``, ``build_request``, ``build_http_request``), so that the stand-in does
exactly the work it does for the daemon.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import connect

from daemon.clients.asr import END_MARKER, build_config_message
from daemon.clients.llm import OpenAiCompatibleLlm
from daemon.clients.tts_http import build_http_request
from daemon.config import AsrSettings, LlmSettings, TtsSettings
from states.events import ChatMessage

HOPS = ("asr", "llm", "tts")
"""The three hops, in the order of the critical path (the keys of a calibration round)."""

SETTLE_S = 0.1
"""The daemon's audio reaches the ASR at real time, so the server has taken it all in when the end
marker comes; the bare client sends it at once and gives the server this long to do the same."""
TIMEOUT_S = 30.0

SynthLog = Callable[[], Awaitable[list[tuple[str, float]]]]
"""The TTS stand-in's ``(sentence, seconds of synthesis)`` records so far (``StubProcess.synth_log``)."""


class CalibrationError(Exception):
    """A bare request did not get the answer the daemon would wait for: the message says what."""


@dataclass(frozen=True)
class Configured:
    """The configured parts the limit counts for each hop, seconds (TTS: its first-chunk delay
    only; the synthesis time of the very request is read from the stand-in's log)."""

    asr_s: float
    llm_s: float
    tts_s: float


async def asr_handling_s(settings: AsrSettings, pcm: bytes, configured_s: float) -> float:
    """One websocket session with the daemon's configuration message, ``pcm`` sent at once in the
    daemon's frame size; from the end marker to the first ``is_final`` (or ``is_end``) result,
    minus ``configured_s`` (the stand-in's final delay)."""
    async with connect(
        settings.endpoint,
        subprotocols=["binary"] if settings.offer_binary_subprotocol else None,  # type: ignore[list-item]
        ping_interval=None,
        compression=None,
        proxy=None,
    ) as ws:
        await ws.send(json.dumps(build_config_message(settings)))
        size = settings.frame_bytes
        for start in range(0, len(pcm), size):
            await ws.send(pcm[start : start + size])
        await asyncio.sleep(SETTLE_S)
        async with asyncio.timeout(TIMEOUT_S):
            sent = time.monotonic()
            await ws.send(json.dumps(END_MARKER))
            async for raw in ws:
                message = json.loads(raw)
                if message.get("is_final") is True or message.get("is_end") is True:
                    return time.monotonic() - sent - configured_s
    raise CalibrationError(f"the ASR stand-in {settings.endpoint} closed the session without a final result")


async def llm_handling_s(settings: LlmSettings, question: str, token_index: int, configured_s: float) -> float:
    """A streamed chat request with the daemon's body (system prompt, the question), on a
    connection opened beforehand (the daemon warms its up); from the POST to the content delta
    ``token_index`` (the one that completes the first clause), minus ``configured_s`` (time to
    first token + ``token_index`` tokens at the configured rate)."""
    base = settings.endpoint.rstrip("/")
    async with httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False) as http:
        (await http.get(f"{base}/models")).raise_for_status()
        body = OpenAiCompatibleLlm(settings, http).build_request([ChatMessage("user", question)])
        request = http.build_request(
            "POST", f"{base}/chat/completions", json=body, headers={"Accept": "text/event-stream"}
        )
        sent = time.monotonic()
        response = await http.send(request, stream=True)
        try:
            response.raise_for_status()
            seen = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[len("data: ") :]).get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    if seen == token_index:
                        return time.monotonic() - sent - configured_s
                    seen += 1
        finally:
            await response.aclose()
    raise CalibrationError(f"the LLM stand-in {base} ended its answer before token {token_index}")


async def tts_handling_s(settings: TtsSettings, clause: str, configured_s: float, synth_log: SynthLog) -> float:
    """A POST of the first clause on a connection opened beforehand (the daemon's sample-rate GET
    does that); from the POST to the first body bytes, minus ``configured_s`` (the first-chunk
    delay) and the stand-in's synthesis time for the clause's first sentence (from its log)."""
    async with httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False) as http:
        (await http.get(settings.samplerate_url)).raise_for_status()
        before = len(await synth_log())
        body = build_http_request(clause, settings.spk_id)
        request = http.build_request("POST", settings.endpoint, json=body)
        sent = time.monotonic()
        response = await http.send(request, stream=True)
        try:
            response.raise_for_status()
            async for chunk in response.aiter_raw():
                if chunk:
                    elapsed = time.monotonic() - sent
                    break
            else:
                raise CalibrationError(f"the TTS stand-in {settings.endpoint} sent no audio for {clause!r}")
        finally:
            await response.aclose()
    records = (await synth_log())[before:]
    synth = records[0][1] if records else 0.0
    return elapsed - configured_s - synth


async def calibrate(
    asr: AsrSettings,
    llm: LlmSettings,
    tts: TtsSettings,
    *,
    configured: Configured,
    pcm: bytes,
    question: str,
    clause: str,
    token_index: int,
    synth_log: SynthLog,
) -> dict[str, float]:
    """One round: each hop's own handling, ms (keys ``HOPS``), one request after the other."""
    return {
        "asr": round(await asr_handling_s(asr, pcm, configured.asr_s) * 1000, 2),
        "llm": round(await llm_handling_s(llm, question, token_index, configured.llm_s) * 1000, 2),
        "tts": round(await tts_handling_s(tts, clause, configured.tts_s, synth_log) * 1000, 2),
    }


def handling_medians(rounds: Sequence[dict[str, float]]) -> dict[str, float | None]:
    """The median of each hop over the rounds, and ``total`` (their sum), ms; None without rounds."""
    medians: dict[str, float | None] = {
        hop: round(float(statistics.median(r[hop] for r in rounds)), 1) if rounds else None for hop in HOPS
    }
    known = [v for v in medians.values() if v is not None]
    medians["total"] = round(sum(known), 1) if len(known) == len(HOPS) else None
    return medians


def own_overhead_ms(first_audio_ms: float | None, limit_ms: float, stand_ins_ms: float | None) -> float | None:
    """First audio beyond the limit and the stand-ins' own handling: what moss-voice adds."""
    if first_audio_ms is None or stand_ins_ms is None:
        return None
    return round(first_audio_ms - limit_ms - stand_ins_ms, 1)


def apply_calibration(turns: Sequence[dict[str, Any]], rounds: Sequence[dict[str, float]]) -> dict[str, float | None]:
    """Set each turn's ``overhead_own_ms`` (from its ``first_audio_ms`` and ``limit_ms``) against
    the rounds' medians, which it returns (``handling_medians``)."""
    medians = handling_medians(rounds)
    for turn in turns:
        turn["overhead_own_ms"] = own_overhead_ms(turn.get("first_audio_ms"), turn["limit_ms"], medians["total"])
    return medians
