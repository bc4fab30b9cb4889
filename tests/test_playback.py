"""The playback core both speakers share: audible periods, pause, flush, drain (no device, no clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hardware.playback import Playback

BPS = 32000  # 16 kHz mono int16


def make(now: list[float]) -> tuple[Playback, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return Playback(clock=lambda: now[0], sleep=sleep, bytes_per_s=BPS), slept


def device_buffer(pb: Playback, size: int, t: float) -> bytes:
    """What a device does for one buffer heard from ``t`` on."""
    chunk, start = pb.take(size)
    pb.played(start, len(chunk), t)
    return chunk


def waiter(playback: Playback) -> Callable[[Callable[[], bool]], Awaitable[None]]:
    """A speaker's ``wait_until`` without the device checks."""

    async def wait_until(ready: Callable[[], bool]) -> None:
        await playback.changes.wait_until(ready, lambda: None)

    return wait_until


async def test_the_first_sample_after_idle_dates_the_period_and_a_dry_queue_ends_it() -> None:
    pb, _ = make([0.0])
    pb.enqueue(b"\x01\x00" * 100)
    assert device_buffer(pb, 640, 1.0) == b"\x01\x00" * 100  # all of it, in one buffer
    assert pb.audible_at == 1.0 and pb.last_audio_end == 1.0 + 200 / BPS
    pb.enqueue(b"\x02\x00" * 10)  # the queue ran dry: a new period
    assert pb.audible_at is None
    device_buffer(pb, 640, 2.0)
    assert pb.audible_at == 2.0 and pb.audio_bytes_played == 220


async def test_pause_plays_silence_and_keeps_the_queue_flush_drops_it() -> None:
    pb, _ = make([0.0])
    pb.enqueue(b"\x01\x00" * 100)
    pb.pause()
    assert device_buffer(pb, 64, 1.0) == b"" and pb.queued_bytes == 200
    pb.resume()
    assert device_buffer(pb, 64, 1.1) == b"\x01\x00" * 32
    assert pb.audible_at == 1.1
    assert pb.flush() == 136 and pb.queued_bytes == 0
    assert pb.audible_at is None and not pb.paused
    assert pb.take(64) == (b"", 200)  # offsets run on across a flush


async def test_drain_waits_for_the_device_then_for_the_last_sample_to_be_heard() -> None:
    now = [10.0]
    pb, slept = make(now)
    pb.enqueue(b"\x01\x00" * 320)  # 20 ms
    drain = asyncio.create_task(pb.drain(waiter(pb)))
    await asyncio.sleep(0)
    assert not drain.done()
    device_buffer(pb, 640, 10.05)
    await drain
    assert slept == [10.05 + 0.02 - 10.0]


async def test_drain_returns_at_once_after_a_flush() -> None:
    pb, slept = make([0.0])
    pb.enqueue(b"\x01\x00" * 320)
    drain = asyncio.create_task(pb.drain(waiter(pb)))
    await asyncio.sleep(0)
    pb.flush()
    await drain
    assert slept == []
