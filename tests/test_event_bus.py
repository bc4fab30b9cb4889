"""The event bus: every subscriber sees every event in order; a slow one loses only its own oldest."""

from __future__ import annotations

import asyncio

from daemon.event_bus import Event, EventBus


async def test_subscribers_get_every_event_in_order_with_seq_and_time() -> None:
    bus = EventBus(clock=lambda: 1700000000.5)
    first, second = bus.subscribe(), bus.subscribe()
    bus.emit("wake", source="button", word=None)
    bus.emit("transcript", turn_id="t1", text="hi")
    bus.close()
    for sub in (first, second):
        got = [e.as_dict() async for e in sub]
        assert got == [
            {"event": "wake", "seq": 1, "time": 1700000000.5, "source": "button", "word": None},
            {"event": "transcript", "seq": 2, "time": 1700000000.5, "turn_id": "t1", "text": "hi"},
        ]
    assert bus.last["transcript"].fields["text"] == "hi"


async def test_a_slow_subscriber_loses_its_own_oldest_events_only() -> None:
    bus = EventBus()
    slow, fine = bus.subscribe(maxsize=2), bus.subscribe()
    for i in range(5):
        bus.emit("tick", i=i)
    bus.close()
    assert [e.fields["i"] async for e in slow] == [3, 4] and slow.dropped == 3
    assert [e.fields["i"] async for e in fine] == [0, 1, 2, 3, 4] and fine.dropped == 0


async def test_follow_subscribes_when_called_so_an_event_before_the_task_starts_is_not_lost() -> None:
    bus = EventBus()
    seen: list[Event] = []
    follower = asyncio.create_task(bus.follow(seen.append))
    bus.emit("state_changed", dst="listening")  # before the task has run at all
    bus.close()
    await asyncio.wait_for(follower, 5)
    assert [e.fields["dst"] for e in seen] == ["listening"]


async def test_unsubscribing_ends_the_iteration_and_later_events_go_nowhere() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    bus.emit("a")
    bus.unsubscribe(sub)
    bus.emit("b")
    assert [e.name async for e in sub] == ["a"]
