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
            started = [run for k, p in reports if k == "started" for run in p["runs"]]
            assert started == [("t", 1), ("t", 2)]
            assert host.holding() == ([], [("t", 2)])
        finally:
            await host.close()
    run(body(), 20)


class _Recorder:
    """A WorkerLink that only records what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[tuple[str, int]]]] = []

    async def assign(self, backend: str, batch_id: str, runs: list[TaskRun], reg: str = "", seq: int = 0) -> None:
        self.sent.append((backend, [(r.task_id, r.attempt) for r in runs]))

    async def abort(self, backend: str, task_id: str, attempt: int = 0) -> None: ...

    async def pause(self, backend: str, defer: bool = True) -> str:
        return ""

    async def resume(self, backend: str) -> str:
        return ""


def test_an_assignment_no_longer_current_is_not_sent(tmp_path):
    """A re-sent assign is sent from a task, so the result's ack can leave first; by then the
    attempt is over and the assign must not go out (it would run the attempt a second time)."""
    from ppu.events import Assign
    from ppu.models import Result, ResultStatus, TaskSpec
    from ppu.orchestrator import Orchestrator
    from ppu.store import Store, sqlite_url

    async def body() -> None:
        store = Store(sqlite_url(tmp_path / "s.sqlite"))
        orch = Orchestrator(store)
        await orch.start()
        link = _Recorder()
        try:
            orch.register(build_backend({"type": "echo", "name": "e", "duration_s": 0.0}).spec(), link)
            [tid] = orch.submit([TaskSpec(capability="echo", inputs={"x": 1})])
            await asyncio.sleep(0.01)
            assert link.sent == [("e", [(tid, 1)])]
            stale = Assign("e", tid, ((tid, 1),), "", 1)
            runs = [_run(tid, 1)]
            orch.finished(Result(task_id=tid, attempt=1, status=ResultStatus.succeeded, outputs={"y": 2.0}), "e")
            await orch._assign(link, stale, runs)
            assert link.sent == [("e", [(tid, 1)])]  # not sent again
            assert orch.counters["assign_not_current"] == 1
        finally:
            await orch.close()
            store.close()
    run(body(), 20)


def test_a_batch_of_results_travels_in_few_messages_and_a_big_one_alone():
    import numpy as np

    from ppu import protocol as p
    from ppu.models import Result, ResultStatus
    from ppu.transport import worker as w

    def res(i: int, size: int = 1) -> Result:
        return Result(task_id=f"t{i}", attempt=1, status=ResultStatus.succeeded, outputs={"y": [0.5] * size})
    small = [res(i) for i in range(600)]
    assert [len(p.decode(f).results) for f in w._result_msgs("b", small)] == [256, 256, 88]  # not 600 messages
    big = w.RESULTS_MESSAGE_BYTES // 4  # floats of ~4 characters: one such result fills a message
    block = res(999).with_columns({"score": np.arange(5, dtype=np.float64)})
    results = [*small, res(600, big), res(601, big), block]
    encoded = w._result_msgs("b", results)
    msgs = [p.decode(f) for f in encoded]
    named = [(r.task_id, m.type) for m in msgs for r in ([m.result] if isinstance(m, p.ResultMsg) else m.results)]
    assert sorted(t for t, _ in named) == sorted(r.task_id for r in results)  # each exactly once
    assert {("t999", "result"), ("t600", "result"), ("t601", "result")} <= set(named)  # alone
    assert all(len(f[1]) <= w.RESULTS_MESSAGE_BYTES for f, m in zip(encoded, msgs, strict=True) if m.type == "results")


def test_results_within_the_orchestrators_limits_and_failures_for_those_over_them():
    """With the orchestrator's limits known (its answer to the registration), a batch's results are split
    below max_message_bytes, not only below the worker's own 1 MiB (a lab of 64 KiB refused them all, at
    every re-send); a result over a limit goes as its attempt's failure, not retryable, in the same place."""
    import numpy as np

    from ppu import protocol as p
    from ppu.models import Result, ResultStatus
    from ppu.transport import worker as w

    def res(i: int, size: int = 1) -> Result:
        return Result(task_id=f"t{i}", attempt=1, status=ResultStatus.succeeded, outputs={"y": [0.5] * size})
    small = [res(i, 20) for i in range(300)]  # ~150 bytes each: 256 of them are ~40 kB
    limits = (8192, 1000)
    encoded = w._result_msgs("b", [*small, res(300, 5000), res(301).with_columns({"s": np.zeros(200)})], limits)
    msgs = [p.decode(f, 8192, 1000) for f in encoded]
    assert all(len(f[1]) <= 8192 and sum(map(len, f[2:])) <= 1000 for f in encoded)
    ok = [r for m in msgs for r in (m.results if isinstance(m, p.Results) else [m.result])]
    assert sorted(r.task_id for r in ok) == sorted(f"t{i}" for i in range(302))  # each once
    failed = {r.task_id: r for r in ok if r.status is ResultStatus.failed}
    assert sorted(failed) == ["t300", "t301"] and not any(r.retryable for r in failed.values())
    assert "orchestrator.max_message_bytes" in (failed["t300"].error or "")
    blob_error = failed["t301"].error or ""
    assert "orchestrator.max_blob_bytes" in blob_error and "block_rows=125" in blob_error, blob_error
    assert len(w._result_msgs("b", small)) == 2  # limits unknown (not registered yet): as before


def test_acks_of_a_burst_are_one_message_per_worker_and_backend():
    from ppu import protocol as p
    from ppu.transport.server import _merge_acks

    out = _merge_acks([(b"w1", p.Ack(backend="a", runs=[("t1", 1)])), (b"w1", p.Reply(req="r", ok=True)),
                       (b"w1", p.Ack(backend="a", runs=[("t2", 1)])), (b"w2", p.Ack(backend="a", runs=[("t3", 2)])),
                       (b"w1", p.Ack(backend="b", runs=[("t4", 1)]))])
    assert [(i, m.type, getattr(m, "runs", None)) for i, m in out] == [
        (b"w1", "ack", [("t1", 1), ("t2", 1)]), (b"w1", "reply", None), (b"w2", "ack", [("t3", 2)]),
        (b"w1", "ack", [("t4", 1)])]
