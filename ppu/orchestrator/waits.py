"""Waits for tasks to end, answered with each task's final record once its end is durable.

The orchestrator tells :class:`Waits` of every task whose end its journal has made durable
(:meth:`Waits.ended`); a wait for tasks that ended is answered from the records of the last
:data:`ENDED_KEPT` ended tasks, or from the store for older ones, without a model per task.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from ppu.errors import UnknownTaskError
from ppu.models import TERMINAL_STATES, Task
from ppu.scheduler import Scheduler
from ppu.store import Store

ENDED_KEPT = 10_000  # ended tasks whose final record a wait finds without the store


class _Stored:
    """An ended task read back from the store, answering as the scheduler's records do."""

    __slots__ = ("state", "task")

    def __init__(self, task: Task):
        self.task = task
        self.state = task.state

    def to_task(self) -> Task:
        return self.task

    def body_json(self) -> str:
        return self.task.model_dump_json()


class Waits:
    """Who waits for which task, and the newest ended tasks' records (``kept`` of them)."""

    def __init__(self, sched: Scheduler, store: Store, kept: int = ENDED_KEPT):
        self._sched = sched
        self._store = store
        self.kept = kept
        self._waiters: dict[str, list[asyncio.Future[Any]]] = {}  # each answered with the ended record
        # The last `kept` tasks that ended, as durably journaled: a wait for them reads no store.
        self.records: collections.OrderedDict[str, Any] = collections.OrderedDict()  # popped oldest first

    def __len__(self) -> int:
        """Tasks someone waits for."""
        return len(self._waiters)

    def ended(self, task_id: str, rec: Any) -> None:
        """A task's end is durable: keep its record (the oldest out past ``kept``), answer its waits."""
        records = self.records
        records[task_id] = rec
        if len(records) > self.kept:
            records.popitem(last=False)
        for fut in self._waiters.pop(task_id, ()):
            if not fut.done():
                fut.set_result(rec)  # the record: wait() makes the Task, wait_json() its JSON

    def cancel_all(self) -> None:
        for futs in self._waiters.values():
            for f in futs:
                f.cancel()

    async def wait(self, task_ids: list[str], timeout: float | None = None) -> list[Task]:
        """Wait until every task has ended; returns their final records."""
        return [r.to_task() for r in await self._ended_records(task_ids, timeout)]

    async def wait_json(self, task_ids: list[str], timeout: float | None = None) -> list[str]:
        """:meth:`wait`, each task as the JSON the store keeps (what the server answers with: no
        model is built per task)."""
        return [r.body_json() for r in await self._ended_records(task_ids, timeout)]

    async def _ended_records(self, task_ids: list[str], timeout: float | None) -> list[Any]:
        """Each task's final record once every one has ended and is durable: the scheduler's record
        (kept in :attr:`records`) or, for one ended long ago, the store's (as :class:`_Stored`)."""
        loop = asyncio.get_running_loop()
        state_of = self._sched.state_of
        ended = [tid for tid in task_ids if state_of(tid) in TERMINAL_STATES or state_of(tid) is None]
        known: dict[str, Any] = {tid: rec for tid in ended if (rec := self.records.get(tid)) is not None}
        if len(known) < len(ended):  # the rest from the store, in one query, not one per id
            known.update((tid, _Stored(t)) for tid, t in
                         self._store.get_tasks([tid for tid in ended if tid not in known]).items())
        unknown = [tid for tid in ended if state_of(tid) is None and tid not in known]
        if unknown:
            raise UnknownTaskError(f"unknown task {unknown[0]!r}", field="task_ids", hint="ppu tasks lists the tasks")
        futs: list[asyncio.Future[Any]] = []
        for tid in task_ids:
            f: asyncio.Future[Any] = loop.create_future()
            rec = known.get(tid)
            if rec is not None and rec.state in TERMINAL_STATES:
                f.set_result(rec)
            else:  # live, or ended in a group not yet durable: answered after it is
                self._waiters.setdefault(tid, []).append(f)
            futs.append(f)
        try:
            gathered = asyncio.gather(*futs)
            # close() cancels waiters; a gather nobody awaits any more must not log "never retrieved"
            gathered.add_done_callback(lambda g: g.cancelled() or g.exception())
            return list(await asyncio.wait_for(gathered, timeout))
        finally:  # a timed-out or cancelled wait leaves no future behind
            for tid, f in zip(task_ids, futs, strict=True):
                waiting = self._waiters.get(tid)
                if waiting is not None and f in waiting:
                    waiting.remove(f)
                    if not waiting:
                        del self._waiters[tid]
