"""The ``asr`` wake engine: the remote FunASR server, in ``online`` mode, spots the wake phrase.

No model on the robot, so any phrase the server can recognise works, Chinese included. The price
is privacy and the network: while the robot is idle, every stretch of audio the local VAD calls
speech goes to the server. Silence never does.

How a stretch of speech travels (all of it driven by ``process``, one microphone block at a time):

* While nobody speaks, the last ``preroll_ms`` of audio wait in a buffer, so that the first
  syllable, which the VAD notices late, is not lost.
* The first speech block opens a *segment*: a background task connects (``mode="online"``)
  while the pre-roll, the block and what follows queue up, then streams them.
* Non-speech blocks inside a segment are held back. When speech resumes within ``pad_after_ms``
  they are sent (short pauses between words belong to the utterance). Once a pause reaches
  ``pad_after_ms``, the held audio is dropped and ``tail_pad_ms`` of digital silence (zeros, not
  the room) is sent at once instead: an online model decodes a chunk only once the audio after
  it (the look-ahead) has arrived, so without more audio the end of a phrase said alone would
  wait, and on the classic Python server, which answers nothing to the end marker in online
  mode, never be decoded (docs/protocols.md "FunASR: online mode for wake words"). The default
  pad is one chunk plus its look-ahead (``chunk_size[1] + chunk_size[2]`` encoder frames of
  60 ms: 900 ms for ``[5, 10, 5]``). The room's sound after the speech is never sent.
* After ``close_after_ms`` of non-speech the end marker goes out and the segment ends; so does
  a segment after ``max_segment_s`` of continuous speech (a television), and a new one starts.
  The wake sessions are not paced: their audio comes at the microphone's pace already, and the
  pre-roll and the zeros should be decoded at once.
* Each ``process`` call compares the running text of the open sessions (online partials
  included) with the phrases; the final text after the end marker is compared too. A hit is
  returned by the next ``process`` call, once per segment; the session is then closed without
  waiting for its final result.

``process`` never blocks and never raises for the network: a server that is down or fails
mid-segment is logged as ``asr_wake_unavailable`` (at most once per ``log_every_s``, with a
count of what was left out) and is tried again on the first speech after a back-off that doubles
from ``retry_min_s`` to ``retry_max_s``, +-``retry_jitter`` (the daemon's one policy:
``daemon.clients.backoff.Backoff``).

With several ASR endpoints (``asr.url`` a list), a segment connects to the endpoint that served
the last one and, when that fails, to the next in the list, round the list once; only when every
endpoint failed does the back-off start. (Not always the first of the list: a wake session opens
on every stretch of speech, and a dead first endpoint would cost each one a connect timeout.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from daemon.clients.asr import BYTES_PER_SECOND, FunAsrClient, FunAsrSession
from daemon.clients.backoff import Backoff
from daemon.clients.wake_phrases import PhraseMatcher
from daemon.config import AsrSettings
from daemon.errors import AsrError
from states.ports import AsrSession

__all__ = ["AsrWakeSpotter", "PartialAsrSession"]

log = structlog.get_logger()


class PartialAsrSession(AsrSession, Protocol):
    """An ASR session whose running text (online partials included) can be read at any time."""

    @property
    def text(self) -> str: ...


Connect = Callable[[], Awaitable[PartialAsrSession]]


UNPACED_MS = 3_600_000
"""``burst_ms`` of the wake sessions: more audio than a segment ever holds, so none is paced."""


def _bytes_for_ms(ms: float) -> int:
    """Whole 16-bit samples."""
    return int(ms * BYTES_PER_SECOND / 1000) // 2 * 2


@dataclass(eq=False)
class _Segment:
    """One stretch of speech and its session."""

    generation: int
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    session: PartialAsrSession | None = None
    task: asyncio.Task[None] | None = None
    heard_bytes: int = 0
    """Audio of the segment so far (pre-roll included), sent or dropped."""
    fired: bool = False
    finishing: bool = False
    """The end marker is out; the task waits for the final result."""
    closing: bool = False
    """The task is closing the session: cancelling it now would leave the socket half closed."""
    done: bool = False
    """The task has stopped taking audio (ended, failed or fired): ``process`` drops the rest."""
    text_seen: str = ""


class _Backoff:
    """When the next connection may be tried after failures, and when a failure may be logged."""

    def __init__(self, clock: Callable[[], float], policy: Backoff, log_every_s: float) -> None:
        self._clock = clock
        self._policy = policy
        self._delays = policy.delays()
        self._log_every = log_every_s
        self.delay_s = 0.0
        self._not_before = float("-inf")
        self._logged_at = float("-inf")
        self.suppressed = 0

    def ready(self) -> bool:
        return self._clock() >= self._not_before

    def failed(self) -> tuple[bool, float]:
        """Record a failure; (log it now?, seconds until the next try)."""
        now = self._clock()
        self.delay_s = next(self._delays)
        self._not_before = now + self.delay_s
        if now - self._logged_at >= self._log_every:
            self._logged_at = now
            return True, self.delay_s
        self.suppressed += 1
        return False, self.delay_s

    def succeeded(self) -> None:
        self.delay_s = 0.0
        self._delays = self._policy.delays()
        self._not_before = float("-inf")


class AsrWakeSpotter:
    """Implements ``states.ports.HotwordEngine`` with the FunASR server's online recognition.

    ``settings`` are the daemon's ``[asr]`` settings; the wake sessions use them with
    ``mode="online"``. ``connect`` opens a session (default: ``FunAsrClient(...).open_session``).
    """

    lag_s = 0.23
    """How long after the phrase ends the text shows it (median 225 ms against the stand-in, which
    answers at once; a real server adds its inference time): the audio from there on is handed
    to the question."""

    def __init__(
        self,
        settings: AsrSettings,
        phrases: Sequence[str],
        *,
        connect: Connect | None = None,
        preroll_ms: int = 300,
        pad_after_ms: int = 200,
        close_after_ms: int = 600,
        tail_pad_ms: int | None = None,
        max_segment_s: float = 20.0,
        retry_min_s: float = 1.0,
        retry_max_s: float = 30.0,
        retry_jitter: float = 0.2,
        log_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._matcher = PhraseMatcher(phrases)
        self.phrases: tuple[str, ...] = self._matcher.phrases
        if tail_pad_ms is None:
            tail_pad_ms = 60 * (settings.chunk_size[1] + settings.chunk_size[2])
        if not 0 < pad_after_ms <= close_after_ms:
            raise ValueError(f"pad_after_ms must be > 0 and <= close_after_ms, got {pad_after_ms} and {close_after_ms}")
        self._settings = replace(settings, mode="online", burst_ms=max(settings.burst_ms, UNPACED_MS))
        self.url = self._settings.endpoint
        """The endpoint of the last session (the first of ``asr.url`` before any)."""
        self._clients = [FunAsrClient(self._settings.at(url)) for url in self._settings.urls]
        self._preferred = 0
        self._connect: Connect = connect if connect is not None else self._connect_any
        self._preroll_bytes = _bytes_for_ms(preroll_ms)
        self._pad_after_bytes = _bytes_for_ms(pad_after_ms)
        self._close_after_bytes = _bytes_for_ms(close_after_ms)
        self._tail_pad = bytes(_bytes_for_ms(tail_pad_ms))
        self._max_segment_bytes = _bytes_for_ms(max_segment_s * 1000)
        self._clock = clock
        self._backoff = _Backoff(clock, Backoff(retry_min_s, retry_max_s, jitter=retry_jitter), log_every_s)
        self._preroll = bytearray()
        self._gap = bytearray()
        self._padded = False
        """The pause now in ``_gap`` has been replaced by the zeros: its audio is never sent."""
        self._current: _Segment | None = None
        self._segments: list[_Segment] = []
        """Segments whose task runs: the current one and those finishing."""
        self._stopping: set[asyncio.Task[None]] = set()
        """Tasks cancelled by reset(), still closing their session."""
        self._generation = 0
        self._detected: str | None = None
        self._closed = False
        self.segments_started = 0
        """How many segments (sessions tried) so far."""

    # -- HotwordEngine -----------------------------------------------------------------------

    def process(self, pcm: bytes, speech: bool) -> str | None:
        """Take the next block and its VAD verdict; the phrase heard since the last call, if any."""
        if self._closed:
            return None
        if speech:
            self._speech(pcm)
        else:
            self._silence(pcm)
        self._scan_partials()
        word, self._detected = self._detected, None
        return word

    def reset(self) -> None:
        """Forget everything heard: open sessions are closed, a detection not yet returned is dropped."""
        self._generation += 1
        self._detected = None
        self._preroll.clear()
        self._gap.clear()
        self._padded = False
        self._current = None
        for segment in self._segments:
            segment.done = True
            if segment.task is not None and not segment.task.done():
                if not segment.closing:
                    segment.task.cancel()
                self._stopping.add(segment.task)
                segment.task.add_done_callback(self._stopping.discard)
        self._segments.clear()

    async def aclose(self) -> None:
        """Close every session and stop; ``process`` returns None from now on. Idempotent."""
        self._closed = True
        self.reset()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    # -- extras ----------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until every ended segment's session is closed and its final text compared, and
        the sessions cut by ``reset()`` are closed (before a turn on a server that serves one
        client at a time). The segment still open (speech not yet over) is not waited for."""
        tasks = [s.task for s in self._segments if s is not self._current and s.task is not None]
        tasks += self._stopping
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect_any(self) -> FunAsrSession:
        """A session on the endpoint that served the last one, else on the next that answers."""
        error: AsrError | None = None
        for step in range(len(self._clients)):
            i = (self._preferred + step) % len(self._clients)
            try:
                session = await self._clients[i].open_session()
            except AsrError as exc:
                error = exc
                continue
            self._preferred, self.url = i, self._clients[i].url
            return session
        assert error is not None
        raise error

    # -- audio -----------------------------------------------------------------------------

    def _speech(self, pcm: bytes) -> None:
        segment = self._current
        if segment is None:
            if not self._backoff.ready():
                self._keep_preroll(pcm)  # the server failed recently: wait for the back-off
                return
            segment = self._start()
        elif self._gap:
            if not self._padded:
                self._send(segment, bytes(self._gap))
            self._gap.clear()
            self._padded = False
        self._send(segment, pcm)
        if segment.heard_bytes >= self._max_segment_bytes:
            self._end_current()

    def _silence(self, pcm: bytes) -> None:
        if self._current is None:
            self._keep_preroll(pcm)
            return
        self._gap += pcm
        if not self._padded and len(self._gap) >= self._pad_after_bytes:
            self._pad(self._current)
        if len(self._gap) >= self._close_after_bytes:
            self._end_current()

    def _keep_preroll(self, pcm: bytes) -> None:
        self._preroll += pcm
        excess = len(self._preroll) - self._preroll_bytes
        if excess > 0:
            del self._preroll[: excess + excess % 2]

    def _start(self) -> _Segment:
        segment = _Segment(generation=self._generation)
        segment.task = asyncio.create_task(self._run(segment), name="asr-wake-segment")
        self._segments.append(segment)
        self._current = segment
        self.segments_started += 1
        if self._preroll:
            self._send(segment, bytes(self._preroll))
            self._preroll.clear()
        return segment

    def _send(self, segment: _Segment, pcm: bytes) -> None:
        segment.heard_bytes += len(pcm)
        if not segment.done and pcm:
            segment.queue.put_nowait(pcm)

    def _pad(self, segment: _Segment) -> None:
        """Zeros instead of the pause, so the server decodes the speech before it."""
        self._padded = True
        if self._tail_pad and not segment.done:
            segment.queue.put_nowait(self._tail_pad)

    def _end_current(self) -> None:
        segment, self._current = self._current, None
        assert segment is not None
        if not self._padded:
            self._pad(segment)
        if not segment.done:
            segment.queue.put_nowait(None)
        tail = bytes(self._gap[-self._preroll_bytes :]) if self._preroll_bytes else b""
        self._gap.clear()
        self._padded = False
        self._preroll[:] = tail

    # -- phrases ---------------------------------------------------------------------------

    def _scan_partials(self) -> None:
        for segment in self._segments:
            session = segment.session
            if session is None or segment.fired:
                continue
            text = session.text
            if text != segment.text_seen:
                segment.text_seen = text
                self._check(segment, text, final=False)

    def _check(self, segment: _Segment, text: str, *, final: bool) -> None:
        if segment.fired or segment.generation != self._generation or self._closed:
            return
        word = self._matcher.find(text)
        if word is None:
            return
        segment.fired = True
        segment.done = True
        segment.queue.put_nowait(None)  # wakes a task that waits for audio: it closes the session
        if segment.finishing and not segment.closing and not final and segment.task is not None:
            # Seen in a partial while the task waits for the final result (the classic server in
            # online mode never sends one): no need to wait, close the session now. (Never from
            # the task itself: final=True comes from there.)
            segment.task.cancel()
        self._detected = word
        log.info(
            "asr_wake_detected",
            word=word,
            text=text,
            final=final,
            audio_ms=round(segment.heard_bytes * 1000 / BYTES_PER_SECOND),
        )

    # -- the session task ------------------------------------------------------------------

    async def _run(self, segment: _Segment) -> None:
        session: PartialAsrSession | None = None
        try:
            session = await self._connect()
            segment.session = session
            while not segment.fired:
                chunk = await segment.queue.get()
                if chunk is None:
                    break
                await session.send_audio(chunk)
            if not segment.fired:
                segment.done = True
                segment.finishing = True
                transcript = await session.finish()
                segment.finishing = False
                self._check(segment, transcript.text, final=True)
            self._backoff.succeeded()
        except AsrError as exc:
            self._unavailable(exc)
        except Exception as exc:  # a background task: report it, never let it reach process()
            log.exception("asr_wake_failed", url=self.url)
            self._unavailable(exc)
        finally:
            segment.done = True
            segment.closing = True
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.aclose()
            with contextlib.suppress(ValueError):
                self._segments.remove(segment)

    def _unavailable(self, exc: BaseException) -> None:
        log_now, retry_in_s = self._backoff.failed()
        if log_now:
            log.warning(
                "asr_wake_unavailable",
                url=self.url,
                error=str(exc),
                retry_in_s=retry_in_s,
                suppressed=self._backoff.suppressed,
            )
            self._backoff.suppressed = 0
