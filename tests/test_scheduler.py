"""The scheduler as a pure state machine: events in, instructions out. No sockets, no clock."""

from __future__ import annotations

import pytest
from sched_helpers import assigned_ids, assigns, bad, ok, register, sched, spec, submit, task

from ppu.errors import IllegalTransition, NotAllowed, UnknownTaskError
from ppu.events import (
    Abort,
    Approve,
    BackendLost,
    Cancel,
    Dropped,
    Finished,
    Heartbeat,
    Hold,
    RegisterBackend,
    Reject,
    Review,
    SetBackendState,
    Started,
    Submit,
    Tick,
)
from ppu.models import TERMINAL_STATES, ActionClass, ApprovalState, BackendState, Limit, TaskState
from ppu.scheduler import TRANSITIONS

S = TaskState
ONCE = ActionClass.once


# ---- the transition table -------------------------------------------------------------------


def test_terminal_states_have_no_way_out_and_every_state_is_in_the_table():
    assert set(TRANSITIONS) == set(TaskState)
    for st in TERMINAL_STATES:
        assert TRANSITIONS[st] == frozenset()
    # needs_review is a holding state a person resolves, never back to the queue without them
    assert S.ready in TRANSITIONS[S.needs_review]


def test_illegal_transition_raises():
    s = sched()
    submit(s, task("a"))
    rec = s._tasks["a"]
    with pytest.raises(IllegalTransition) as ei:
        s._move(rec, S.running, "skip assigned")
    assert "ready" in str(ei.value) and "running" in str(ei.value)


def test_happy_path_goes_pending_ready_assigned_running_succeeded():
    s = sched()
    register(s, spec("b1"))
    st = s.handle(Submit(task("a"), 0.0))
    assert [(t.src, t.dst) for t in st.transitions] == [(None, S.pending), (S.pending, S.ready), (S.ready, S.assigned)]
    assert assigned_ids(st) == ["a"]
    st = s.handle(Started("a", 1, 0.1))
    assert st.transitions[0].dst is S.running
    st = s.handle(Finished(ok("a"), 0.2))
    assert st.transitions[-1].dst is S.succeeded
    assert s.state_of("a") is S.succeeded
    assert len(st.results) == 1
    assert st.tasks()[0].state is S.succeeded


# ---- every terminal state ------------------------------------------------------------------


def test_failed_after_max_attempts_with_backoff_and_other_backend_preferred():
    s = sched(backoff_base_s=1.0)
    register(s, spec("b1"), spec("b2"))
    st = submit(s, task("a", max_attempts=2))[0]
    first = assigns(st)[0].backend
    st = s.handle(Finished(bad("a"), 1.0, first))
    assert s.state_of("a") is S.pending  # backing off
    assert "retry 2/2" in st.transitions[-1].reason
    assert s.next_wake() is not None and s.next_wake() <= 2.0
    st = s.handle(Tick(1.5))
    assert not assigns(st)  # backoff not over
    st = s.handle(Tick(2.0))
    (a,) = assigns(st)
    assert a.backend != first and a.tasks == (("a", 2),)
    st = s.handle(Finished(bad("a", 2), 3.0, a.backend))
    assert s.state_of("a") is S.failed


def test_non_retryable_failure_fails_at_once():
    s = sched()
    register(s, spec("b1"))
    submit(s, task("a", max_attempts=5))
    s.handle(Finished(bad("a", retryable=False), 1.0))
    assert s.state_of("a") is S.failed


def test_cancel_queued_and_running():
    s = sched()
    register(s, spec("b1"))
    submit(s, task("run"), task("queued"))
    s.handle(Cancel("queued", 1.0))
    assert s.state_of("queued") is S.cancelled
    st = s.handle(Cancel("run", 1.0))
    assert st.instructions == [Abort("b1", "run")]
    assert s.state_of("run") is S.assigned  # still on the backend until it stops
    s.handle(Finished(bad("run", retryable=False, interrupted=True), 2.0))
    assert s.state_of("run") is S.cancelled
    with pytest.raises(NotAllowed):
        s.handle(Cancel("run", 3.0))


def test_once_task_interrupted_goes_to_review_and_person_decides():
    s = sched()
    register(s, spec("robot", "synthesize", kind="physical"), liveness=1.0)
    submit(s, task("syn", "synthesize", ONCE))
    s.handle(Started("syn", 1, 0.1))
    st = s.handle(Tick(5.0))  # robot missed its heartbeats
    assert s.state_of("syn") is S.needs_review
    assert not assigns(st)  # never re-run automatically, even though the robot comes back
    register(s, spec("robot", "synthesize", kind="physical"), at=6.0)
    assert s.state_of("syn") is S.needs_review
    with pytest.raises(NotAllowed):
        s.handle(Approve("syn", 7.0))  # not waiting for approval: review is the way back
    st = s.handle(Review("syn", "retry", 7.0, actor="alice"))
    assert assigned_ids(st) == ["syn"] and assigns(st)[0].tasks == (("syn", 2),)


