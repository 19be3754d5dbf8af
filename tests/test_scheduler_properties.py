"""Invariants over random event sequences (hypothesis stateful testing).

- a task is never on two backends; a backend's slots are never exceeded;
- every task ends in exactly one terminal state, once everything settles;
- a `once` task is never started twice without a person deciding so (review: retry), unless
  its assignment provably never reached a worker (undelivered, or not held by the same worker);
- a start or result from a backend that does not hold the attempt is refused and changes nothing.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sched_helpers import bad, ok, spec, task

from ppu.errors import PPUError
from ppu.events import (
    Approve,
    Assign,
    BackendLost,
    Cancel,
    Finished,
    Heartbeat,
    Hold,
    Inventory,
    RegisterBackend,
    Reject,
    Review,
    SetBackendState,
    Started,
    Step,
    Submit,
    Tick,
    Undelivered,
)
from ppu.models import TERMINAL_STATES, ActionClass, ApprovalState, BackendState, TaskState
from ppu.scheduler import Scheduler, SchedulerConfig

CAPS = {"echo": ActionClass.repeatable, "synthesize": ActionClass.once}
BACKENDS = {
    "gpu": spec("gpu", "echo", slots=2, batch=3, wait=0.5),
    "cpu": spec("cpu", "echo"),
    "robot": spec("robot", "synthesize", slots=2, kind="physical"),
    "robot2": spec("robot2", ["synthesize", "echo"], kind="physical"),
}


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler(SchedulerConfig(backoff_base_s=0.5, restart_grace_s=2.0))
        self.now = 0.0
        self.n = 0
        self.ids: list[str] = []
        self.terminal_entries: Counter[str] = Counter()
        self.once_assigns: Counter[str] = Counter()
        self.attempts_sent: set[tuple[str, int]] = set()
        self.never_reached: Counter[str] = Counter()
        self.review_retries: Counter[str] = Counter()
        self.alive: set[str] = set()

    def _do(self, ev: object) -> Step | None:
        try:
            step = self.s.handle(ev)  # type: ignore[arg-type]
        except PPUError:
            return None  # refused requests must change nothing (checked by invariants)
        for tr in step.transitions:
            if tr.src in TERMINAL_STATES:
                raise AssertionError(f"{tr.task_id} left terminal state {tr.src}")
            if tr.dst in TERMINAL_STATES:
                self.terminal_entries[tr.task_id] += 1
            if tr.src is TaskState.assigned and tr.dst is TaskState.ready:
                self.never_reached[tr.task_id] += 1
        for ins in step.instructions:
            if isinstance(ins, Assign):
                for tid, attempt in ins.tasks:
                    if (tid, attempt) in self.attempts_sent:
                        continue  # a re-sent assignment: the same attempt, run at most once
                    self.attempts_sent.add((tid, attempt))
                    if tid in self.ids and self._action(tid) is ActionClass.once:
                        self.once_assigns[tid] += 1
        return step

    def _action(self, tid: str) -> ActionClass:
        return CAPS["synthesize"] if tid.startswith("syn") else CAPS["echo"]

    def _tick(self, dt: float) -> None:
        self.now += dt
        for b in self.alive:
            self.s.handle(Heartbeat(b, self.now))

    @initialize()
    def start(self) -> None:
        self._register("gpu")

    def _register(self, name: str, keep: bool = False, same: bool = False) -> None:
        held = tuple(t for tids in self.s._backends[name].batches.values() for t in tids) \
            if keep and name in self.s._backends else ()
        self._do(RegisterBackend(BACKENDS[name], self.now, held, 3.0, same, f"reg{self.n}"))
        self.n += 1
        self.alive.add(name)

    @rule(name=st.sampled_from(sorted(BACKENDS)), keep=st.booleans())
    def register_same_worker(self, name: str, keep: bool) -> None:
        self._register(name, keep, same=True)

    @precondition(lambda self: any(t.state is TaskState.assigned for t in self.s._tasks.values()))
    @rule(data=st.data())
    def undeliver(self, data: st.DataObject) -> None:
        tid, attempt, backend = data.draw(st.sampled_from(
            [x for x in self._in_flight() if self.s._tasks[x[0]].state is TaskState.assigned]))
        self._do(Undelivered(backend, ((tid, attempt),), self.now))

    @rule(name=st.sampled_from(sorted(BACKENDS)), drop=st.booleans(), behind=st.booleans())
    def inventory(self, name: str, drop: bool, behind: bool) -> None:
        b = self.s._backends.get(name)
        if b is None or not b.registered:
            return
        keys = sorted((tid, self.s._tasks[tid].attempts) for tids in b.batches.values() for tid in tids)
        if drop and keys:
            keys = keys[1:]
        self._do(Heartbeat(name, self.now, Inventory(b.reg, max(0, b.seq - behind), tuple(keys))))

    @precondition(lambda self: bool(self._in_flight()))
    @rule(data=st.data(), attempt_off=st.sampled_from([-99, 0, 1]))
    def forge(self, data: st.DataObject, attempt_off: int) -> None:
        tid, attempt, backend = data.draw(st.sampled_from(self._in_flight()))
        other = next(n for n in BACKENDS if n != backend)
        forged = ok(tid, 0 if attempt_off == -99 else attempt + attempt_off)
        before = (self.s._tasks[tid].state, self.s._tasks[tid].attempts)
        assert self._do(Finished(forged, self.now, other if attempt_off != 1 else backend)) is None
        assert (self.s._tasks[tid].state, self.s._tasks[tid].attempts) == before

    @rule(cap=st.sampled_from(sorted(CAPS)), prio=st.integers(-2, 2), ndeps=st.integers(0, 2),
          gated=st.sampled_from([False, False, True]), data=st.data())
    def submit(self, cap: str, prio: int, ndeps: int, gated: bool, data: st.DataObject) -> None:
        tid = f"{'syn' if cap == 'synthesize' else 'dig'}{self.n}"
        self.n += 1
        deps = data.draw(st.lists(st.sampled_from(self.ids), max_size=ndeps, unique=True)) if self.ids else []
        t = task(tid, cap, CAPS[cap], priority=prio, depends_on=deps, max_attempts=2,
                 approval=ApprovalState.waiting if gated else ApprovalState.not_required)
        if self._do(Submit(t, self.now)) is not None:
            self.ids.append(tid)

    @precondition(lambda self: any(t.approval is ApprovalState.waiting for t in self.s._tasks.values()))
    @rule(data=st.data(), approve=st.booleans())
    def decide(self, data: st.DataObject, approve: bool) -> None:
        tid = data.draw(st.sampled_from(
            sorted(t.id for t in self.s._tasks.values() if t.approval is ApprovalState.waiting)))
        self._do(Approve(tid, self.now, "ada") if approve else Reject(tid, self.now, "ada", "no"))

    @rule(name=st.sampled_from(sorted(BACKENDS)), keep=st.booleans())
    def register(self, name: str, keep: bool) -> None:
        self._register(name, keep)

    @rule(name=st.sampled_from(sorted(BACKENDS)))
    def lose(self, name: str) -> None:
        if name in self.s._backends:
            self._do(BackendLost(name, self.now))
            self.alive.discard(name)

    @rule(name=st.sampled_from(sorted(BACKENDS)), state=st.sampled_from(list(BackendState)))
    def set_state(self, name: str, state: BackendState) -> None:
        if name in self.s._backends:
            self._do(SetBackendState(name, state, self.now))

    @rule(name=st.sampled_from(sorted(BACKENDS)), held=st.booleans())
    def hold(self, name: str, held: bool) -> None:
        if name in self.s._backends:
            self._do(Hold(name, held, self.now))

    @rule(dt=st.sampled_from([0.1, 0.6, 1.0, 5.0]))
    def tick(self, dt: float) -> None:
        self._tick(dt)
        self._do(Tick(self.now))

    def _in_flight(self) -> list[tuple[str, int, str]]:
        return [(t.id, t.attempts, t.backend or "") for t in self.s._tasks.values()
                if t.state in (TaskState.assigned, TaskState.running)]

    @precondition(lambda self: any(t.state is TaskState.assigned for t in self.s._tasks.values()))
    @rule(data=st.data())
    def start_one(self, data: st.DataObject) -> None:
        tid, attempt, _ = data.draw(st.sampled_from(
            [x for x in self._in_flight() if self.s._tasks[x[0]].state is TaskState.assigned]))
        self._do(Started(tid, attempt, self.now))

    @precondition(lambda self: bool(self._in_flight()))
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "bad", "fatal", "interrupted", "stale"]))
    def finish_one(self, data: st.DataObject, outcome: str) -> None:
        tid, attempt, backend = data.draw(st.sampled_from(self._in_flight()))
        r = {"ok": ok(tid, attempt), "bad": bad(tid, attempt), "fatal": bad(tid, attempt, retryable=False),
             "interrupted": bad(tid, attempt, retryable=False, interrupted=True),
             "stale": ok(tid, attempt - 1 if attempt > 1 else attempt + 5)}[outcome]
        self._do(Finished(r, self.now, backend))

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._do(Cancel(data.draw(st.sampled_from(self.ids)), self.now))

    @precondition(lambda self: any(t.state is TaskState.needs_review for t in self.s._tasks.values()))
    @rule(data=st.data(), decision=st.sampled_from(["retry", "fail", "result"]))
    def review(self, data: st.DataObject, decision: str) -> None:
        tid = data.draw(st.sampled_from(
            sorted(t.id for t in self.s._tasks.values() if t.state is TaskState.needs_review)))
        attempt = self.s._tasks[tid].attempts
        if self._do(Review(tid, decision, self.now, result=ok(tid, attempt))) is not None and decision == "retry":  # type: ignore[arg-type]
            self.review_retries[tid] += 1

    # ---- invariants ----------------------------------------------------------------------

    @invariant()
    def never_on_two_backends_and_slots_respected(self) -> None:
        seen: dict[str, str] = {}
        for b in self.s._backends.values():
            if b.registered:
                assert b.used == len(b.batches) <= b.spec.slots, (b.name, b.used, b.batches)
            for tids in b.batches.values():
                for tid in tids:
                    assert tid not in seen, f"{tid} on {seen[tid]} and {b.name}"
                    seen[tid] = b.name
        for t in self.s._tasks.values():
            if t.state in (TaskState.assigned, TaskState.running):
                assert seen.get(t.id) == t.backend, (t.id, t.state, t.backend, seen.get(t.id))
            else:
                assert t.id not in seen, (t.id, t.state)

    @invariant()
    def counts_and_lists_of_live_tasks_match_a_walk_over_them(self) -> None:
        live = list(self.s._tasks.values())
        depths: dict[str, Counter[str]] = {}
        for t in live:
            depths.setdefault(t.capability, Counter())[t.state.value] += 1
        assert self.s.queue_depths() == {c: dict(d) for c, d in depths.items()}
        assert sorted(r[0] for r in self.s.running()) == sorted(t.id for t in live if t.state is TaskState.running)
        for state in (TaskState.needs_review, TaskState.ready, None):
            assert sorted(t.id for t in self.s.live_tasks(state=state, after_seq=0 if state is None else -1)) == \
                sorted(t.id for t in live if (state is None or t.state is state) and t.seq > (-1 if state else 0))
        waiting = sorted(t.id for t in self.s.live_tasks(approval=ApprovalState.waiting))
        assert waiting == sorted(t.id for t in live if t.approval is ApprovalState.waiting)
        # the lists themselves hold no more than they should (a stale entry would cost every read)
        assert sorted(self.s._awaiting) == waiting
        for state, listed in self.s._listed.items():
            assert sorted(listed) == sorted(t.id for t in live if t.state.value == state), state

    @invariant()
    def terminal_exactly_once(self) -> None:
        for tid, n in self.terminal_entries.items():
            assert n == 1, (tid, n)
            assert self.s.state_of(tid) in TERMINAL_STATES

    @invariant()
    def once_never_started_twice_without_a_person(self) -> None:
        for tid, n in self.once_assigns.items():
            assert n <= 1 + self.review_retries[tid] + self.never_reached[tid], (tid, n, self.review_retries[tid])

    def teardown(self) -> None:
        # Settle everything: all backends come back and answer, people review, time passes.
        for name in BACKENDS:
            self._register(name, keep=True)
            self._do(SetBackendState(name, BackendState.online, self.now))
            self._do(Hold(name, False, self.now))
        for _ in range(200):
            if not self.s._tasks:
                break
            self._tick(10.0)
            self._do(Tick(self.now))
            for tid, attempt, backend in self._in_flight():
                self._do(Finished(ok(tid, attempt), self.now, backend))
            for t in list(self.s._tasks.values()):
                if t.state is TaskState.needs_review:
                    self._do(Review(t.id, "fail", self.now, reason="teardown"))
                elif t.approval is ApprovalState.waiting:
                    self._do(Approve(t.id, self.now, "teardown"))
        assert not self.s._tasks, {t.id: t.state for t in self.s._tasks.values()}
        for tid in self.ids:
            assert self.s.state_of(tid) in TERMINAL_STATES
            assert self.terminal_entries[tid] == 1, tid
        self.once_never_started_twice_without_a_person()


SchedulerMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("PPU_HYPOTHESIS_EXAMPLES", "60")), stateful_step_count=40, deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestScheduler = SchedulerMachine.TestCase
