"""One session of the FunASR stand-in: the configuration message, the audio, the end marker and
the flush, with each flavour's replies and the checks a real server makes of its client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import numpy as np
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from daemon.tools.stubs.funasr_behaviour import FunAsrBehaviour, SessionAborted, StubSession
from daemon.tools.stubs.punctuation import punctuate
from daemon.tools.stubs.questions import SAMPLE_RATE, Recogniser

log = structlog.get_logger()

PCM_CPP_ERROR = "ERROR. Real-time transcription service ONLY SUPPORT PCM stream."
SERVER_VAD_RMS = 300.0
"""The server VAD's idea of voice: a frame louder than this (int16 RMS, about -40 dBFS)."""


def _tokens(text: str) -> list[str]:
    """Words for spaced text, characters for CJK text: the units online deltas are made of."""
    return text.split() if " " in text.strip() else list(text)


def _join_tokens(tokens: list[str], spaced: bool) -> str:
    return (" " if spaced else "").join(tokens)


class Utterance:
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
        self.flood: asyncio.Task[None] | None = None
        # The server VAD (behaviour.server_vad_end_ms): the open segment.
        self.segment_start = 0  # its first byte in pcm
        self.segment_voiced = False  # loud audio heard in it
        self.segment_quiet_ms = 0.0  # quiet audio since its last loud frame

    async def run(self) -> None:
        try:
            await self._read_config()
            await self._script(lambda step: step.after_frames == 0)
            if self.recogniser is not None:
                await asyncio.to_thread(self.recogniser.start)
            async for message in self.ws:
                if isinstance(message, bytes):
                    await self._on_audio(message)
                else:
                    await self._on_text(message)
        finally:
            if self.flood is not None:
                self.flood.cancel()
                await asyncio.gather(self.flood, return_exceptions=True)

    async def _flood(self) -> None:
        """misbehave="flood": ever longer online results, as fast as possible, until the client leaves."""
        n = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                n += 1
                await self.ws.send(json.dumps(self._result(self._online_mode(), "洪水" * n, is_final=False)))
                if n % 64 == 0:
                    await asyncio.sleep(0)  # bursts: the stand-in shares the test's loop, let the client read

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
        session.audio += frame
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
            raise SessionAborted
        if self.b.misbehave == "garbage" and count == self.b.misbehave_after_frames:
            await self._send("this is not JSON {")
        if self.b.misbehave == "flood" and count == self.b.misbehave_after_frames:
            self.flood = asyncio.create_task(self._flood(), name="funasr-stub-flood")
        await self._script(lambda step: step.after_frames == count)
        if self._server_vad_on():
            await self._server_vad(frame)
        if self.b.script is None and count % self.b.partial_every_frames == 0:
            await self._partial()

    # -- the server VAD (python-classic) ---------------------------------------------------

    def _server_vad_on(self) -> bool:
        b = self.b
        return (
            b.server_vad_end_ms is not None
            and b.flavour == "python-classic"
            and self.mode != "online"
            and b.script is None
            and b.misbehave is None
        )

    async def _server_vad(self, frame: bytes) -> None:
        """Close the segment once ``server_vad_end_ms`` of quiet audio follows its voice."""
        assert self.b.server_vad_end_ms is not None
        samples = np.frombuffer(frame[: len(frame) // 2 * 2], dtype="<i2")
        if not len(samples):
            return
        if float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) > SERVER_VAD_RMS:
            self.segment_voiced, self.segment_quiet_ms = True, 0.0
            return
        if not self.segment_voiced:
            return
        self.segment_quiet_ms += len(samples) / SAMPLE_RATE * 1000
        if self.segment_quiet_ms < self.b.server_vad_end_ms:
            return
        text = await self._segment_text()
        self.session.segments.append(text)
        self.segment_start, self.segment_voiced, self.segment_quiet_ms = len(self.pcm), False, 0.0
        self.online_tokens, self.unfed = [], bytearray()
        if text:  # is_final echoes is_speaking: true while the client streams
            await self._send(self._result(self._offline_mode(), text, is_final=True))

    def _segment_override(self) -> str:
        """With ``transcript_override``: what the open segment says."""
        b, index = self.b, len(self.session.segments)
        assert b.transcript_override is not None
        if b.segment_texts:
            return b.segment_texts[index] if index < len(b.segment_texts) else ""
        return b.transcript_override if index == 0 else ""

    async def _segment_text(self) -> str:
        """What the open segment says (from its first byte to the audio so far)."""
        if self.b.transcript_override is not None:
            return self._segment_override()
        assert self.recogniser is not None
        return await asyncio.to_thread(self.recogniser.recognise, bytes(self.pcm[self.segment_start :]))

    async def _partial(self) -> None:
        """An incremental online result, as the streaming model would give it."""
        if self.mode == "offline" or self.b.flavour == "cpp-offline" or self.b.misbehave == "mute":
            return
        if self._server_vad_on() and not self.segment_voiced:
            return  # silence since the last segment: the streaming model has nothing new to say
        if self.b.transcript_override is not None:
            said = self.b.transcript_override
            if self._server_vad_on():  # the open segment's words
                said = self._segment_override()
            tokens = _tokens(said)
            spaced = " " in said.strip()
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
            if self.session.segments:
                self.session.recognised = " ".join(t for t in self.session.segments if t)
            if b.misbehave == "error":
                await self._error_reply()
            elif b.misbehave == "trickle":
                await self._trickle()
            elif b.misbehave not in ("mute", "flood"):  # a flooding server never gets to its final
                await self._flush_reply(text, wants_ack=wants_ack)
                if b.busy_after_final_s > 0:
                    self._busy(b.busy_after_final_s)
        log.debug("funasr_stub_flushed", text=self.session.recognised, frames=self.session.frames_received)

    def _busy(self, seconds: float) -> None:
        """Stop reading the socket for ``seconds``: a close frame from the client is answered late."""
        transport = self.ws.transport
        transport.pause_reading()
        asyncio.get_running_loop().call_later(seconds, _resume_reading, transport)

    async def _final_text(self) -> str:
        if self._server_vad_on() and self.session.segments:
            # Only the audio since the last segment is decoded: nothing when no voice came since.
            tail = await self._segment_text() if self.segment_voiced else ""
            self.session.segments.append(tail)
            return tail
        if self.b.transcript_override is not None:
            return self.b.transcript_override
        assert self.recogniser is not None
        return await asyncio.to_thread(self.recogniser.recognise, bytes(self.pcm))

    async def _flush_reply(self, text: str, *, wants_ack: bool) -> None:
        flavour, online = self.b.flavour, self.mode == "online"
        final = punctuate(text) if self.b.punctuate else text  # what the offline results say
        if flavour == "cpp-2pass":
            if online:
                await self._send(self._result("2pass-online", self._rest_of(text), is_final=True))
            elif text:
                await self._send(self._result("2pass-offline", final, is_final=True))
            else:
                await self._send(self._result(None, "", is_final=True))  # no mode when empty
        elif flavour == "cpp-offline":
            await self._send(self._result("offline", final, is_final=False))  # always false
        elif flavour == "python-classic":
            # The flush echoes is_speaking (false); empty text or online mode: no message at all.
            if text and not online and not self.b.silent_flush:
                await self._send(self._result(self._offline_mode(), final, is_final=False))
        else:  # python-2026
            if online:
                await self._send(self._result("online", self._rest_of(text), is_final=True))
            elif text:
                await self._send(self._result(self._offline_mode(), final, is_final=True, spk_name="unknown"))
            if wants_ack:
                await self._send(self._result(self.mode, None, is_final=True, is_end=True))

    async def _trickle(self) -> None:
        """One character at a time, for ever: the client must give up on its own clock."""
        while True:
            await self._send(self._result(self._online_mode(), "a", is_final=False))
            await asyncio.sleep(self.b.trickle_interval_s)

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
            raise SessionAborted

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
                await self._send(step.message, text=step.as_text or None)

    async def _send(self, message: dict[str, Any] | str | bytes, *, text: bool | None = None) -> None:
        self.session.sent.append(message)
        # ensure_ascii like the classic Python server: \\uXXXX escapes for Chinese.
        await self.ws.send(json.dumps(message) if isinstance(message, dict) else message, text=text)

    def _violation(self, what: str) -> None:
        self.session.violations.append(what)
        log.warning("funasr_stub_violation", violation=what)

    async def _abort(self, what: str) -> Any:
        """Record a violation and end the session like the classic server (close 1000, no result)."""
        self._violation(what)
        await self.ws.close(1000)
        raise SessionAborted


def _resume_reading(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.resume_reading()
