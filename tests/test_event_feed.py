"""The event feed numbers its events and sends again what a returning subscriber missed; a client's place
in it drops what comes twice and says where the stream has a hole (docs/protocol.md, events).

The whole path through real sockets, a silent network and a restart is in ``test_client_restart.py``."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from ppu import protocol as p
from ppu.errors import ValidationFailed
from ppu.orchestrator import feed as feed_mod
from ppu.orchestrator.feed import EventFeed
from ppu.transport.feed_position import FeedPosition


def _ev(i: int) -> dict[str, Any]:
    return {"type": "transition", "task_id": f"t-{i}", "dst": "succeeded"}


def _drain(q: asyncio.Queue[tuple[int, dict[str, Any]]]) -> list[int]:
    out = []
    while not q.empty():
        out.append(q.get_nowait()[0])
    return out


def test_a_subscriber_coming_back_is_sent_what_it_missed_and_told_what_is_no_longer_kept() -> None:
    counters: Counter[str] = Counter()
    feed = EventFeed(counters, kept=5)
    assert not feed  # nobody asked: no event need be built
    q, missed = feed.subscribe()
    assert feed and missed == 0
    for i in range(1, 4):
        feed.publish(_ev(i))
    assert _drain(q) == [1, 2, 3] and feed.seq == 3
    feed.unsubscribe(q)
    for i in range(4, 7):
        feed.publish(_ev(i))  # missed by the subscriber that went away after 3

    again, missed = feed.subscribe(feed.epoch, after=3)
    assert _drain(again) == [4, 5, 6] and missed == 0 and counters["events_replayed"] == 3
    feed.publish(_ev(7))
    assert _drain(again) == [7]

    for i in range(8, 12):
        feed.publish(_ev(i))  # kept now: 7..11
    late, missed = feed.subscribe(feed.epoch, after=4)
    assert _drain(late) == [7, 8, 9, 10, 11] and missed == 2  # 5 and 6 are gone

    other, missed = feed.subscribe("another-run", after=4)
    assert _drain(other) == [] and missed is None  # another run's numbers say nothing here
    fresh, missed = feed.subscribe()
    assert _drain(fresh) == [] and missed == 0
    with pytest.raises(ValidationFailed, match="beyond this run's last event") as err:
        feed.subscribe(feed.epoch, after=12)
    assert err.value.field == "after"


def test_a_slow_subscriber_loses_the_newest_events_and_the_numbers_show_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_mod, "MAX_QUEUED", 2)
    counters: Counter[str] = Counter()
    feed = EventFeed(counters)
    q, _ = feed.subscribe()
    for i in range(1, 5):
        feed.publish(_ev(i))
    assert _drain(q) == [1, 2] and counters["events_dropped_slow_subscriber"] == 2
    pos = FeedPosition()
    taken = [e for seq in (1, 2, 5) for e in pos.take(p.Event(event=_ev(seq), epoch=feed.epoch, seq=seq))]
    assert [e["type"] for e in taken] == ["transition", "transition", "gap", "transition"]
    assert taken[2]["missed"] == 2


def _event(epoch: str, seq: int) -> p.Event:
    return p.Event(event=_ev(seq), epoch=epoch, seq=seq)


def test_a_client_drops_what_comes_twice_and_says_once_where_its_stream_has_a_hole() -> None:
    pos = FeedPosition()
    assert pos.subscribe() == p.Subscribe()  # a new stream: from now on
    assert pos.subscribed({"epoch": "run-1", "seq": 10, "missed": 0}) is None
    assert [e["task_id"] for s in (11, 12) for e in pos.take(_event("run-1", s))] == ["t-11", "t-12"]

    ask = pos.subscribe()  # after a drop: on from the last one taken
    assert (ask.epoch, ask.after) == ("run-1", 12)
    assert pos.subscribed({"epoch": "run-1", "seq": 15, "missed": 0}) is None
    got = [e for s in (12, 13, 14, 15) for e in pos.take(_event("run-1", s))]  # 12 came before the drop too
    assert [e["task_id"] for e in got] == ["t-13", "t-14", "t-15"]

    pos.subscribe()  # the feed kept only 18 on: one gap, whether the reply or the events come first
    assert pos.subscribed({"epoch": "run-1", "seq": 20, "missed": 2})["missed"] == 2  # type: ignore[index]
    assert [e["type"] for s in (18, 19) for e in pos.take(_event("run-1", s))] == ["transition", "transition"]
    pos.subscribe()
    first = pos.take(_event("run-1", 22))  # 20, 21 no longer kept; the event came before the reply
    assert [e["type"] for e in first] == ["gap", "transition"] and first[0]["missed"] == 2
    assert pos.subscribed({"epoch": "run-1", "seq": 22, "missed": 2}) is None

    pos.subscribe()  # the orchestrator restarted: its new run's numbers start again
    gap = pos.subscribed({"epoch": "run-2", "seq": 3, "missed": None})
    assert gap is not None and gap["missed"] is None and "restarted" in gap["reason"]
    assert [e["task_id"] for e in pos.take(_event("run-2", 4))] == ["t-4"]
    restarted = pos.take(_event("run-3", 1))  # a restart seen first in an event
    assert [e["type"] for e in restarted] == ["gap", "transition"]
    assert pos.subscribed({"epoch": "run-3", "seq": 1, "missed": None}) is None  # said once

    pos.reset()
    assert pos.subscribe() == p.Subscribe()
    assert pos.take(p.Event(event=_ev(1))) == [_ev(1)]  # an orchestrator that numbers no events
