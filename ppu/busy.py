"""How long each backend has been busy: the intervals a Gantt chart draws, and the totals utilisation reads.

A batch is busy from its assignment until its last task leaves the backend. The newest ``kept``
intervals are kept for the ``busy`` request (a chart of more is not read anyway); each backend's
busy seconds are summed as intervals close. So neither the memory nor a ``status`` grows with the
number of batches a lab has run: a digital flood of a million single-task batches once kept a
million intervals and summed them all at every status.
"""

from __future__ import annotations

import collections
from typing import Any

BUSY_KEPT = 50_000  # closed intervals kept for the busy request; older ones live on only in the totals


class BusyTime:
    """Busy intervals of every backend since ``started_at``: open ones, the newest closed ones, totals."""

    def __init__(self, started_at: float, kept: int = BUSY_KEPT):
        self.started_at = started_at
        self._open: dict[tuple[str, str], float] = {}  # (backend, batch) -> since
        self._closed: collections.deque[dict[str, Any]] = collections.deque(maxlen=kept)
        self._first = 0  # the position of the oldest kept interval: positions stay as older ones go
        self._total: dict[str, float] = {}  # closed busy seconds per backend

    def open(self, backend: str, batch_id: str, at: float) -> None:
        """A batch went to ``backend`` (a batch assigned again keeps its first start)."""
        self._open.setdefault((backend, batch_id), at)

    def close(self, backend: str | None, batch_id: str, at: float) -> None:
        """A batch's task left ``backend``; the interval ends with the batch's first one that leaves."""
        if backend is None:
            return
        start = self._open.pop((backend, batch_id), None)
        if start is None:
            return
        if len(self._closed) == self._closed.maxlen:
            self._first += 1
        self._closed.append({"backend": backend, "start": start, "end": at, "batch": batch_id})
        self._total[backend] = self._total.get(backend, 0.0) + max(0.0, at - max(start, self.started_at))

    def seconds(self, now: float) -> dict[str, float]:
        """Each backend's busy seconds since ``started_at``, the open intervals counted up to ``now``."""
        busy = dict(self._total)  # a copy: the open ones are added to it
        for (backend, _), start in self._open.items():
            busy[backend] = busy.get(backend, 0.0) + max(0.0, now - max(start, self.started_at))
        return busy

    def since(self, since: float, cursor: int = 0) -> list[tuple[int, dict[str, Any]]]:
        """(position, interval) of the kept closed intervals that ended at or after ``since``, oldest
        first, from position ``cursor`` on. A position names the same interval on every call; one let
        go since an earlier page is skipped."""
        skip = max(0, cursor - self._first)
        return [(self._first + i, iv) for i, iv in enumerate(self._closed) if i >= skip and iv["end"] >= since]

    def __len__(self) -> int:
        return len(self._closed)