def test_review_fail_and_manual_result():
    s = sched()
    register(s, spec("robot", "synthesize", kind="physical", slots=2))
    submit(s, task("a", "synthesize", ONCE), task("b", "synthesize", ONCE))
    s.handle(BackendLost("robot", 1.0))
    assert s.state_of("a") is S.needs_review and s.state_of("b") is S.needs_review
    s.handle(Review("a", "fail", 2.0, actor="bob", reason="crucible cracked"))
    assert s.state_of("a") is S.failed
    with pytest.raises(NotAllowed):
        s.handle(Review("b", "result", 2.0, result=bad("b")))
    st = s.handle(Review("b", "result", 2.0, actor="bob", result=ok("b", sample_id="s1")))
    assert s.state_of("b") is S.succeeded and st.results[0].outputs == {"sample_id": "s1"}


def test_interrupted_once_result_goes_to_review_and_repeatable_goes_back():
    s = sched()
    register(s, spec("robot", "synthesize", kind="physical"), spec("gpu"))
    submit(s, task("syn", "synthesize", ONCE), task("dig"))
    s.handle(Finished(bad("syn", retryable=False, interrupted=True), 1.0))
    assert s.state_of("syn") is S.needs_review
    s.handle(BackendLost("gpu", 1.0))
    assert s.state_of("dig") is S.pending  # requeued with backoff


# ---- dependencies ---------------------------------------------------------------------------


def test_dependencies_gate_and_failure_propagates_with_cause():
    s = sched()
    register(s, spec("b1", slots=4))
    submit(s, task("a", max_attempts=1), task("b", depends_on=["a"]), task("c", depends_on=["b"]),
           task("d", depends_on=["a"]))
    assert s.state_of("b") is S.pending and s.state_of("c") is S.pending
    st = s.handle(Finished(bad("a"), 1.0))
    for tid in "bcd":
        assert s.state_of(tid) is S.failed
    reasons = {t.task_id: t.reason for t in st.transitions if t.dst is S.failed}
    assert reasons["b"] == "dependency a failed" and reasons["c"] == "dependency b failed"
    # A new task on a failed dependency fails at once, naming it.
    st = submit(s, task("e", depends_on=["c"]))[0]
    assert s.state_of("e") is S.failed and "dependency c failed" in st.transitions[-1].reason


def test_dependency_success_releases_and_cancel_propagates():
    s = sched()
    register(s, spec("b1", slots=4))
    submit(s, task("a"), task("b", depends_on=["a"]), task("x"), task("y", depends_on=["x"]))
    s.handle(Cancel("x", 0.5))  # x is assigned: cancel asks the backend
    s.handle(Finished(ok("x"), 0.6))
    assert s.state_of("x") is S.cancelled and s.state_of("y") is S.failed
    st = s.handle(Finished(ok("a"), 1.0))
    assert "b" in assigned_ids(st)


def test_unknown_dependency_and_duplicate_id_are_refused_without_change():
    s = sched()
    with pytest.raises(UnknownTaskError):
        submit(s, task("a", depends_on=["nope"]))
    assert s.state_of("a") is None
    submit(s, task("a"))
    with pytest.raises(NotAllowed):
        submit(s, task("a"))


# ---- ordering and placement -------------------------------------------------------------------


def test_priority_then_deadline_then_fifo():
    s = sched()
    submit(s, task("low"), task("high", priority=5), task("late", deadline=200.0), task("soon", deadline=100.0),
           task("fifo2"))
    assert s.queue_order("echo") == ["high", "soon", "late", "low", "fifo2"]
    st = register(s, spec("b1", slots=2))[0]
    assert assigned_ids(st) == ["high", "soon"]


def test_policy_earliest_completion_then_cost_then_fidelity():
    s = sched()
    register(s, spec("slow", duration=10), spec("fast", duration=1))
    assert assigns(submit(s, task("a"))[0])[0].backend == "fast"
    s = sched()
    register(s, spec("dear", cost=5), spec("cheap", cost=1))
    assert assigns(submit(s, task("a"))[0])[0].backend == "cheap"
    s = sched()
    register(s, spec("rough", fidelity=0.5), spec("exact", fidelity=0.9))
    assert assigns(submit(s, task("a"))[0])[0].backend == "exact"


def test_backlog_counts_in_expected_completion():
    s = sched()
    register(s, spec("big", slots=2, duration=2), spec("small", duration=2.5))
    first = assigns(submit(s, task("a"))[0])[0].backend
    second = assigns(submit(s, task("b"))[0])[0].backend
    assert first == "big"  # 0/2 + 2 < 2.5
    assert second == "small"  # big now expects 2/2 + 2 = 3 > 2.5


