"""The scheduler keeps the newest ended tasks, not every one; the store answers for the older ones.

The scheduler kept the end state of every task the lab had ever run (for dependencies and duplicate
ids), ~113 bytes each: 100,000 tasks held 11 MB, a lab at 5,000 tasks/s would grow ~2 GB an hour, and a
restart read every ended task back. Now it keeps ``orchestrator.ended_kept`` of them (the newest), and
once it has let older ones go the orchestrator looks up the ids it does not know in the store. These
tests keep 5 and check that everything that depends on old tasks behaves as when every one was kept:
a reused id is refused (not its stored row overwritten), a dependency on an old task is honoured, an
old task is "already ended", a wait finds it, and all of it after a restart too, where a task that
waited for approval across the restart still finds its long-ended dependency.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sched_helpers import bad, ok, register, sched, spec, submit, task
from store_backends import store_url_fixture  # noqa: F401  (store_url: SQLite and PostgreSQL)
from transport_helpers import run

from ppu.config import LabConfig, parse_lab
from ppu.errors import NotAllowed, PPUError
from ppu.events import Finished, Started, Submit
from ppu.models import TaskState
from ppu.store import Store
from ppu.transport.lab import EmbeddedLab

KEPT = 5


def test_the_scheduler_keeps_the_newest_ended_tasks_and_takes_back_what_it_is_told() -> None:
    s = sched(done_kept=3)
    register(s, spec("b", slots=10))
    submit(s, *(task(f"t{i}") for i in range(6)))
    for i in range(6):
        s.handle(Started(f"t{i}", 1, 1.0))
        s.handle(Finished(ok(f"t{i}"), 2.0))
    assert s.forgot and [s.state_of(f"t{i}") for i in range(6)] == [None] * 3 + [TaskState.succeeded] * 3
    s.recall({"t0": TaskState.failed, "t1": TaskState.ready})  # a live state is never taken as ended
    assert s.state_of("t0") is TaskState.failed and s.state_of("t1") is None
    assert s.state_of("t3") is None  # t0 came back as the newest: the oldest kept went
    with pytest.raises(NotAllowed, match="already exists"):
        s.handle(Submit(task("t0"), 3.0))


def test_the_store_gives_the_newest_ended_tasks_oldest_first_and_states_by_id(store_url: str) -> None:
    s = sched()
    steps = register(s, spec("b", slots=10))
    steps += submit(s, *(task(f"t{i}") for i in range(8)))
    for i in range(7):  # t7 stays live
        steps.append(s.handle(Started(f"t{i}", 1, 1.0)))
        steps.append(s.handle(Finished(ok(f"t{i}") if i % 2 else bad(f"t{i}", retryable=False), 2.0)))
    store = Store(store_url)
    try:
        store.apply(steps)
        live, done = store.load(done_limit=3)
        assert [t.id for t in live] == ["t7"]
        assert done == [("t4", TaskState.failed), ("t5", TaskState.succeeded), ("t6", TaskState.failed)]
        assert len(store.load()[1]) == 7
        asked = [f"t{i}" for i in (0, 1, 7)] + ["nowhere"] + [f"x{i}" for i in range(600)]  # two chunks
        assert store.task_states(asked) == {"t0": TaskState.failed, "t1": TaskState.succeeded,
                                            "t7": TaskState.assigned}
    finally:
        store.close()


def _lab(tmp: Path) -> LabConfig:
    return parse_lab({"name": "kept", "run_dir": str(tmp), "store": f"sqlite:///{tmp / 'lab.sqlite'}",
                      "orchestrator": {"ended_kept": KEPT},
                      "backends": [{"type": "echo", "name": "e", "duration_s": 0.0, "fail_when_x": 13.0}]})


def test_old_ended_tasks_are_found_in_the_store_before_and_after_a_restart(tmp_path: Path) -> None:
    async def life(first: bool) -> None:
        embedded = EmbeddedLab(_lab(tmp_path))
        c = await embedded.start()
        try:
            orch = embedded.orch
            assert orch is not None
            if first:
                old = [{"id": f"old-{i:02d}", "capability": "echo", "inputs": {"x": 13.0 if i == 1 else float(i)},
                        "max_attempts": 1} for i in range(20)]
                await c.wait(await c.submit(old))
            else:  # restored with only the newest ended tasks, and with the one the waiting task needs
                await c.set_autonomy("autonomous", capability="echo")
                await c.approve("gated")
                [gated] = await c.wait(["gated"])
                assert gated.state is TaskState.succeeded
            assert orch.sched.forgot and orch.sched.state_of("old-00") is None  # let go (or never restored)
            assert len(orch.sched._done) <= KEPT

            with pytest.raises(PPUError, match="already exists"):  # a reused id: refused, nothing half-done
                await c.submit([{"id": "old-00", "capability": "echo", "inputs": {"x": 1.0}}])
            with pytest.raises(PPUError, match="already ended"):
                await c.cancel("old-02")
            [waited] = await c.wait(["old-03"])
            assert waited.state is TaskState.succeeded

            tag = "a" if first else "b"
            after_ok, after_failed = await c.submit([
                {"id": f"after-ok-{tag}", "capability": "echo", "inputs": {"x": 1.0}, "depends_on": ["old-04"]},
                {"id": f"after-failed-{tag}", "capability": "echo", "inputs": {"x": 1.0}, "depends_on": ["old-01"]}])
            ok, failed = await c.wait([after_ok, after_failed])
            assert ok.state is TaskState.succeeded
            assert failed.state is TaskState.failed and "dependency old-01 failed" in (failed.error or "")
            assert orch.journal.fatal is None and (await c.status())["tasks"] == embedded.store.count_tasks()  # type: ignore[union-attr]
            if first:  # a task that waits for a person's approval across the restart, its dependency long ended
                await c.set_autonomy("manual", capability="echo")
                await c.submit([{"id": "gated", "capability": "echo", "inputs": {"x": 1.0}, "depends_on": ["old-05"]}])
        finally:
            await embedded.close()

    run(life(first=True), timeout=60)
    run(life(first=False), timeout=60)
