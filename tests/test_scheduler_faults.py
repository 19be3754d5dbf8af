"""Issue 12/13 at the scheduler: attempt identity, inventories, undelivered work, who may report.

No sockets, no clock: each test feeds events and checks the instructions and states that come
back. The wire-level versions of the same failures are in tests/test_transport_faults.py.
"""

from __future__ import annotations

import pytest
from sched_helpers import assigns, ok, register, sched, spec, submit, task

from ppu.errors import NotAllowed
from ppu.events import (
    Abort,
    Assign,
    BackendLost,
    Finished,
    Forget,
    Heartbeat,
    Inventory,
    RegisterBackend,
    Review,
    Started,
    Tick,
    Undelivered,
)
from ppu.models import ActionClass, TaskState

S = TaskState
ONCE = ActionClass.once


def _robot(s, name: str = "robot", reg: str = "r1", at: float = 0.0, liveness: float = 3.0,
           held: tuple[str, ...] = (), same: bool = False):
    return s.handle(RegisterBackend(spec(name, "synthesize", kind="physical"), at, held, liveness, same, reg))


def test_same_worker_without_the_task_requeues_it_instead_of_review():
    """After an orchestrator restart the worker process that held the backend comes back without
    an `assigned` once task: the assignment never reached it, so the task goes back to its queue."""
    s = sched()
    _robot(s)
    submit(s, task("syn", "synthesize", ONCE))
    assert s.state_of("syn") is S.assigned
    st = _robot(s, reg="r2", at=1.0, same=True)
    assert s.state_of("syn") is S.assigned  # requeued, and at once assigned again: attempt 2
    assert [tr.dst for tr in st.transitions if tr.task_id == "syn"] == [S.ready, S.assigned]
    assert "never reached" in st.transitions[0].reason
    assert assigns(st)[0].tasks == (("syn", 2),) and assigns(st)[0].reg == "r2"


def test_another_worker_without_the_task_sends_it_to_review():
    s = sched()
    _robot(s)
    submit(s, task("syn", "synthesize", ONCE))
    s.handle(Started("syn", 1, 0.5, "robot"))
    _robot(s, reg="r2", at=1.0, same=False)
    assert s.state_of("syn") is S.needs_review  # it may have run: a person decides


def test_registration_keeps_what_the_worker_holds():
    s = sched()
    _robot(s)
    submit(s, task("syn", "synthesize", ONCE))
    st = _robot(s, reg="r2", at=1.0, held=("syn",), same=True)
    assert s.state_of("syn") is S.assigned and not st.transitions


def test_undelivered_assignment_goes_back_to_its_queue_and_the_backend_waits_to_be_heard():
    s = sched()
    _robot(s)
    _robot(s, name="robot2")
    submit(s, task("a", "synthesize", ONCE), task("b", "synthesize", ONCE))
    b_on = s.task("b").backend
    st = s.handle(Undelivered(b_on, (("b", 1),), 1.0, "no connected worker"))
    assert s.state_of("b") is S.ready  # not needs_review: it never left
    assert not assigns(st)  # the other robot is busy, and the unreachable one takes nothing
    s.handle(Heartbeat(b_on, 1.1))  # heard from again: it takes work
    assert s.state_of("b") is S.assigned and s.task("b").attempts == 2
    # an Undelivered for an attempt that is not the current one changes nothing
    st = s.handle(Undelivered(b_on, (("b", 1),), 1.2))
    assert not st.transitions and s.state_of("b") is S.assigned


def test_inventory_resends_a_lost_assignment_and_interrupts_nothing_in_transit():
    s = sched()
    _robot(s, reg="r1", liveness=1.0)
    [st] = submit(s, task("syn", "synthesize", ONCE))
    [a] = assigns(st)
    assert (a.tasks, a.reg, a.seq) == ((("syn", 1),), "r1", 1)
    # the worker has received nothing yet: still on its way, nothing happens
    st = s.handle(Heartbeat("robot", 0.5, Inventory("r1", 0)))
    assert not st.instructions and not st.transitions
    # a liveness period later it still has not arrived: sent again, same attempt, same number
    st = s.handle(Heartbeat("robot", 1.2, Inventory("r1", 0)))
    assert [(i.tasks, i.seq) for i in st.instructions if isinstance(i, Assign)] == [((("syn", 1),), 1)]
    assert s.state_of("syn") is S.assigned
    # an inventory from an earlier registration is ignored
    assert not s.handle(Heartbeat("robot", 1.3, Inventory("r0", 9))).transitions
    # now held: fine; then received but neither held nor reported: interrupted (it may have run)
    assert not s.handle(Heartbeat("robot", 1.4, Inventory("r1", 1, (("syn", 1),)))).transitions
    s.handle(Heartbeat("robot", 1.5, Inventory("r1", 1)))
    assert s.state_of("syn") is S.needs_review


