"""Hosting backends: run assigned batches, keep outcomes until the orchestrator acknowledges them.

A :class:`BackendHost` is the part of a worker that does not care how it is connected: the
in-process link (``ppu.orchestrator.LocalWorker``) and the ZMQ worker both use it. Outcomes wait
in ``unacked`` until the orchestrator says it recorded them, so a worker that lost its
orchestrator can re-send them after reconnecting (results are idempotent by task id + attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ppu.backends.base import Backend, TaskRun
from ppu.models import Result, ResultStatus

log = logging.getLogger(__name__)

ReportFn = Callable[[str, dict[str, Any]], Awaitable[None]]
"""report(kind, payload): kind is 'started', 'progress' or 'result'."""


class BackendHost:
    def __init__(self, backend: Backend, report: ReportFn):
        self.backend = backend
        self.report = report
        self.running: dict[str, asyncio.Task[None]] = {}  # batch id -> coroutine task
        self.batch_of: dict[str, str] = {}  # task id -> batch id
        self.unacked: dict[tuple[str, int], Result] = {}
        self._started = False

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

    def assign(self, batch_id: str, runs: list[TaskRun]) -> None:
        if batch_id in self.running:
            return  # a re-sent assignment: already running
        for r in runs:
            self.batch_of[r.task_id] = batch_id
        self.running[batch_id] = asyncio.get_running_loop().create_task(self._run(batch_id, runs))

    async def _run(self, batch_id: str, runs: list[TaskRun]) -> None:
        for run in runs:
            await self.report("started", {"task_id": run.task_id, "attempt": run.attempt})

        async def progress(task_id: str, fraction: float, message: str) -> None:
            await self.report("progress", {"task_id": task_id, "fraction": fraction, "message": message})

        t0 = time.time()
        try:
            results = await self.backend.run(runs, progress)
            if len(results) != len(runs):
                raise RuntimeError(f"backend returned {len(results)} results for {len(runs)} tasks")
        except asyncio.CancelledError:
            results = [self.backend.fail(run, "aborted", t0, retryable=False, interrupted=True) for run in runs]
        except Exception as exc:  # a backend bug must not take the worker down
            log.exception("backend %s failed on batch %s", self.name, batch_id)
            results = [self.backend.fail(run, f"{type(exc).__name__}: {exc}", t0) for run in runs]
        for r in results:
            self.unacked[(r.task_id, r.attempt)] = r
            self.batch_of.pop(r.task_id, None)
        self.running.pop(batch_id, None)
        for r in results:
            await self.report("result", r.model_dump(mode="json"))

    def ack(self, task_id: str, attempt: int) -> None:
        self.unacked.pop((task_id, attempt), None)

    def pending_results(self) -> list[Result]:
        return list(self.unacked.values())

    async def abort(self, task_id: str) -> None:
        await self.backend.abort(task_id)
        batch_id = self.batch_of.get(task_id)
        task = self.running.get(batch_id) if batch_id else None
        if task is not None and len([t for t, b in self.batch_of.items() if b == batch_id]) == 1:
            task.cancel()

    async def close(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.backend.close()


def succeeded(r: Result) -> bool:
    return r.status is ResultStatus.succeeded
