"""The durable store: journal before acknowledgement, and an exact rebuild after a restart.

Every test runs on SQLite and on PostgreSQL (the ``store_url`` fixture, ``store_backends.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sched_helpers import ok, register, spec, task
from store_backends import store_url_fixture  # noqa: F401  (store_url: SQLite and PostgreSQL)

from ppu.events import Finished, Submit
from ppu.models import ActionClass, ApprovalState, TaskSpec, TaskState
from ppu.orchestrator import LocalWorker, Orchestrator
from ppu.scheduler import Scheduler
from ppu.store import Store


def test_restart_from_store_reproduces_the_queue_exactly(store_url: str):
    store = Store(store_url)
    s = Scheduler()
    steps = register(s, spec("busy", "echo"), spec("robot", "synthesize", kind="physical"))
    steps += [s.handle(Submit(task(f"t{i}", priority=i % 3, deadline=(100.0 - i if i % 2 else None)), 1.0))
              for i in range(40)]
    steps += [s.handle(Submit(task("gate", approval=ApprovalState.waiting), 1.0)),
              s.handle(Submit(task("child", depends_on=["t5", "gate"]), 1.0)),
              s.handle(Submit(task("syn", "synthesize", ActionClass.once), 1.0))]
    steps.append(s.handle(Finished(ok("t0"), 2.0)))
    store.apply(steps)
    before = {cap: s.queue_order(cap) for cap in ("echo", "synthesize")}
    snap = {t.id: t.model_dump() for t in s.live_tasks()}
    store.close()

    store2 = Store(store_url)
    s2 = Scheduler()
    live, done = store2.load()
    s2.restore(live, done, at=3.0)
    assert {cap: s2.queue_order(cap) for cap in ("echo", "synthesize")} == before
    assert {t.id: t.model_dump() for t in s2.live_tasks()} == snap
    assert s2.state_of("t0") is TaskState.succeeded
    assert s2._seq == s._seq
    # the rebuilt scheduler goes on exactly where the old one was
    in_flight = [t.id for t in s2.live_tasks() if t.state is TaskState.assigned and t.backend == "busy"]
    a = register(s2, spec("busy", "echo"), at=3.5)[0]  # came back holding nothing
    assert [tid for ins in a.instructions for tid, _ in getattr(ins, "tasks", ())] == [before["echo"][0]]
    assert [s2.state_of(t) for t in in_flight] == [TaskState.pending]  # lost: retried after backoff
    store2.close()


def test_submission_numbers_keep_rising_across_a_restart_with_no_live_task(store_url: str):
    """Every task ended before the restart: the next one still sorts after them (the rebuilt counter
    started again at 0, so "newest first" listed the old tasks before the new one)."""
    store = Store(store_url)
    s = Scheduler()
    steps = register(s, spec("busy", "echo"))
    for i in range(3):
        steps += [s.handle(Submit(task(f"old{i}"), 1.0)), s.handle(Finished(ok(f"old{i}"), 2.0))]
    store.apply(steps)
    store.close()
    store2 = Store(store_url)
    s2 = Scheduler()
    live, done = store2.load()
    assert not live
    s2.restore(live, done, at=3.0, next_seq=store2.next_seq())
    register(s2, spec("busy", "echo"), at=3.5)
    store2.apply([s2.handle(Submit(task("new"), 4.0))])
    assert [t.id for t in store2.list_tasks(limit=2)] == ["new", "old2"]
    store2.close()


def test_in_flight_once_task_goes_to_review_when_its_worker_never_returns(store_url: str):
    store = Store(store_url)
    s = Scheduler()
    steps = register(s, spec("robot", "synthesize", kind="physical"))
    steps.append(s.handle(Submit(task("syn", "synthesize", ActionClass.once), 0.0)))
    store.apply(steps)
    store.close()
    store2 = Store(store_url)
    s2 = Scheduler()
    s2.restore(*store2.load(), at=100.0)
    assert s2.state_of("syn") is TaskState.assigned
    from ppu.events import Tick

    s2.handle(Tick(100.0 + s2.cfg.restart_grace_s + 1))
    assert s2.state_of("syn") is TaskState.needs_review
    store2.close()


def test_results_recorded_exactly_once(store_url: str):
    store = Store(store_url)
    s = Scheduler()
    steps = register(s, spec("b"))
    steps.append(s.handle(Submit(task("a"), 0.0)))
    steps.append(s.handle(Finished(ok("a"), 1.0)))
    store.apply(steps)
    store.apply([s.handle(Finished(ok("a"), 1.0))])  # a re-sent result
    assert len(store.results_for("a")) == 1
    assert [j["dst"] for j in store.journal_for("a")] == ["pending", "ready", "assigned", "succeeded"]
    store.close()


def test_schema_and_upserts_on_either_database(store_url: str):
    import sqlalchemy as sa

    from ppu.store import metadata

    store = Store(store_url)
    assert set(metadata.tables) <= set(sa.inspect(store.engine).get_table_names())
    s = Scheduler()
    steps = register(s, spec("b"))
    steps += [s.handle(Submit(task(f"t{i}", priority=i % 2), 0.0)) for i in range(5)]
    steps.append(s.handle(Finished(ok("t1" if s.state_of("t1") is TaskState.assigned else "t0"), 1.0)))
    store.apply(steps)
    store.apply(steps[-1:])  # re-sent: recorded once
    done = [t for t in store.list_tasks() if t.state is TaskState.succeeded]
    assert len(done) == 1 and len(store.results_for(done[0].id)) == 1
    assert len(store.get_tasks([t.id for t in store.list_tasks()] + ["nope"])) == 5
    assert [t.id for t in store.list_tasks(limit=2, offset=1)] == [t.id for t in store.list_tasks()][1:3]
    store.close()


# ---- through the orchestrator: the door and the journal ---------------------------------------


@pytest.fixture
def orch_env(store_url: str):
    async def make(backends: list[dict] | None = None, **autonomy):
        from ppu.backends import build_backend
        from ppu.config import AutonomyConfig, OrchestratorConfig

        store = Store(store_url)
        orch = Orchestrator(store, OrchestratorConfig(heartbeat_s=0.05, backoff_base_s=0.01),
                            AutonomyConfig(**autonomy))
        await orch.start()
        worker = LocalWorker(orch, [build_backend(b) for b in (backends or [{"type": "echo", "name": "e1"}])])
        await worker.start()
        return store, orch, worker
    return make


def test_door_refuses_bad_input_naming_field_and_changes_nothing(orch_env):
    from ppu.errors import UnknownCapabilityError, ValidationFailed

    async def body():
        store, orch, worker = await orch_env()
        with pytest.raises(UnknownCapabilityError) as e1:
            orch.submit([TaskSpec(capability="teleport", inputs={})])
        assert "teleport" in str(e1.value) and "echo" in e1.value.hint
        with pytest.raises(ValidationFailed) as e2:
            orch.submit([TaskSpec(capability="echo", inputs={"x": "lots"})])
        assert e2.value.field == "inputs.x"
        with pytest.raises(ValidationFailed) as e3:
            orch.submit([TaskSpec(capability="echo", inputs={"x": 1}),
                         TaskSpec(capability="echo", inputs={"x": 1, "extra": 2})])
        assert e3.value.field == "inputs.extra"
        with pytest.raises(ValidationFailed) as e4:
            orch.submit([TaskSpec(capability="characterize.xrd", inputs={"sample_id": "nope"})])
        assert "sample registry" in str(e4.value)
        assert store.count_tasks() == {}  # an all-or-nothing submission: nothing was accepted
        ids = orch.submit([TaskSpec(capability="echo", inputs={"x": 2})])
        (t,) = await orch.waits.wait(ids, timeout=5)
        assert t.state is TaskState.succeeded and store.final_result(ids[0]).outputs["y"] == 4
        await worker.close()
        await orch.close()
        store.close()
    asyncio.run(body())


def test_safe_limits_refused_at_the_door(orch_env):
    from ppu.errors import SafeLimitError

    async def body():
        store, orch, worker = await orch_env([{
            "type": "echo", "name": "e1", "safe_limits": {"x": {"min": 0, "max": 10, "unit": "V"}}}])
        with pytest.raises(SafeLimitError) as e:
            orch.submit([TaskSpec(capability="echo", inputs={"x": 50})])
        assert e.value.field == "inputs.x" and "safe maximum 10" in str(e.value)
        await worker.close()
        await orch.close()
        store.close()
    asyncio.run(body())


def test_manual_autonomy_waits_for_approval_and_audits_it(orch_env):
    async def body():
        store, orch, worker = await orch_env(default="manual")
        ids = orch.submit([TaskSpec(capability="echo", inputs={"x": 1}), TaskSpec(capability="echo")])
        await asyncio.sleep(0.1)
        assert orch.view.get_task(ids[0]).state is TaskState.pending
        orch.approve(ids[0], actor="alice", note="fine")
        orch.reject(ids[1], actor="alice", reason="not today")
        done = await orch.waits.wait(ids, timeout=5)
        assert [t.state for t in done] == [TaskState.succeeded, TaskState.cancelled]
        actions = [(a.actor, a.action, a.target) for a in store.audit_entries()]
        assert ("alice", "approve", ids[0]) in actions and ("alice", "reject", ids[1]) in actions
        await worker.close()
        await orch.close()
        store.close()
    asyncio.run(body())


def test_approvals_say_why_from_memory_and_again_after_a_restart(orch_env, store_url: str):
    """The policy's reason comes with each waiting task without reading the audit log per listing, and a
    restarted orchestrator reads it back, for the tasks still waiting only."""
    async def body():
        store, orch, worker = await orch_env(default="manual")
        ids = orch.submit([TaskSpec(capability="echo", inputs={"x": i}) for i in range(4)])
        orch.approve(ids[0], actor="alice")
        orch.reject(ids[1], actor="alice", reason="no")

        def no_audit_reads(*_: Any, **__: Any) -> Any:
            raise AssertionError("approvals() read the audit log")

        for name in ("audit_entries", "audit_rows", "audit_details"):
            setattr(store, name, no_audit_reads)
        listed = orch.view.approvals()
        assert [a["task_id"] for a in listed] == ids[2:]
        assert all("manual" in a["reason"] for a in listed), listed
        assert [a["task_id"] for a in orch.view.approvals(after_seq=listed[0]["seq"])] == ids[3:]
        await worker.close()
        await orch.close()
        store.close()

        store2 = Store(store_url)
        orch2 = Orchestrator(store2, orch.cfg, orch.autonomy)
        await orch2.start()
        pairs = [(a["task_id"], a["reason"]) for a in orch2.view.approvals()]
        assert pairs == [(a["task_id"], a["reason"]) for a in listed]
        orch2.approve(ids[2], actor="bob")
        assert [a["task_id"] for a in orch2.view.approvals()] == ids[3:]
        await orch2.close()
        store2.close()
    asyncio.run(body())


def test_retry_on_other_backend_through_the_orchestrator(orch_env):
    async def body():
        store, orch, worker = await orch_env([
            {"type": "echo", "name": "flaky", "fail_when_x": 3, "duration_s": 0},
            {"type": "echo", "name": "solid", "duration_s": 0.5, "time_scale": 10}])
        ids = orch.submit([TaskSpec(capability="echo", inputs={"x": 3}, pin_backend=None)])
        (t,) = await orch.waits.wait(ids, timeout=10)
        assert t.state is TaskState.succeeded
        rs = store.results_for(ids[0])
        assert all(r.provenance.backend in ("flaky", "solid") for r in rs)
        assert rs[-1].provenance.backend == "solid"
        await worker.close()
        await orch.close()
        store.close()
    asyncio.run(body())


def test_stop_resume_reviews_and_autonomy_are_audited(orch_env):
    async def body():
        store, orch, worker = await orch_env([
            {"type": "echo", "name": "e1", "duration_s": 0}])
        held = orch.controls.hold("e1", True, actor="carol")
        assert held == ["e1"]
        ids = orch.submit([TaskSpec(capability="echo", inputs={"x": 1})])
        await asyncio.sleep(0.1)
        assert orch.view.get_task(ids[0]).state is TaskState.ready  # stopped: nothing new starts
        orch.controls.hold("e1", False, actor="carol")
        (t,) = await orch.waits.wait(ids, timeout=5)
        assert t.state is TaskState.succeeded
        orch.controls.set_autonomy("manual", actor="carol", capability="echo")
        ids = orch.submit([TaskSpec(capability="echo", inputs={"x": 2})])
        (waiting,) = orch.view.approvals()
        assert waiting["task_id"] == ids[0] and "manual" in waiting["reason"]
        actions = [a.action for a in store.audit_entries() if a.actor == "carol"]
        assert actions == ["stop", "resume", "autonomy"]
        await worker.close()
        await orch.close()
        store.close()
    asyncio.run(body())


@pytest.mark.parametrize("where", ["store.url", "run_dir"])
def test_a_store_that_cannot_be_made_names_the_field_its_place_came_from(tmp_path: Path, where: str) -> None:
    """The store's folder lies under a file. A lab that set store.url was told to fix run_dir."""
    from ppu.config import parse_lab
    from ppu.errors import PPUError
    from ppu.transport import EmbeddedLab

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    raw: dict[str, Any] = {"name": "t", "run_dir": str(blocker / "run")}
    if where == "store.url":
        raw = {"name": "t", "run_dir": str(tmp_path / "run"), "store": f"sqlite:///{blocker / 'db' / 'ppu.sqlite'}"}

    async def go() -> None:
        async with EmbeddedLab(parse_lab(raw)):
            pass

    with pytest.raises(PPUError) as err:
        asyncio.run(go())
    assert err.value.field == where, err.value
