"""The PaddleSpeech stand-in's script (``PaddleSpeechBehaviour``: pacing, overrides, the
misbehaviours), what it records of each request, and the request check FastAPI makes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Misbehaviour = Literal[
    "refuse", "hang", "error_500", "truncate", "empty", "garbage", "ws_error", "endless", "trickle", "flood"
]
MISBEHAVIOURS: tuple[str, ...] = Misbehaviour.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PaddleSpeechBehaviour:
    """How the stand-in answers. Swap ``stub.behaviour`` between requests to change it."""

    sample_rate: int = 24000
    """The rate of the audio and of GET .../samplerate (PaddleSpeech's csmsc models: 24000)."""
    first_chunk_delay_s: float = 0.0
    """Wait before the first chunk (frontend plus the first AM/vocoder block)."""
    chunk_delay_s: float = 0.0
    """Wait before each later chunk."""
    realtime_factor: float = 0.0
    """Extra wait before each later chunk, per second of audio in it (0.3 = 0.3 s per 1 s)."""
    raw_body_pieces: tuple[bytes, ...] | None = None
    """Sent verbatim instead of synthesized audio: one HTTP chunk (or one status-1 ``audio``) each."""
    pcm_override: bytes | None = None
    """PCM to stream instead of the espeak voice, cut into 21 600-byte chunks plus the rest."""
    samplerate_override: Any = None
    """A JSON value GET .../samplerate returns instead of ``{"sample_rate": sample_rate}``."""
    misbehave: Misbehaviour | None = None
    """refuse: close every connection at once. hang: accept and never answer. error_500: HTTP 500
    (websocket: handshake rejected with 500). truncate: one chunk, then drop the connection
    without the end of the stream. empty: 200 (websocket: nothing) and an abrupt close.
    garbage: a body (websocket: an ``audio`` value) that is not base64. ws_error: websocket
    status -1 (over HTTP: like empty). endless: after the sentence, silence chunks for ever (at
    ``chunk_delay_s``). trickle: HTTP: the body one byte every ``trickle_interval_s``;
    websocket: one 3-byte ``audio`` message every ``trickle_interval_s``, for ever. flood: the
    clause's audio over and over until ``flood_audio_s`` of it went out, as fast as possible, then
    a normal end."""
    trickle_interval_s: float = 1.0
    """misbehave="trickle": the pause before each byte (websocket: each message)."""
    flood_audio_s: float = 600.0
    """misbehave="flood": seconds of audio for one clause (ten minutes)."""

    def __post_init__(self) -> None:
        if self.misbehave is not None and self.misbehave not in MISBEHAVIOURS:
            raise ValueError(f"unknown misbehaviour {self.misbehave!r}; expected one of {', '.join(MISBEHAVIOURS)}")
        if self.trickle_interval_s <= 0 or self.flood_audio_s <= 0:
            raise ValueError("trickle_interval_s and flood_audio_s must be > 0")


@dataclass(frozen=True)
class ReceivedRequest:
    """One synthesis request as the stand-in received it."""

    protocol: Literal["http", "websocket"]
    body: Any
    """The decoded JSON of the POST body or of the websocket text message (raw text if not JSON)."""
    peer: tuple[str, int] | None
    """The client's address and port: a new port means a new connection."""

    @property
    def text(self) -> Any:
        return self.body.get("text") if isinstance(self.body, dict) else None


def validate_tts_request(raw: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """Check a POST body like FastAPI checks ``TTSRequest``; problems in FastAPI's 422 ``detail`` shape."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return raw.decode("utf-8", "replace"), [{"loc": ["body", 0], "msg": str(exc), "type": "value_error.jsondecode"}]
    if not isinstance(body, dict):
        return body, [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    problems: list[dict[str, Any]] = []
    if "text" not in body:
        problems.append({"loc": ["body", "text"], "msg": "field required", "type": "value_error.missing"})
    elif not isinstance(body["text"], str):
        problems.append({"loc": ["body", "text"], "msg": "str type expected", "type": "type_error.str"})
    for name, kind in (("spk_id", int), ("sample_rate", int), ("speed", float), ("volume", float)):
        if name in body and not _coerces(body[name], kind):
            problems.append(
                {
                    "loc": ["body", name],
                    "msg": f"value is not a valid {kind.__name__ if kind is float else 'integer'}",
                    "type": f"type_error.{kind.__name__ if kind is float else 'integer'}",
                }
            )
    return body, problems


def _coerces(value: Any, kind: type) -> bool:
    """pydantic v1's lax coercion: numbers, and strings that parse as one."""
    if isinstance(value, bool) or value is None:
        return isinstance(value, bool)
    if kind is int and isinstance(value, float):
        return value.is_integer()
    try:
        kind(value)
    except (TypeError, ValueError):
        return False
    return True
