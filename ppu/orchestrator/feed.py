"""The lab's live event feed: transitions and progress, put on each subscriber's queue.

Each event is numbered (``seq``, one more than the last) within this orchestrator's run (``epoch``,
new at each start), and the newest :data:`REPLAY_KEPT` are kept, so that a subscriber whose
connection dropped (a silent network, a handed-over connection) subscribes again *after* the last
event it took and is sent again what it missed. A subscriber that falls :data:`MAX_QUEUED` events
behind misses the newer ones (counted); the numbers show it the hole, and a later subscription
after its last event fills it while the feed still keeps them. Events are not persisted: after a
restart the numbers start again under a new epoch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import uuid
from collections import Counter
from typing import Any

from ppu.errors import ValidationFailed

MAX_QUEUED = 10_000  # events waiting for one subscriber
REPLAY_KEPT = 10_000  # the newest events a subscriber coming back is sent again

Stamped = tuple[int, dict[str, Any]]  # (seq, event)


class EventFeed:
    def __init__(self, counters: Counter[str], kept: int = REPLAY_KEPT):
        self._counters = counters
        self.epoch = uuid.uuid4().hex[:16]  # this run: seq counts within it
        self.seq = 0  # the last event's number
        self._kept: collections.deque[Stamped] = collections.deque(maxlen=kept)
        self._subscribers: list[asyncio.Queue[Stamped]] = []
        self._wanted = False  # someone subscribed in this run (and may come back for what it missed)

    def __bool__(self) -> bool:
        """Whether events are wanted: no event is built for nobody, until someone subscribes."""
        return self._wanted

    def publish(self, event: dict[str, Any]) -> None:
        self.seq += 1
        item = (self.seq, event)
        self._kept.append(item)
        for q in self._subscribers:
            if q.qsize() < MAX_QUEUED:
                q.put_nowait(item)
            else:
                self._counters["events_dropped_slow_subscriber"] += 1

    def subscribe(self, epoch: str | None = None,
                  after: int | None = None) -> tuple[asyncio.Queue[Stamped], int | None]:
        """A queue of the events from now on, preceded by those after ``after`` of run ``epoch`` that are still
        kept; and how many of those are no longer kept (None: another run's, so unknown)."""
        q: asyncio.Queue[Stamped] = asyncio.Queue()
        missed: int | None = 0
        if after is not None and epoch == self.epoch:
            if after > self.seq:
                raise ValidationFailed(f"after {after} is beyond this run's last event ({self.seq})", field="after",
                                       hint="pass the seq of the last event taken, with its epoch")
            oldest = self._kept[0][0] if self._kept else self.seq + 1  # the kept ones' numbers run on
            missed = max(0, oldest - after - 1)
            for item in itertools.islice(self._kept, max(0, after + 1 - oldest), None):
                q.put_nowait(item)
            self._counters["events_replayed"] += q.qsize()
        elif after is not None:
            missed = None
        self._wanted = True
        self._subscribers.append(q)
        return q, missed

    def unsubscribe(self, q: asyncio.Queue[Stamped]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(q)
