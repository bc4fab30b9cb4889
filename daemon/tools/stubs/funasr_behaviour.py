"""The FunASR stand-in's script (``FunAsrBehaviour``: the flavour, the misbehaviours, scripted
messages) and what it records of each session (``StubSession``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from daemon.config import ASR_FLAVOURS

MISBEHAVIOURS = ("refuse", "hang", "mute", "close_mid_utterance", "garbage", "error", "flood", "trickle")


@dataclass(frozen=True)
class ScriptStep:
    """A message the stub sends at a given point of a session (scripted conformance tests).

    ``message``: a dict is sent as a JSON text frame, a str as a raw text frame (garbage, or a
    JSON array), bytes as a binary frame. Exactly one trigger: ``after_frames`` (once that many
    audio frames have arrived; 0 = right after the configuration message) or ``after_end``
    (once the end marker arrived, in list order). ``delay_s`` waits before sending.
    """

    message: dict[str, Any] | str | bytes
    after_frames: int | None = None
    after_end: bool = False
    delay_s: float = 0.0
    as_text: bool = False
    """bytes sent in a text frame as they are, unchecked (a server that sends invalid UTF-8)."""


@dataclass
class FunAsrBehaviour:
    """What the stand-in does. Tests may swap ``stub.behaviour`` between sessions."""

    flavour: str = "cpp-2pass"
    """cpp-2pass | cpp-offline | python-classic | python-2026.

    See docs/protocols.md "FunASR: when is the utterance final" and "FunASR: observed quirks".
    """
    transcript_override: str | None = None
    """Return this text instead of recognising the audio (e.g. Chinese); no pocketsphinx needed."""
    script: list[ScriptStep] | None = None
    """When set, only these messages are sent: no recognition and no automatic results."""
    misbehave: str | None = None
    """None, or one of MISBEHAVIOURS:
    refuse: reject the websocket handshake with HTTP 503.
    hang: accept TCP and never answer the handshake.
    mute: complete the handshake, read everything, never send a result.
    close_mid_utterance: after ``misbehave_after_frames`` frames, drop the TCP connection
    (or close with ``close_code`` when set, e.g. 1000).
    garbage: after ``misbehave_after_frames`` frames, send a text frame that is not JSON.
    error: answer the end marker with the flavour's error (C++: the PCM-only error text;
    python-2026: an ``error`` acknowledgement; python-classic: close 1000 without a result).
    trickle: answer the end marker with a one-character online result every
    ``trickle_interval_s``, for ever, and never the final (the connection stays alive).
    flood: after ``misbehave_after_frames`` frames, online results as fast as the socket takes
    them, each text longer than the last, until the client goes away (not kept in ``sent``);
    the end marker gets no final result."""
    partial_every_frames: int = 10
    """An online partial every this many audio frames (10 = one 600 ms chunk at [5,10,5]/10)."""
    misbehave_after_frames: int = 5
    close_code: int | None = None
    silent_flush: bool = False
    """python-classic: answer the end marker with nothing, as when the VAD had already closed the segment."""
    server_vad_end_ms: int | None = None
    """python-classic in 2pass or offline mode: the server's own VAD. Once this much quiet audio
    follows loud audio, the segment is closed: its ``2pass-offline`` result goes out at once, with
    ``is_final`` true (the echoed ``is_speaking``), and the audio after it is a new segment. The
    flush then decodes only the audio since the last segment, and says nothing at all when no
    voice came after it (the classic server before its autumn 2024 fix). None: no server VAD,
    the whole utterance is one segment decoded at the flush."""
    segment_texts: tuple[str, ...] = ()
    """With ``server_vad_end_ms`` and ``transcript_override``: what each segment says, in order
    (the one the flush decodes included). Empty: the first segment says the whole override."""
    extra_fields: dict[str, Any] = field(default_factory=dict)
    """Merged into every automatic result (e.g. timestamp as a string or an int, spk_name, slice_type)."""
    final_delay_s: float = 0.0
    """Wait this long after the end marker before the final result (the offline pass of a busy
    server); benchmarks inject ASR latency with it. Not applied to ``script``."""
    punctuate: bool = False
    """End each offline (final) result with a full stop, or a question mark when it opens with a
    question word, as a server with a punctuation model does (``punctuation.py``); online
    partials stay bare."""
    busy_after_final_s: float = 0.0
    """After the final result, read nothing for this long (a classic Python server decoding the
    next request): a client's close frame waits that long for its answer."""

    trickle_interval_s: float = 1.0
    """misbehave="trickle": the pause between two one-character results."""
    flood_results: int = 300
    """misbehave="flood": how many results; result ``i`` adds ``i`` words (300: about 270 000 characters)."""

    def __post_init__(self) -> None:
        if self.trickle_interval_s <= 0:
            raise ValueError("trickle_interval_s must be > 0")
        if self.final_delay_s < 0 or self.busy_after_final_s < 0:
            raise ValueError("final_delay_s and busy_after_final_s must be >= 0")
        if self.flavour not in ASR_FLAVOURS:
            raise ValueError(f"unknown flavour {self.flavour!r}; expected one of {', '.join(ASR_FLAVOURS)}")
        if self.misbehave is not None and self.misbehave not in MISBEHAVIOURS:
            raise ValueError(f"unknown misbehaviour {self.misbehave!r}; expected one of {', '.join(MISBEHAVIOURS)}")
        if self.partial_every_frames < 1:
            raise ValueError("partial_every_frames must be >= 1")
        if self.server_vad_end_ms is not None and self.server_vad_end_ms <= 0:
            raise ValueError("server_vad_end_ms must be > 0")


@dataclass
class StubSession:
    """What the stand-in saw on one connection."""

    subprotocol: str | None
    config: dict[str, Any] | None = None
    frame_sizes: list[int] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    """Every audio byte received, in order (what the client let out of the robot)."""
    violations: list[str] = field(default_factory=list)
    end_marker: dict[str, Any] | None = None
    text_frames: list[str] = field(default_factory=list)
    """Every text frame received, raw, the configuration message included."""
    sent: list[dict[str, Any] | str | bytes] = field(default_factory=list)
    """Every message sent, as given (dicts for JSON results)."""
    recognised: str | None = None
    """The full text the stub decided on at the end marker."""
    segments: list[str] = field(default_factory=list)
    """What each segment closed by the server VAD said (``server_vad_end_ms``), in order."""
    client_close_code: int | None = None
    """The code of the client's close frame; None if it dropped TCP without one."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the connection handler has finished."""

    @property
    def frames_received(self) -> int:
        return len(self.frame_sizes)

    @property
    def audio_bytes(self) -> int:
        return sum(self.frame_sizes)


class SessionAborted(Exception):
    """The stub ended the session on purpose (a protocol violation or a misbehaviour)."""
