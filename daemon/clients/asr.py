"""FunASR websocket client: one connection per utterance (docs/protocols.md, "FunASR websocket").

``FunAsrClient.open_session()`` connects and sends the configuration message. The session then
runs two tasks: a sender that re-frames audio into ``settings.frame_bytes`` binary messages and
paces them at real time (a ``burst_ms`` pre-roll may go at once, and so does audio sent
``at_once``), and a receiver that reads results from the start and feeds them to a
``TranscriptAssembler``. ``finish()`` sends the end
marker, waits for the final result the way the configured server flavour signals it, with a
quiet-period timeout as the safety net, and closes with a normal close frame.

Nothing from websockets or ssl escapes: every failure is an ``AsrError`` (``AsrTimeout`` when it
is a wait that ran out) whose message names the URL.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Close

from daemon.clients.asr_text import TranscriptAssembler
from daemon.clients.json_frame import json_object
from daemon.clients.tidying import Tidying
from daemon.clients.tls import untrusted_certificate_message
from daemon.config import AsrSettings
from daemon.errors import AsrError, AsrTimeout
from states.events import Transcript
from states.ports import MIC_RATE

__all__ = ["END_MARKER", "FunAsrClient", "FunAsrSession", "build_config_message"]

log = structlog.get_logger()

END_MARKER: dict[str, Any] = {"is_speaking": False, "is_end": True}
"""End of speech. ``is_end`` asks Python >= 2026-07-29 servers for an acknowledgement; others ignore it."""

BYTES_PER_SECOND = MIC_RATE * 2
MAX_MESSAGE_BYTES = 2**20
"""Results are small (a few hundred bytes); this only guards against a runaway server."""
CLOSE_TIMEOUT_S = 2.0
"""How long our close frame waits for the server's (the C++ server answers at once)."""
SEND_SLACK_S = 5.0
"""Extra time allowed, beyond the audio's own duration, for the sender to hand over all audio."""
SEGMENT_AFTER_VOICE_S = 0.15
"""A segment result counts as covering the voice only when it came at least this long after the
voice's last sample left. A server VAD closes a segment only after hearing silence after the
voice (a few hundred milliseconds for FunASR's), and the audio goes at real time, so the segment
that holds the voice's end cannot come sooner; an earlier segment's result that a busy server
delivers late, while the last words are still on their way, usually does. A server whose VAD
closes segments sooner than this only loses the shortcut (the client waits as before)."""
COVERED_GRACE_S = 0.05
"""How long the client still listens after the end marker once the server's last offline
segment already covers all the voice (docs/protocols.md "FunASR: when is the utterance final"):
only for a result that was already on its way when the end marker left, such as an online delta
that shows the server heard more. It cannot wait for a flush that decodes more speech (that takes
an offline pass: a hundred milliseconds or more), and it does not have to: the rule only applies
when no speech came after the segment. 50 ms is several round trips on a LAN and keeps end marker
-> LLM request under the 100 ms target."""


def _hard_cap_s(settings: AsrSettings) -> float:
    """Longest wait after the end marker, even while the server keeps sending non-final results."""
    return 4 * settings.final_timeout_s + 1.0


def build_config_message(settings: AsrSettings) -> dict[str, Any]:
    """The first message of a session, as docs/protocols.md "FunASR: configuration message" describes it."""
    return {
        "mode": settings.mode,
        "chunk_size": [int(n) for n in settings.chunk_size],
        "chunk_interval": settings.chunk_interval,
        "encoder_chunk_look_back": 4,
        "decoder_chunk_look_back": 0,
        "wav_name": settings.wav_name,
        "wav_format": "pcm",
        "audio_fs": MIC_RATE,
        "is_speaking": True,
        # A JSON object inside a string: the C++ server throws on an object value.
        "hotwords": json.dumps(settings.hotwords, ensure_ascii=False) if settings.hotwords else "",
        "itn": settings.itn,
    }


