"""Hosting backends: run assigned batches, keep outcomes until the orchestrator acknowledges them.

A :class:`BackendHost` is the part of a worker that does not care how it is connected: the
in-process link (``ppu.orchestrator.LocalWorker``) and the ZMQ worker both use it. Outcomes wait
in ``unacked`` until the orchestrator says it recorded them, so a worker that lost its
orchestrator can re-send them after reconnecting (results are idempotent by task id + attempt).

An attempt, (task id, attempt), is the unit of identity: an assignment is deduplicated on it, never
on a batch id (a batch id can repeat, e.g. after an orchestrator restart or a retry after review).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from ppu.backends.base import Backend, TaskRun
from ppu.models import Result, ResultStatus

log = logging.getLogger(__name__)

_REMEMBER = 4096  # acknowledged attempts remembered, so a late duplicate assign never runs one again

ReportFn = Callable[[str, dict[str, Any]], Awaitable[None]]
"""report(kind, payload): 'started' {"runs": [(task id, attempt), ...]} once per batch,
'progress' {"task_id", "fraction", "message"}, 'results' {"results": [Result, ...]} once per batch
(the objects the host keeps until they are acknowledged)."""


class BackendHost:
    def __init__(self, backend: Backend, report: ReportFn):
        self.backend = backend
        self.report = report
        self.running: dict[int, asyncio.Task[None]] = {}  # run number -> coroutine task
        self.batch_of: dict[str, int] = {}  # task id -> run number
        self.attempt_of: dict[str, int] = {}  # task id -> the attempt it runs
        self.unacked: dict[tuple[str, int], Result] = {}
        self._started = False
        self._runs = 0
        self._acked: OrderedDict[tuple[str, int], None] = OrderedDict()

    @property
    def name(self) -> str:
        return self.backend.name

    async def start(self) -> None:
        if not self._started:
            await self.backend.start()
            self._started = True

    def in_flight(self) -> list[str]:
        """Task ids this host still holds: running, or finished but not yet acknowledged."""
        return sorted(set(self.batch_of) | {tid for tid, _ in self.unacked})

    def holding(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(running attempts, finished but unacknowledged attempts): a heartbeat's inventory."""
        return sorted(self.attempt_of.items()), sorted(self.unacked)

    def assign(self, batch_id: str, runs: list[TaskRun]) -> bool:
        """Start the runs not already held; False when every one was (a re-sent assignment)."""
        fresh = [r for r in runs if self.attempt_of.get(r.task_id) != r.attempt
                 and (r.task_id, r.attempt) not in self.unacked and (r.task_id, r.attempt) not in self._acked]
        if not fresh:
            return False
        self._runs += 1
        key = self._runs
        for r in fresh:
            self.batch_of[r.task_id] = key
            self.attempt_of[r.task_id] = r.attempt
        self.running[key] = asyncio.get_running_loop().create_task(self._run(batch_id, fresh, key))
        return True

    async def _run(self, batch_id: str, runs: list[TaskRun], key: int = 0) -> None:
        await self.report("started", {"runs": [(run.task_id, run.attempt) for run in runs]})

        async def progress(task_id: str, fraction: float, message: str) -> None:
            await self.report("progress", {"task_id": task_id, "fraction": fraction, "message": message})

        t0 = time.time()
        refused: list[Result] = []
        if not self.backend.columnar and any(run.block is not None for run in runs):
            # a block handed to a backend that would read its empty inputs and "succeed" on nothing
            refused = [self.backend.fail(run, f"backend {self.name} ({type(self.backend).__name__}) takes no "
                                         f"columnar blocks: submit {run.capability} row by row, or serve it "
                                         "with a backend type that does (torch, ray)", t0, retryable=False)
                       for run in runs if run.block is not None]
            runs = [run for run in runs if run.block is None]
        try:
            results = await self.backend.run(runs, progress) if runs else []
            if len(results) != len(runs):
                raise RuntimeError(f"backend returned {len(results)} results for {len(runs)} tasks")
        except asyncio.CancelledError:
            results = [self.backend.fail(run, "aborted", t0, retryable=False, interrupted=True) for run in runs]
        except Exception as exc:  # a backend bug must not take the worker down
            log.exception("backend %s failed on batch %s", self.name, batch_id)
            results = [self.backend.fail(run, f"{type(exc).__name__}: {exc}", t0) for run in runs]
        results = refused + results
        for r in results:
            self.unacked[(r.task_id, r.attempt)] = r
            if self.batch_of.get(r.task_id) == key:
                self.batch_of.pop(r.task_id, None)
                self.attempt_of.pop(r.task_id, None)
        self.running.pop(key, None)
        await self.report("results", {"results": results})

    def ack(self, task_id: str, attempt: int) -> None:
        if self.unacked.pop((task_id, attempt), None) is not None:
            self._acked[(task_id, attempt)] = None
            if len(self._acked) > _REMEMBER:
                self._acked.popitem(last=False)

    def pending_results(self) -> list[Result]:
        return list(self.unacked.values())

    async def abort(self, task_id: str, attempt: int = 0) -> None:
        if attempt and self.attempt_of.get(task_id) != attempt:
            return  # that attempt is not running here (a newer one may be)
        if task_id not in self.batch_of:
            return
        await self.backend.abort(task_id)
        key = self.batch_of.get(task_id)
        task = self.running.get(key) if key is not None else None
        if task is not None and len([t for t, b in self.batch_of.items() if b == key]) == 1:
            task.cancel()

    async def close(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.backend.close()


def succeeded(r: Result) -> bool:
    return r.status is ResultStatus.succeeded
