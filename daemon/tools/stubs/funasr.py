"""A loopback stand-in for a FunASR websocket server, for the demo, the tests and the benchmarks.

It speaks the wire protocol of docs/protocols.md ("FunASR websocket") and emulates each server flavour's quirks
(``is_final`` meaning, ``mode`` labels, silent or mode-less flush replies, the 2026 ``is_end``
acknowledgement). It checks the client the way the real servers do (configuration message
first, a 3-int ``chunk_size`` array, ``is_speaking: true``, constant frame sizes) and records
what it saw in ``stub.sessions`` so tests can assert on the wire.

Recognition uses pocketsphinx restricted to the JSGF grammar ``questions.gram`` (a handful of
English questions), which recognises espeak-ng's ``en-us+klatt4`` voice exactly. Tests that
need other text (Chinese) set ``transcript_override``; scripted conformance tests set ``script``.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import wave
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from daemon.config import ASR_FLAVOURS

__all__ = [
    "ESPEAK_SPEED",
    "ESPEAK_VOICE",
    "GRAMMAR_PATH",
    "MISBEHAVIOURS",
    "QUESTIONS",
    "FunAsrBehaviour",
    "FunAsrStub",
    "Recogniser",
    "ScriptStep",
    "StubSession",
    "make_question_wav",
    "read_wav_pcm",
    "recognise_wav",
]

log = structlog.get_logger()

GRAMMAR_PATH = Path(__file__).with_name("questions.gram")
QUESTIONS = (
    "what is the weather like today",
    "turn on the kitchen light",
    "please move forward two meters",
    "what time is it",
    "tell me a joke",
    "who are you",
    "hello robot",
)
"""Sentences of questions.gram (``hello robot`` may also precede any other question)."""
ESPEAK_VOICE = "en-us+klatt4"
"""The espeak-ng voice the grammar recognises exactly (the default en-us voice loses "is it")."""
ESPEAK_SPEED = 175
"""espeak-ng's default words per minute; 150 and 200 were exact too."""

