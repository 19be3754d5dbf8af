"""A worker runs each attempt at most once, keyed by (task id, attempt), never by batch id."""

from __future__ import annotations

import asyncio
from typing import Any

from transport_helpers import run

from ppu.backends.base import TaskRun
from ppu.backends.registry import build_backend
from ppu.host import BackendHost


def _run(tid: str, attempt: int) -> TaskRun:
    return TaskRun(task_id=tid, attempt=attempt, capability="echo", inputs={"x": 1})


def test_attempts_not_batch_ids_decide_what_runs():
    async def body() -> None:
        reports: list[tuple[str, dict[str, Any]]] = []

        async def report(kind: str, payload: dict[str, Any]) -> None:
            reports.append((kind, payload))
        host = BackendHost(build_backend({"type": "echo", "name": "e", "duration_s": 0.0}), report)
        await host.start()
        try:
            assert host.assign("t", [_run("t", 1)])
            assert not host.assign("t", [_run("t", 1)])  # a re-sent assign while it runs
            while ("t", 1) not in host.unacked:
                await asyncio.sleep(0.005)
            assert not host.assign("t", [_run("t", 1)])  # finished, not yet acknowledged
            host.ack("t", 1)
            assert not host.assign("other-label", [_run("t", 1)])  # acknowledged: never again
            # a retry after review reuses the batch id "t" (one-task batches): it is a new attempt
            assert host.assign("t", [_run("t", 2)])
            while ("t", 2) not in host.unacked:
                await asyncio.sleep(0.005)
            started = [(p["task_id"], p["attempt"]) for k, p in reports if k == "started"]
            assert started == [("t", 1), ("t", 2)]
            assert host.holding() == ([], [("t", 2)])
        finally:
            await host.close()
    run(body(), 20)