def test_pin_and_min_fidelity():
    s = sched()
    register(s, spec("rough", fidelity=0.3, slots=5), spec("exact", fidelity=0.95, slots=5))
    st = submit(s, task("p", pin_backend="rough"), task("f", min_fidelity=0.9))
    assert assigns(st[0])[0].backend == "rough"
    assert assigns(st[1])[0].backend == "exact"
    s2 = sched()
    register(s2, spec("rough", fidelity=0.3))
    submit(s2, task("f", min_fidelity=0.9))
    assert s2.state_of("f") is S.ready  # waits for a backend good enough


def test_safe_limits_keep_tasks_off_backends_that_refuse_them():
    s = sched()
    lim = {"recipe.t": Limit(min=0, max=500)}
    register(s, spec("cold", "synthesize", limits=lim, kind="physical"),
             spec("hot", "synthesize", limits={"recipe.t": Limit(min=0, max=1200)}, kind="physical", duration=5))
    st = submit(s, task("a", "synthesize", ONCE, inputs={"recipe": {"t": 900}}))[0]
    assert assigns(st)[0].backend == "hot"


def test_one_sample_one_physical_task_at_a_time():
    s = sched()
    register(s, spec("xrd", "characterize.xrd", kind="physical"), spec("uv", "measure.band_gap", kind="physical"))
    st = submit(s, task("m1", "characterize.xrd", ONCE, sample_id="s1"),
                task("m2", "measure.band_gap", ONCE, sample_id="s1"))
    assert assigned_ids(st[0]) == ["m1"] and assigned_ids(st[1]) == []
    st = s.handle(Finished(ok("m1", phases={}, purity=1.0), 1.0))
    assert "m2" in assigned_ids(st)


# ---- batching -------------------------------------------------------------------------------


def test_batch_leaves_full_at_batch_size():
    s = sched()
    register(s, spec("gpu", batch=4, wait=0.5))
    steps = submit(s, *(task(f"t{i}") for i in range(4)), at=0.0)
    assert [assigned_ids(st) for st in steps[:3]] == [[], [], []]
    (a,) = assigns(steps[3])
    assert [tid for tid, _ in a.tasks] == ["t0", "t1", "t2", "t3"]


def test_a_batch_leaves_when_its_tasks_reach_the_byte_bound_and_one_large_task_still_goes():
    s = sched(max_batch_bytes=4_000)
    register(s, spec("gpu", batch=8, wait=60.0))
    s.handle(Hold("gpu", True, 0.0))
    submit(s, *(task(f"t{i}", inputs={"x": 1, "pad": "p" * 1_000}) for i in range(4)),
           task("huge", inputs={"x": 1, "pad": "h" * 10_000}), at=0.0)
    # 3 records of ~1.3 kB fit in 4,000 bytes: the cut batch leaves at once, not after its 60 s wait
    assert [a.tasks for a in assigns(s.handle(Hold("gpu", False, 0.1)))] == [(("t0", 1), ("t1", 1), ("t2", 1))]
    for tid in ("t0", "t1", "t2"):
        st = s.handle(Finished(ok(tid), 1.0))
    assert [a.tasks for a in assigns(st)] == [(("t3", 1),)]  # the next would pass the bound: cut again
    # the large one alone is a partial batch: it waits for its flush time, then goes, over the bound
    assert not assigns(s.handle(Finished(ok("t3"), 2.0)))
    assert [a.tasks for a in assigns(s.handle(Tick(60.0)))] == [(("huge", 1),)]


def test_a_batch_of_blocks_is_cut_by_the_bytes_of_their_rows():
    from ppu.models import Artifact

    s = sched(max_batch_blob_bytes=2_500_000)
    register(s, spec("gpu", batch=8, wait=60.0).model_copy(update={"columnar": True}))
    s.handle(Hold("gpu", True, 0.0))
    submit(s, *(task(f"b{i}", inputs={}, block=Artifact(rows=100_000, columns=["f"], sha256="0" * 64,
                                                         bytes=1_000_000)) for i in range(3)), at=0.0)
    assert [a.tasks for a in assigns(s.handle(Hold("gpu", False, 0.1)))] == [(("b0", 1), ("b1", 1))]


def test_partial_batch_leaves_after_max_wait():
    s = sched()
    register(s, spec("gpu", batch=8, wait=0.5))
    submit(s, task("t0"), task("t1"), at=10.0)
    assert s.next_wake() == pytest.approx(10.5)
    assert not assigns(s.handle(Tick(10.4)))
    (a,) = assigns(s.handle(Tick(10.5)))
    assert [tid for tid, _ in a.tasks] == ["t0", "t1"]
    # one batch = one slot; finishing every item frees it
    submit(s, task("t2"), at=10.6)
    s.handle(Finished(ok("t0"), 11.0))
    assert not assigns(s.handle(Tick(11.2)))
    st = s.handle(Finished(ok("t1"), 11.3))
    # t2 has waited since 10.6: its flush time (11.1) passed while the slot was busy, so it leaves now
    assert assigned_ids(st) == ["t2"]