def _ssl_context(settings: AsrSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise AsrError(f"cannot load the ASR CA file {settings.ca_file!r}: {exc}") from exc
    if not settings.tls_verify:
        # FunASR ships a self-signed certificate (runtime/ssl_key/server.crt).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class FunAsrClient:
    """Implements ``states.ports.AsrClient`` for a FunASR websocket server."""

    def __init__(
        self,
        settings: AsrSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        tidying: Tidying | None = None,
    ) -> None:
        """``tidying``: where sessions leave their close handshakes, so that closing never delays
        the caller (the daemon waits for them at shutdown); None: each close is awaited."""
        self._settings = settings
        self._clock = clock
        self._url = settings.endpoint
        self._tidying = tidying
        self._tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return self._url

    def _tls_context(self) -> ssl.SSLContext:
        """Built at the first wss:// session (the start-up probe) and kept: each costs ~25 ms."""
        if self._tls is None:
            self._tls = _ssl_context(self._settings)
        return self._tls

    async def open_session(self) -> FunAsrSession:
        """Connect, send the configuration message and return a session ready for audio."""
        settings, url = self._settings, self._url
        # AsrSettings accepts only ws:// and wss:// (checked when it is built).
        ssl_arg = self._tls_context() if urlsplit(url).scheme == "wss" else None
        started = self._clock()
        ws = await self._connect(ssl_arg)
        connected_ms = round((self._clock() - started) * 1000)
        log.info("asr_connected", url=url, ms=connected_ms, subprotocol=ws.subprotocol)
        try:
            async with asyncio.timeout(settings.connect_timeout_s):
                await ws.send(json.dumps(build_config_message(settings), ensure_ascii=False))
        except BaseException as exc:
            ws.transport.abort()
            if isinstance(exc, ConnectionClosed):
                raise AsrError(f"ASR server {url} closed the connection before the configuration message") from exc
            if isinstance(exc, TimeoutError):
                raise AsrTimeout(f"could not send the configuration message to {url}") from exc
            raise
        return FunAsrSession(ws, settings, clock=self._clock, tidying=self._tidying)

    async def _connect(self, ssl_arg: ssl.SSLContext | None) -> ClientConnection:
        settings, url = self._settings, self._url
        secure = ssl_arg is not None
        other = "ws://" if secure else "wss://"
        kwargs: dict[str, Any] = {"ssl": ssl_arg} if secure else {}
        try:
            # The outer timeout is a backstop: open_timeout already covers TCP, TLS and the handshake.
            # (asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel.)
            async with asyncio.timeout(settings.connect_timeout_s + 1.0):
                return await connect(
                    url,
                    subprotocols=["binary"] if settings.offer_binary_subprotocol else None,  # type: ignore[list-item]
                    open_timeout=settings.connect_timeout_s,
                    ping_interval=None,  # the classic server blocks its loop while inferring: pongs come late
                    close_timeout=CLOSE_TIMEOUT_S,
                    max_size=MAX_MESSAGE_BYTES,
                    compression=None,  # audio does not compress; the C++ server does not negotiate it
                    proxy=None,  # a LAN service; an environment proxy must not capture it
                    **kwargs,
                )
        except TimeoutError as exc:
            raise AsrTimeout(
                f"no websocket handshake from ASR server {url} within {settings.connect_timeout_s:g} s"
                + ("" if secure else "; if the server uses TLS, use wss://")
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            untrusted = untrusted_certificate_message("asr", url, exc) or f"TLS certificate of {url} not trusted"
            hint = "FunASR's images ship a self-signed runtime/ssl_key/server.crt: pin it"
            raise AsrError(f"{untrusted}; {hint}") from exc
        except ssl.SSLError as exc:
            raise AsrError(
                f"TLS handshake with ASR server {url} failed ({exc.reason or exc}); "
                f"if the server is plain websocket, use {other}"
            ) from exc
        except ConnectionRefusedError as exc:
            raise AsrError(f"ASR server {url} refused the connection (is it running?)") from exc
        except InvalidStatus as exc:
            raise AsrError(
                f"ASR server {url} rejected the websocket handshake with HTTP {exc.response.status_code}"
            ) from exc
        except InvalidMessage as exc:
            # A plain client talking to a TLS port reads a TLS alert or an EOF instead of HTTP.
            hint = "; if the server uses TLS, use wss://" if not secure else ""
            raise AsrError(f"no valid websocket handshake response from ASR server {url} ({exc}){hint}") from exc
        except (InvalidHandshake, InvalidURI) as exc:
            raise AsrError(f"websocket handshake with ASR server {url} failed: {exc}") from exc
        except (ConnectionResetError, EOFError) as exc:
            hint = "; if the server uses TLS, use wss://" if not secure else f"; if it is plain websocket, use {other}"
            raise AsrError(f"ASR server {url} dropped the connection during the handshake{hint}") from exc
        except OSError as exc:
            raise AsrError(f"cannot connect to ASR server {url}: {exc}") from exc


class FunAsrSession:
    """One utterance on one connection. Implements ``states.ports.AsrSession``."""

    def __init__(
        self,
        ws: ClientConnection,
        settings: AsrSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        tidying: Tidying | None = None,
    ) -> None:
        self._ws = ws
        self._tidying = tidying
        self._settings = settings
        self._url = settings.endpoint
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._assembler = TranscriptAssembler(settings.flavour, max_chars=settings.max_transcript_chars)
        self._frame_bytes = settings.frame_bytes
        self._frame_s = self._frame_bytes / BYTES_PER_SECOND
        self._pending = bytearray()
        self._frames: asyncio.Queue[tuple[bytes, bool] | None] = asyncio.Queue()
        """(frame, paced) in order; None after the last: the end marker."""
        self._queued_bytes = 0
        """Audio bytes handed to the session so far (``send_audio`` and the tail at ``finish``)."""
        self._sent_bytes: list[int] = []
        self._sent_at: list[float] = []
        """After each audio frame went out: the bytes sent so far, and the loop time."""
        self._voice_end_byte: int | None = None
        """Where the voice ended in the audio (``finish(trailing_silence_ms=...)``); None: unknown."""
        self._last_segment_at: float | None = None
        """Loop time of the last offline (segment) result."""
        self.covered = False
        """The transcript was taken from a segment that covered all the voice, without waiting
        for the server's answer to the end marker."""
        self._error: AsrError | None = None
        self._wake = asyncio.Event()
        self._final = False
        self._end_queued = False
        self._end_sent_at: float | None = None  # loop time
        self._end_sent_clock: float | None = None  # injected clock, for the asr_final ms
        self._last_result_at = self._loop.time()
        self._transcript: Transcript | None = None
        self._closed = False
        self.frames_sent = 0
        """Binary messages handed to the socket so far."""
        self._sender = asyncio.create_task(self._send_loop(), name="asr-send")
        self._receiver = asyncio.create_task(self._receive_loop(), name="asr-receive")

    @property
    def text(self) -> str:
        """The utterance text so far (partials included)."""
        return self._assembler.text

    async def send_audio(self, pcm: bytes, *, at_once: bool = False) -> None:
        """Queue audio of any length; whole frames go to the sender at once, the rest waits.
        ``at_once``: these frames are sent unpaced (audio kept from earlier in the utterance), and
        the pacing clock restarts at the first paced frame after them."""
        if self._error is not None:
            raise self._error
        if self._closed or self._end_queued:
            raise AsrError(f"ASR session with {self._url} is already finished")
        self._pending += pcm
        self._queued_bytes += len(pcm)
        size = self._frame_bytes
        whole = len(self._pending) - len(self._pending) % size
        for start in range(0, whole, size):
            self._frames.put_nowait((bytes(self._pending[start : start + size]), not at_once))
        del self._pending[:whole]

    async def finish(self, *, trailing_silence_ms: float | None = None) -> Transcript:
        """Send what is left and the end marker; return the final transcript; close the socket.

        ``trailing_silence_ms``: the audio sent ends with at least this much silence after the
        voice (None: unknown). A classic Python server stays silent after the end marker when its
        own VAD has already closed the segment; knowing where the voice ended lets the client see
        that the segment covered it, and not wait out ``final_timeout_s`` (docs/protocols.md
        "FunASR: when is the utterance final")."""
        if self._transcript is not None:
            return self._transcript
        if self._error is not None:
            await self.aclose()
            raise self._error
        if self._closed:
            raise AsrError(f"ASR session with {self._url} is closed")
        try:
            tail = bytes(self._pending[: len(self._pending) - len(self._pending) % 2])
            self._queued_bytes -= len(self._pending) % 2  # an odd byte is never sent
            self._pending.clear()
            if tail:
                self._frames.put_nowait((tail, True))
            if trailing_silence_ms is not None:
                silent = int(trailing_silence_ms * BYTES_PER_SECOND / 1000) // 2 * 2
                self._voice_end_byte = max(0, self._queued_bytes - silent)
            self._frames.put_nowait(None)
            self._end_queued = True
            backlog_s = self._frames.qsize() * self._frame_s
            send_deadline = self._loop.time() + backlog_s + self._settings.final_timeout_s + SEND_SLACK_S
            sent = await self._wait(lambda: self._end_sent_at is not None, deadline=send_deadline)
            if not sent:
                raise AsrTimeout(f"could not send the audio and end marker to ASR server {self._url} in time")
            await self._wait_for_final()
            text = self._assembler.text
            end_clock = self._end_sent_clock if self._end_sent_clock is not None else self._clock()
            ms = round((self._clock() - end_clock) * 1000)
            log.info("asr_final", url=self._url, text=text, ms=ms, explicit=self._final, covered=self.covered)
            answered = self._final or self.covered or self._quiet_is_protocol()
            self._transcript = Transcript(text, answered=answered)
            return self._transcript
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop both tasks and close the connection with a normal close frame. Idempotent.

        With a ``tidying``, the close handshake runs in the background: nothing that only tidies
        up sits between the user and the answer."""
        if self._closed:
            return
        self._closed = True
        for task in (self._sender, self._receiver):
            task.cancel()
        await asyncio.gather(self._sender, self._receiver, return_exceptions=True)
        if self._tidying is not None:
            self._tidying.run(self._close_handshake(), name="asr-close")
        else:
            await self._close_handshake()

    async def _close_handshake(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S + 1.0):
                await self._ws.close()
        except Exception:  # noqa: BLE001 - closing is best effort; drop the TCP connection instead
            self._ws.transport.abort()

    # -- internals -------------------------------------------------------------------------

    async def _wait_for_final(self) -> None:
        """Until the flavour's final result, a quiet period without results, or the hard cap."""
        assert self._end_sent_at is not None
        settings = self._settings
        hard_deadline = self._end_sent_at + _hard_cap_s(settings)
        while not self._final:
            seen = self._last_result_at
            self.covered = self._segment_covers_voice()
            quiet = COVERED_GRACE_S if self.covered else settings.final_timeout_s
            quiet_deadline = max(self._end_sent_at, seen) + quiet

            def final_or_new_result(seen: float = seen) -> bool:
                return self._final or self._last_result_at != seen

            progressed = await self._wait(final_or_new_result, deadline=min(quiet_deadline, hard_deadline))
            if not progressed:
                break
        if self._final:
            self.covered = False
            return
        if self.covered:
            log.info("asr_segment_covered", url=self._url, flavour=settings.flavour, segments=self._assembler.segments)
            return
        # The safety net of docs/protocols.md "FunASR: when is the utterance final": the flush can be
        # silent, so the text is what came. In online mode the classic server never answers the end
        # marker: there, the quiet period is the protocol, not an anomaly.
        waited = self._loop.time() - self._end_sent_at
        expected = self._quiet_is_protocol()
        (log.debug if expected else log.warning)(
            "asr_no_final",
            url=self._url,
            flavour=settings.flavour,
            reason="hard_cap" if self._loop.time() >= hard_deadline else "quiet_timeout",
            waited_s=round(waited, 2),
        )

    def _segment_covers_voice(self) -> bool:
        """The last result closed a server VAD segment after all the voiced audio had been sent,
        and nothing with words came after it: that segment ends after the voice, so the
        transcript is complete even if the server says nothing more (the classic server's flush
        is silent then). A segment closed before the voice ended (a pause mid-sentence) does not
        count: the speech after it still needs the flush."""
        if self._settings.flavour != "python-classic" or self._settings.mode == "online":
            return False
        voice_end, segment_at = self._voice_end_byte, self._last_segment_at
        if voice_end is None or segment_at is None or not self._assembler.segment_closed:
            return False
        # The first frame that took the byte count past the voice's end carried its last sample.
        i = bisect.bisect_left(self._sent_bytes, voice_end)
        if voice_end > 0 and i == len(self._sent_bytes):
            return False  # the voice has not all left yet
        voice_sent_at = self._sent_at[i] if voice_end > 0 else -math.inf
        return segment_at >= voice_sent_at + SEGMENT_AFTER_VOICE_S

    def _quiet_is_protocol(self) -> bool:
        """In online mode the classic server never answers the end marker: a quiet period is its
        way of being done, not a silence."""
        return self._settings.flavour == "python-classic" and self._settings.mode == "online"

    async def _wait(self, done: Callable[[], bool], *, deadline: float) -> bool:
        """Wait until ``done()`` (True) or the loop-time deadline (False); raise the session error if one occurs."""
        while True:
            if self._error is not None:
                raise self._error
            if done():
                return True
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()

    def _fail(self, error: AsrError) -> None:
        if self._error is None and not self._final:
            self._error = error
            log.warning("asr_failed", url=self._url, error=str(error))
        self._wake.set()

    async def _send_loop(self) -> None:
        burst_s = self._settings.burst_ms / 1000
        started: float | None = None  # when the paced run began; None: at the next paced frame
        paced = 0  # frames sent since ``started``
        try:
            while True:
                item = await self._frames.get()
                if item is None:
                    break
                frame, on_time = item
                if not on_time:
                    started = None
                else:
                    now = self._clock()
                    if started is None:
                        started, paced = now, 0
                    due = started + paced * self._frame_s - burst_s
                    if due > now:
                        await asyncio.sleep(due - now)
                    paced += 1
                await self._ws.send(frame)
                self.frames_sent += 1
                self._sent_bytes.append((self._sent_bytes[-1] if self._sent_bytes else 0) + len(frame))
                self._sent_at.append(self._loop.time())
            await self._ws.send(json.dumps(END_MARKER))
            self._end_sent_at = self._loop.time()
            self._end_sent_clock = self._clock()
            self._wake.set()
            log.debug("asr_end_sent", url=self._url, frames=self.frames_sent)
        except ConnectionClosed as exc:
            self._fail(self._closed_error(exc))
        except Exception as exc:  # noqa: BLE001 - reported through finish()/send_audio()
            self._fail(AsrError(f"sending audio to ASR server {self._url} failed: {exc!r}"))

    async def _receive_loop(self) -> None:
        try:
            async for raw in self._ws:
                self._last_result_at = self._loop.time()
                msg = self._parse(raw)
                segments = self._assembler.segments
                try:
                    final = self._assembler.feed(msg, after_end_marker=self._end_sent_at is not None)
                except AsrError as exc:
                    raise AsrError(f"ASR server {self._url}: {exc}") from exc
                if self._assembler.segments != segments:
                    self._last_segment_at = self._last_result_at
                self._wake.set()
                if final:
                    self._final = True
                    return
                log.debug("asr_partial", url=self._url, text=self._assembler.text)
                await asyncio.sleep(0)  # a server flooding results must not starve the loop (the speaker)
            self._fail(self._closed_error(None))
        except ConnectionClosed as exc:
            self._fail(self._closed_error(exc))
        except AsrError as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - reported through finish()/send_audio()
            self._fail(AsrError(f"reading results from ASR server {self._url} failed: {exc!r}"))

    def _parse(self, raw: str | bytes) -> dict[str, Any]:
        try:
            return json_object(raw)
        except ValueError as exc:
            raise AsrError(f"ASR server {self._url} sent {exc}") from exc

    def _closed_error(self, exc: ConnectionClosed | None) -> AsrError:
        """Any close before the final result is an error, even code 1000. The error keeps the
        close code and reason, and says who closed: when the client closed first (1007: the server
        sent a text frame that is not UTF-8; 1009: a message too big), the server broke the
        protocol, but the close was ours. See docs/protocols.md "FunASR: observed quirks"."""
        protocol = self._ws.protocol
        rcvd, sent = (protocol.close_rcvd, protocol.close_sent) if exc is None else (exc.rcvd, exc.sent)
        ours_first = sent is not None and (rcvd is None or not protocol.close_rcvd_then_sent)
        if ours_first:
            assert sent is not None
            error = AsrError(
                f"moss-voice closed the connection to ASR server {self._url} ({_close_text(sent)}) before the "
                "final result: what the server sent broke the websocket protocol"
            )
        else:
            how = _close_text(rcvd) if rcvd is not None else "no close frame"
            error = AsrError(f"ASR server {self._url} closed the connection ({how}) before the final result")
        if exc is not None:
            error.__cause__ = exc
        return error


def _close_text(close: Close) -> str:
    return f"code {close.code}" + (f" {close.reason!r}" if close.reason else "")