MISBEHAVIOURS = ("refuse", "hang", "mute", "close_mid_utterance", "garbage", "error")
SAMPLE_RATE = 16000
PCM_CPP_ERROR = "ERROR. Real-time transcription service ONLY SUPPORT PCM stream."


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
    python-2026: an ``error`` acknowledgement; python-classic: close 1000 without a result)."""
    partial_every_frames: int = 10
    """An online partial every this many audio frames (10 = one 600 ms chunk at [5,10,5]/10)."""
    misbehave_after_frames: int = 5
    close_code: int | None = None
    silent_flush: bool = False
    """python-classic: answer the end marker with nothing, as when the VAD had already closed the segment."""
    extra_fields: dict[str, Any] = field(default_factory=dict)
    """Merged into every automatic result (e.g. timestamp as a string or an int, spk_name, slice_type)."""
    final_delay_s: float = 0.0
    """Wait this long after the end marker before the final result (the offline pass of a busy
    server); benchmarks inject ASR latency with it. Not applied to ``script``."""

    def __post_init__(self) -> None:
        if self.final_delay_s < 0:
            raise ValueError(f"final_delay_s must be >= 0, got {self.final_delay_s}")
        if self.flavour not in ASR_FLAVOURS:
            raise ValueError(f"unknown flavour {self.flavour!r}; expected one of {', '.join(ASR_FLAVOURS)}")
        if self.misbehave is not None and self.misbehave not in MISBEHAVIOURS:
            raise ValueError(f"unknown misbehaviour {self.misbehave!r}; expected one of {', '.join(MISBEHAVIOURS)}")
        if self.partial_every_frames < 1:
            raise ValueError("partial_every_frames must be >= 1")


@dataclass
class StubSession:
    """What the stand-in saw on one connection."""

    subprotocol: str | None
    config: dict[str, Any] | None = None
    frame_sizes: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    end_marker: dict[str, Any] | None = None
    text_frames: list[str] = field(default_factory=list)
    """Every text frame received, raw, the configuration message included."""
    sent: list[dict[str, Any] | str | bytes] = field(default_factory=list)
    """Every message sent, as given (dicts for JSON results)."""
    recognised: str | None = None
    """The full text the stub decided on at the end marker."""
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


class _SessionAborted(Exception):
    """The stub ended the session on purpose (a protocol violation or a misbehaviour)."""


# -- recognition ----------------------------------------------------------------------------


class Recogniser:
    """pocketsphinx restricted to ``questions.gram``. Not thread-safe: one user at a time."""

    def __init__(self, grammar: Path = GRAMMAR_PATH) -> None:
        from pocketsphinx import Decoder  # the `stubs` extra; imported only when recognition is used

        self._decoder = Decoder(samprate=SAMPLE_RATE, jsgf=str(grammar), logfn=os.devnull)
        self._in_utt = False

    def start(self) -> None:
        self._end()
        self._decoder.start_utt()
        self._in_utt = True

    def feed(self, pcm: bytes) -> str:
        """Streaming: add audio, return the best hypothesis so far."""
        if not self._in_utt:
            self.start()
        self._decoder.process_raw(pcm, False, False)
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    def recognise(self, pcm: bytes) -> str:
        """The whole utterance at once (better than streaming: batch cepstral normalisation)."""
        self._end()
        if len(pcm) < 3200:  # under 100 ms: nothing to decode
            return ""
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, False, True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    def _end(self) -> None:
        if self._in_utt:
            self._decoder.end_utt()
            self._in_utt = False


def read_wav_pcm(path: str | os.PathLike[str]) -> bytes:
    """The PCM of a 16 kHz mono 16-bit WAV file (ValueError for any other format)."""
    with wave.open(os.fspath(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(
                f"{path}: need 16 kHz mono 16-bit, got {wav.getframerate()} Hz, "
                f"{wav.getnchannels()} channels, {8 * wav.getsampwidth()} bits"
            )
        return wav.readframes(wav.getnframes())


def recognise_wav(path: str | os.PathLike[str]) -> str:
    """What the stand-in would recognise in a 16 kHz mono WAV file (blocking, ~0.1 s + 2 % RTF)."""
    return Recogniser().recognise(read_wav_pcm(path))


def make_question_wav(
    text: str, path: str | os.PathLike[str], *, voice: str = ESPEAK_VOICE, speed: int = ESPEAK_SPEED
) -> Path:
    """Speak ``text`` with espeak-ng into a 16 kHz mono 16-bit WAV the stand-in recognises exactly."""
    out = Path(path)
    speech = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True, timeout=30
    ).stdout
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)],
        input=speech,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return out


def _tokens(text: str) -> list[str]:
    """Words for spaced text, characters for CJK text: the units online deltas are made of."""
    return text.split() if " " in text.strip() else list(text)


def _join_tokens(tokens: list[str], spaced: bool) -> str:
    return (" " if spaced else "").join(tokens)


# -- the server -----------------------------------------------------------------------------


class FunAsrStub:
    """A FunASR websocket server on loopback. ``url`` is ws://host:port, or wss:// with TLS."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        behaviour: FunAsrBehaviour | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.behaviour = behaviour if behaviour is not None else FunAsrBehaviour()
        if ssl_context is None and certfile is not None:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(os.fspath(certfile), os.fspath(keyfile) if keyfile else None)
        self._ssl = ssl_context
        self._server: Server | None = None
        self._stopping = asyncio.Event()
        self._idle_recognisers: list[Recogniser] = []
        self.sessions: list[StubSession] = []
        self.handshakes_refused = 0

    @property
    def url(self) -> str:
        scheme = "wss" if self._ssl is not None else "ws"
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self._stopping.clear()
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ssl=self._ssl,
            subprotocols=["binary"],  # type: ignore[list-item]
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            ping_interval=None,
            max_size=2**22,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("funasr_stub_started", url=self.url, flavour=self.behaviour.flavour)

    async def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def warm_up(self) -> None:
        """Load one recogniser now, so the first session does not wait for it (~0.1 s)."""
        if not self._idle_recognisers:
            self._idle_recognisers.append(await asyncio.to_thread(Recogniser))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        misbehave = self.behaviour.misbehave
        if misbehave == "hang":
            await self._stopping.wait()
        if misbehave in ("refuse", "hang"):
            self.handshakes_refused += 1
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable", Headers(), b"refused by stub\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        behaviour = self.behaviour  # one behaviour for the whole session, even if a test swaps it
        session = StubSession(subprotocol=ws.subprotocol)
        self.sessions.append(session)
        recogniser: Recogniser | None = None
        try:
            if behaviour.script is None and behaviour.transcript_override is None:
                recogniser = self._idle_recognisers.pop() if self._idle_recognisers else None
                if recogniser is None:
                    recogniser = await asyncio.to_thread(Recogniser)
            await _Utterance(ws, session, behaviour, recogniser).run()
        except (ConnectionClosed, _SessionAborted):
            pass
        except Exception:
            log.exception("funasr_stub_failed", url=self.url)
            raise
        finally:
            close = ws.protocol.close_rcvd
            session.client_close_code = close.code if close is not None else None
            if recogniser is not None:
                self._idle_recognisers.append(recogniser)
            session.done.set()
            log.debug("funasr_stub_session_done", frames=session.frames_received, violations=session.violations)