def test_failing_item_in_batch_fails_only_itself():
    s = sched()
    register(s, spec("gpu", batch=2, wait=0), spec("cpu"))
    st = submit(s, task("a", max_attempts=1), task("b", max_attempts=1))
    batch = [tid for a in assigns(st[0]) + assigns(st[1]) for tid, _ in a.tasks]
    assert sorted(batch) == ["a", "b"]
    s.handle(Finished(bad("a"), 1.0))
    s.handle(Finished(ok("b"), 1.0))
    assert s.state_of("a") is S.failed and s.state_of("b") is S.succeeded


# ---- faults, leases, restarts ----------------------------------------------------------------


def test_missed_heartbeats_requeue_repeatable_on_another_backend():
    s = sched(backoff_base_s=0.0)
    register(s, spec("b1"), liveness=1.0)
    submit(s, task("a"))
    register(s, spec("b2"), at=0.5, liveness=1.0)
    s.handle(Heartbeat("b2", 1.5))
    st = s.handle(Tick(1.6))  # b1 dead (alive until 1.0), b2 alive until 2.5
    assert ("a", 2) in [t for a in assigns(st) for t in a.tasks] or s.state_of("a") is S.pending
    s.handle(Tick(1.7))
    assert s.state_of("a") is S.assigned and s._tasks["a"].backend == "b2"


def test_worker_that_comes_back_keeps_what_it_still_runs():
    s = sched()
    register(s, spec("b1", slots=2))
    submit(s, task("kept"), task("gone"))
    s.handle(RegisterBackend(spec("b1", slots=2), 1.0, ("kept",), 3.0))
    assert s.state_of("kept") is S.assigned and s.state_of("gone") is S.pending
    s.handle(Finished(ok("kept"), 2.0))
    assert s.state_of("kept") is S.succeeded


def test_duplicate_and_stale_results_are_dropped():
    s = sched(backoff_base_s=0.0)
    register(s, spec("b1"))
    submit(s, task("a"))
    s.handle(Finished(ok("a"), 1.0))
    st = s.handle(Finished(ok("a"), 1.1))
    assert isinstance(st.instructions[0], Dropped) and not st.results
    submit(s, task("b"))
    s.handle(Finished(bad("b"), 2.0))
    s.handle(Tick(2.0))
    assert s._tasks["b"].attempts == 2
    st = s.handle(Finished(ok("b", attempt=1), 2.1))
    assert isinstance(st.instructions[0], Dropped)


def test_late_success_for_requeued_attempt_is_accepted():
    s = sched(backoff_base_s=10.0)
    register(s, spec("b1"), liveness=1.0)
    submit(s, task("a"))
    s.handle(Tick(2.0))  # b1 lost, a backs off
    assert s.state_of("a") is S.pending
    st = s.handle(Finished(ok("a"), 3.0))
    assert s.state_of("a") is S.succeeded and st.results


def test_maintenance_drains_and_hold_stops_new_work():
    s = sched()
    register(s, spec("b1"))
    submit(s, task("a"), task("b"))
    s.handle(SetBackendState("b1", BackendState.maintenance, 1.0))
    st = s.handle(Finished(ok("a"), 2.0))
    assert not assigns(st) and s.state_of("b") is S.ready
    st = s.handle(SetBackendState("b1", BackendState.online, 3.0))
    assert assigned_ids(st) == ["b"]
    s.handle(Hold("b1", True, 4.0))
    submit(s, task("c"))
    s.handle(Finished(ok("b"), 5.0))
    assert s.state_of("c") is S.ready
    assert assigned_ids(s.handle(Hold("b1", False, 6.0))) == ["c"]


# ---- approvals -------------------------------------------------------------------------------


def test_waiting_for_approval_then_approve_or_reject():
    s = sched()
    register(s, spec("robot", "synthesize", kind="physical", slots=3))
    submit(s, task("a", "synthesize", ONCE, approval=ApprovalState.waiting),
           task("b", "synthesize", ONCE, approval=ApprovalState.waiting))
    assert s.state_of("a") is S.pending
    assert assigned_ids(s.handle(Approve("a", 1.0, "alice"))) == ["a"]
    s.handle(Reject("b", 1.0, "alice", "too hot"))
    assert s.state_of("b") is S.cancelled
    with pytest.raises(NotAllowed):
        s.handle(Approve("b", 2.0))
