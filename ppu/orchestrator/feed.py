"""The lab's live event feed: transitions and progress, put on each subscriber's queue.

A subscriber that falls :data:`MAX_QUEUED` events behind misses the newer ones (counted), so a slow
dashboard never grows the orchestrator's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

MAX_QUEUED = 10_000


class EventFeed:
    def __init__(self, counters: Counter[str]):
        self._counters = counters
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []

    def __bool__(self) -> bool:
        """Whether anyone listens (no event is built for nobody)."""
        return bool(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        for q in self._subscribers:
            if q.qsize() < MAX_QUEUED:
                q.put_nowait(event)
            else:
                self._counters["events_dropped_slow_subscriber"] += 1

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(q)