def test_inventory_aborts_work_nobody_expects():
    s = sched()
    _robot(s, reg="r1")
    st = s.handle(Heartbeat("robot", 0.5, Inventory("r1", 0, (("ghost", 3),))))
    assert [i for i in st.instructions if isinstance(i, Abort)] == [Abort("robot", "ghost", 3)]


def test_retry_after_review_is_a_new_attempt_and_the_old_one_is_stale():
    s = sched()
    _robot(s)
    submit(s, task("syn", "synthesize", ONCE))
    s.handle(BackendLost("robot", 1.0))
    assert s.state_of("syn") is S.needs_review
    s.handle(Review("syn", "retry", 2.0, "op"))
    st = _robot(s, reg="r2", at=3.0)
    assert assigns(st)[0].tasks == (("syn", 2),)
    # the first attempt's result arrives late: dropped by the scheduler (the shell keeps it)
    st = s.handle(Finished(ok("syn", 1, sample_id="s1"), 4.0, "robot"))
    assert s.state_of("syn") is S.assigned and not st.results
    s.handle(Finished(ok("syn", 2, sample_id="s2"), 5.0, "robot"))
    assert s.state_of("syn") is S.succeeded


@pytest.mark.parametrize("attempt,backend", [(0, "robot"), (1, "robot2"), (2, "robot")])
def test_results_and_starts_only_from_the_holder_of_the_current_attempt(attempt: int, backend: str):
    s = sched()
    _robot(s)
    _robot(s, name="robot2")
    submit(s, task("syn", "synthesize", ONCE), task("other", "synthesize", ONCE))
    assert s.task("syn").backend == "robot"
    with pytest.raises(NotAllowed):
        s.handle(Finished(ok("syn", attempt), 1.0, backend))
    with pytest.raises(NotAllowed):
        s.handle(Started("syn", attempt, 1.0, backend))
    assert s.state_of("syn") is S.assigned and s.task("syn").attempts == 1


def test_a_result_for_a_task_never_assigned_or_waiting_for_approval_is_refused():
    s = sched()
    submit(s, task("queued", "synthesize", ONCE))  # no backend: ready, never assigned
    with pytest.raises(NotAllowed):
        s.handle(Finished(ok("queued", 0), 1.0, "robot"))
    with pytest.raises(NotAllowed):
        s.handle(Finished(ok("queued", 1), 1.0, "robot"))
    assert s.state_of("queued") is S.ready


def test_lost_backend_is_forgotten_when_it_never_comes_back():
    s = sched(forget_after_s=5.0)
    register(s, spec("spoof-1"), at=0.0, liveness=1.0)
    st = s.handle(Tick(1.5))
    assert any(isinstance(i, Forget) and not i.expired for i in st.instructions)
    assert [b["registered"] for b in s.backends()] == [False]
    s.handle(Tick(5.0))
    assert len(s.backends()) == 1  # not yet
    st = s.handle(Tick(7.0))
    assert s.backends() == [] and any(isinstance(i, Forget) and i.expired for i in st.instructions)
    assert not s.is_registered("spoof-1")
    assert all("spoof-1" not in names for names in s._offered_by.values())


def test_a_stall_of_the_orchestrator_itself_loses_no_backend():
    """Issue 12.7: the loop was blocked for seconds; the silence was ours, not the worker's."""
    s = sched()
    _robot(s, liveness=1.0)
    submit(s, task("syn", "synthesize", ONCE))
    s.handle(Tick(0.4))
    s.handle(Tick(8.4))  # the next tick comes 8 s late
    assert s.is_registered("robot") and s.state_of("syn") is S.assigned
    s.handle(Tick(8.9))
    assert s.is_registered("robot")
    s.handle(Tick(9.5))  # and now it really is silent
    assert not s.is_registered("robot") and s.state_of("syn") is S.needs_review