def _select_subprotocol(connection: ServerConnection, subprotocols: Any) -> Any:
    """Select ``binary`` when offered, and also accept clients that offer nothing (like C++)."""
    return "binary" if "binary" in subprotocols else None


class _Utterance:
    """One session's exchange: configuration, audio, end marker, flush; then wait for the close."""

    def __init__(
        self, ws: ServerConnection, session: StubSession, behaviour: FunAsrBehaviour, recogniser: Recogniser | None
    ) -> None:
        self.ws = ws
        self.session = session
        self.b = behaviour
        self.recogniser = recogniser
        self.pcm = bytearray()
        self.unfed = bytearray()
        self.expected_frame = 0
        self.mode = "2pass"
        self.wav_name = "microphone"
        self.online_tokens: list[str] = []  # what the partials have said so far
        self.ended = False

    async def run(self) -> None:
        await self._read_config()
        await self._script(lambda step: step.after_frames == 0)
        if self.recogniser is not None:
            await asyncio.to_thread(self.recogniser.start)
        async for message in self.ws:
            if isinstance(message, bytes):
                await self._on_audio(message)
            else:
                await self._on_text(message)

    # -- configuration ---------------------------------------------------------------------

    async def _read_config(self) -> None:
        first = await self.ws.recv()
        if isinstance(first, bytes):
            await self._abort("binary frame before the configuration message")
        assert isinstance(first, str)
        self.session.text_frames.append(first)
        try:
            config = json.loads(first)
        except ValueError:
            await self._abort(f"configuration message is not JSON: {first[:80]!r}")
        if not isinstance(config, dict):
            await self._abort("configuration message is not a JSON object")
        self.session.config = config
        chunk_size = config.get("chunk_size")
        if not (
            isinstance(chunk_size, list)
            and len(chunk_size) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) for n in chunk_size)
            and chunk_size[1] != 0
        ):
            await self._abort(f"chunk_size must be a JSON array of 3 ints, got {chunk_size!r}")
        if config.get("is_speaking") is not True:
            await self._abort(
                f"is_speaking must be true in the configuration message, got {config.get('is_speaking')!r}"
            )
        interval = config.get("chunk_interval", 10)
        if not isinstance(interval, int) or isinstance(interval, bool) or interval <= 0:
            self._violation(f"chunk_interval must be a positive int, got {interval!r}")
            interval = 10
        self.expected_frame = int(60 * chunk_size[1] / interval / 1000 * SAMPLE_RATE * 2)
        mode = config.get("mode", "2pass")
        if mode not in ("offline", "online", "2pass"):
            self._violation(f"mode must be offline, online or 2pass, got {mode!r}")
        else:
            self.mode = mode
        if config.get("wav_format", "pcm") != "pcm":
            self._violation(f"wav_format should be pcm, got {config.get('wav_format')!r}")
        if config.get("audio_fs", SAMPLE_RATE) != SAMPLE_RATE:
            self._violation(f"audio_fs should be 16000, got {config.get('audio_fs')!r}")
        if "hotwords" in config and not isinstance(config["hotwords"], str):
            self._violation("hotwords must be a JSON string (the C++ server throws on an object)")
        for key in ("itn", "is_speaking"):
            if key in config and not isinstance(config[key], bool):
                self._violation(f"{key} must be a JSON boolean")
        wav_name = config.get("wav_name")
        self.wav_name = wav_name if isinstance(wav_name, str) else self.wav_name

    # -- audio and partials ----------------------------------------------------------------

    async def _on_audio(self, frame: bytes) -> None:
        session = self.session
        if self.ended:
            self._violation("audio after the end marker")
            return
        session.frame_sizes.append(len(frame))
        if len(frame) % 2:
            self._violation(f"frame {len(session.frame_sizes) - 1} has an odd length ({len(frame)} bytes)")
        self.pcm += frame
        if self.recogniser is not None:
            self.unfed += frame
        count = len(session.frame_sizes)
        if self.b.misbehave == "close_mid_utterance" and count >= self.b.misbehave_after_frames:
            if self.b.close_code is None:
                self.ws.transport.abort()
            else:
                await self.ws.close(self.b.close_code, "stub closes mid-utterance")
            raise _SessionAborted
        if self.b.misbehave == "garbage" and count == self.b.misbehave_after_frames:
            await self._send("this is not JSON {")
        await self._script(lambda step: step.after_frames == count)
        if self.b.script is None and count % self.b.partial_every_frames == 0:
            await self._partial()

    async def _partial(self) -> None:
        """An incremental online result, as the streaming model would give it."""
        if self.mode == "offline" or self.b.flavour == "cpp-offline" or self.b.misbehave == "mute":
            return
        if self.b.transcript_override is not None:
            tokens = _tokens(self.b.transcript_override)
            spaced = " " in self.b.transcript_override.strip()
            new = tokens[: len(self.online_tokens) + 1]
        else:
            assert self.recogniser is not None
            chunk, self.unfed = bytes(self.unfed), bytearray()
            new = (await asyncio.to_thread(self.recogniser.feed, chunk)).split()
            spaced = True
        old = self.online_tokens
        if len(new) <= len(old) or new[: len(old)] != old:
            return  # deltas cannot take words back: wait until the hypothesis grows
        delta = _join_tokens(new[len(old) :], spaced)
        if spaced and old:
            delta = " " + delta
        self.online_tokens = new
        await self._send(self._result(self._online_mode(), delta, is_final=self.b.flavour == "python-classic"))

    def _online_mode(self) -> str:
        if self.b.flavour.startswith("cpp") or self.mode == "2pass":
            return "2pass-online"  # the C++ server labels everything 2pass-*
        return "online"

    def _offline_mode(self) -> str:
        if self.b.flavour == "cpp-offline" or (self.b.flavour.startswith("python") and self.mode == "offline"):
            return "offline"
        return "2pass-offline"

    # -- end of speech ---------------------------------------------------------------------

    async def _on_text(self, raw: str) -> None:
        self.session.text_frames.append(raw)
        try:
            msg = json.loads(raw)
        except ValueError:
            # The C++ server would silently ignore everything after this (is_eof).
            self._violation(f"text frame is not JSON: {raw[:80]!r}")
            return
        if not isinstance(msg, dict):
            self._violation(f"text frame is not a JSON object: {raw[:80]!r}")
            return
        if msg.get("is_speaking") is False or msg.get("is_finished") is True:
            if self.ended:
                self._violation("second end marker")
                return
            self.ended = True
            self.session.end_marker = msg
            self._check_frame_sizes()
            await self._flush(wants_ack=msg.get("is_end") is True)
        else:
            self._violation(f"unexpected text message: {raw[:80]!r}")

    def _check_frame_sizes(self) -> None:
        sizes = self.session.frame_sizes
        for index, size in enumerate(sizes):
            last = index == len(sizes) - 1
            if size != self.expected_frame and not (last and size < self.expected_frame):
                self._violation(f"frame {index} has {size} bytes, expected {self.expected_frame}")

    async def _flush(self, *, wants_ack: bool) -> None:
        b = self.b
        if b.script is not None:
            await self._script(lambda step: step.after_end)
        else:
            if b.final_delay_s > 0:
                await asyncio.sleep(b.final_delay_s)
            text = await self._final_text()
            self.session.recognised = text
            if b.misbehave == "error":
                await self._error_reply()
            elif b.misbehave != "mute":
                await self._flush_reply(text, wants_ack=wants_ack)
        log.debug("funasr_stub_flushed", text=self.session.recognised, frames=self.session.frames_received)

    async def _final_text(self) -> str:
        if self.b.transcript_override is not None:
            return self.b.transcript_override
        assert self.recogniser is not None
        return await asyncio.to_thread(self.recogniser.recognise, bytes(self.pcm))

    async def _flush_reply(self, text: str, *, wants_ack: bool) -> None:
        flavour, online = self.b.flavour, self.mode == "online"
        if flavour == "cpp-2pass":
            if online:
                await self._send(self._result("2pass-online", self._rest_of(text), is_final=True))
            elif text:
                await self._send(self._result("2pass-offline", text, is_final=True))
            else:
                await self._send(self._result(None, "", is_final=True))  # no mode when empty
        elif flavour == "cpp-offline":
            await self._send(self._result("offline", text, is_final=False))  # always false
        elif flavour == "python-classic":
            # The flush echoes is_speaking (false); empty text or online mode: no message at all.
            if text and not online and not self.b.silent_flush:
                await self._send(self._result(self._offline_mode(), text, is_final=False))
        else:  # python-2026
            if online:
                await self._send(self._result("online", self._rest_of(text), is_final=True))
            elif text:
                await self._send(self._result(self._offline_mode(), text, is_final=True, spk_name="unknown"))
            if wants_ack:
                await self._send(self._result(self.mode, None, is_final=True, is_end=True))

    async def _error_reply(self) -> None:
        flavour = self.b.flavour
        if flavour.startswith("cpp"):
            await self._send({"text": PCM_CPP_ERROR, "wav_name": self.wav_name, "is_final": True})
        elif flavour == "python-2026":
            await self._send(
                {
                    "mode": self.mode,
                    "wav_name": self.wav_name,
                    "is_final": False,
                    "is_end": True,
                    "error": "stub: inference failed",
                }
            )
        else:  # the classic server's session errors close the socket with 1000 and no result
            await self.ws.close(1000)
            raise _SessionAborted

    def _rest_of(self, text: str) -> str:
        """The part of ``text`` not yet sent as online deltas."""
        tokens, spaced = _tokens(text), " " in text.strip()
        if tokens[: len(self.online_tokens)] != self.online_tokens:
            return ""
        rest = _join_tokens(tokens[len(self.online_tokens) :], spaced)
        return (" " + rest) if rest and spaced and self.online_tokens else rest

    # -- helpers ---------------------------------------------------------------------------

    def _result(self, mode: str | None, text: str | None, *, is_final: bool, **extra: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {}
        if mode is not None:
            msg["mode"] = mode
        if text is not None:
            msg["text"] = text
        msg["wav_name"] = self.wav_name
        msg["is_final"] = is_final
        msg.update(extra)
        msg.update(self.b.extra_fields)
        return msg

    async def _script(self, due: Any) -> None:
        for step in self.b.script or ():
            if due(step):
                if step.delay_s > 0:
                    await asyncio.sleep(step.delay_s)
                await self._send(step.message)

    async def _send(self, message: dict[str, Any] | str | bytes) -> None:
        self.session.sent.append(message)
        # ensure_ascii like the classic Python server: \\uXXXX escapes for Chinese.
        await self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    def _violation(self, what: str) -> None:
        self.session.violations.append(what)
        log.warning("funasr_stub_violation", violation=what)

    async def _abort(self, what: str) -> Any:
        """Record a violation and end the session like the classic server (close 1000, no result)."""
        self._violation(what)
        await self.ws.close(1000)
        raise _SessionAborted
