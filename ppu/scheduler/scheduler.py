"""The scheduler: a pure state machine, ``handle(event) -> Step`` (STYLE.md §2).

No IO, no clock, no threads: every event carries its time, and the asyncio/ZMQ shell around it
(``ppu.orchestrator``) journals the returned transitions to the store *before* it carries out the
instructions or acknowledges anything. Task states move only through :data:`TRANSITIONS`;
anything else raises :class:`~ppu.errors.IllegalTransition`. The state it keeps, the moves and the
placement of ready tasks are :class:`~ppu.scheduler.placement.Placement`'s; here are the events and
the rules each follows.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

from ppu.errors import NotAllowed, UnknownTaskError
from ppu.events import (
    Abort,
    Approve,
    Assign,
    BackendLost,
    Cancel,
    Dropped,
    Event,
    Finished,
    Forget,
    Heartbeat,
    Hold,
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
from ppu.models import (
    TERMINAL_STATES,
    ActionClass,
    ApprovalState,
    Artifact,
    BackendSpec,
    BackendState,
    Result,
    ResultStatus,
    Task,
    TaskState,
)
from ppu.scheduler.placement import IN_FLIGHT, RUNNING, TRANSITIONS, Placement, S, SchedulerConfig
from ppu.scheduler.records import BackendRecord, TaskRecord

__all__ = ["TRANSITIONS", "Scheduler", "SchedulerConfig"]


class Scheduler(Placement):
    """Turns each event into moves of the state :class:`Placement` keeps, by the rules below; reads it."""

    # ---- public surface ------------------------------------------------------------------

    def handle(self, event: Event) -> Step:
        """Apply one event; return what to journal and what to do. Raises before any change."""
        self._step = step = Step()
        self._terminal = {}
        self._now = event.at
        match event:
            case Submit():
                self._on_submit(event.task)
            case RegisterBackend():
                self._on_register(event)
            case Heartbeat():
                self._on_heartbeat(event)
            case Undelivered():
                self._on_undelivered(event)
            case BackendLost():
                self._on_lost(event.backend, event.reason)
            case SetBackendState():
                self._on_set_state(event.backend, event.state)
            case Hold():
                b = self._backend(event.backend)
                b.held = event.held
                self._refresh_free(b)
                if not event.held:
                    self._pull(b)
            case Started():
                self._on_started(event)
            case Finished():
                self._on_finished(event.result, event.backend)
            case Cancel():
                self._on_cancel(event.task_id, event.reason)
            case Approve():
                self._on_approve(event.task_id, event.actor)
            case Reject():
                self._on_reject(event.task_id, event.actor, event.reason)
            case Review():
                self._on_review(event)
            case Tick():
                self._on_tick()
            case _:
                raise TypeError(f"not a scheduler event: {event!r}")
        for tid in step.changed:
            rec = self._tasks.get(tid) or self._terminal.get(tid)
            if rec is not None:
                step.records[tid] = rec
        return step

    def next_wake(self) -> float | None:
        """The earliest time at which a Tick would change something (backoff, batch flush, liveness)."""
        times = [t for t in self._flush_at.values()]
        while self._delayed and self._stale_delayed(self._delayed[0]):
            heapq.heappop(self._delayed)
        if self._delayed:
            times.append(self._delayed[0][0])
        times.extend(b.alive_until for b in self._backends.values() if b.batches or b.registered)
        return min(times) if times else None

    def task(self, task_id: str) -> Task:
        t = self._tasks.get(task_id)
        if t is None:
            raise UnknownTaskError(f"no live task {task_id!r} in the scheduler")
        return t.to_task()

    def state_of(self, task_id: str) -> TaskState | None:
        t = self._tasks.get(task_id)
        return t.state if t is not None else self._done.get(task_id)

    def live_tasks(self, state: S | None = None, approval: ApprovalState | None = None,
                   after_seq: int = -1) -> Iterable[Task]:
        """Live tasks, in no order; with ``state``, ``approval`` or ``after_seq`` only those that match
        (chosen before any model is built: a lab may hold tens of thousands; running, in review and
        waiting for approval are read from their own lists, not found among all of them)."""
        if state is None and approval is None and after_seq < 0:
            return (t.to_task() for t in self._tasks.values())
        listed = self._listed.get(state._value_) if state is not None else None
        among: Iterable[str] = listed if listed is not None else \
            self._awaiting if approval is ApprovalState.waiting else self._tasks
        tasks = self._tasks
        return (t.to_task() for t in (tasks[tid] for tid in among)
                if (state is None or t.state is state) and (approval is None or t.approval is approval)
                and t.seq > after_seq)

    def running(self) -> Iterator[tuple[str, str, str | None, ActionClass, int]]:
        """(id, capability, backend, action, seq) of each running task, no model built (a status of a lab
        with tens of thousands of live tasks must not build one per task)."""
        tasks = self._tasks
        return ((t.id, t.capability, t.backend, t.action, t.seq) for t in map(tasks.__getitem__,
                                                                              self._listed[RUNNING._value_]))

    def backends(self) -> list[dict[str, Any]]:
        out = []
        for b in self._backends.values():
            out.append({
                "name": b.name, "kind": b.spec.kind.value, "state": self._effective_state(b).value,
                "slots": b.spec.slots, "used": b.used, "held": b.held, "registered": b.registered,
                "capabilities": sorted(b.offers), "in_flight": sum(len(v) for v in b.batches.values()),
            })
        return out

    def is_registered(self, name: str) -> bool:
        """Whether ``name`` is registered now (the shell tells any other worker to register again)."""
        b = self._backends.get(name)
        return b is not None and b.registered

    def is_alive(self, name: str, now: float) -> bool:
        """Registered and heard from within its liveness period: its connection may not be taken over."""
        b = self._backends.get(name)
        return b is not None and b.registered and b.alive_until >= now

    def assignment(self, task_id: str, attempt: int) -> tuple[str, dict[str, Any], str | None, str | None,
                                                              Artifact | None] | None:
        """(capability, inputs, campaign, sample id, block) of ``task_id`` while ``attempt`` is assigned; else None."""
        t = self._tasks.get(task_id)
        if t is None or t.state is not S.assigned or t.attempts != attempt:
            return None
        return t.capability, t.inputs, t.campaign, t.sample_id, t.block

    def work_of(self, task_id: str) -> tuple[str, bool] | None:
        """(capability, whether it is a block task) of a live task; None for an ended or unknown one.
        (Cheaper than :meth:`task`, which builds the whole record: this runs for every result.)"""
        t = self._tasks.get(task_id)
        return (t.capability, t.block is not None) if t is not None and t.state not in TERMINAL_STATES else None

    def holder(self, task_id: str) -> tuple[str | None, int] | None:
        """(backend, attempt) of a live task's current attempt; None for an ended or unknown task."""
        t = self._tasks.get(task_id)
        return (t.backend, t.attempts) if t is not None else None

    def backend_spec(self, name: str) -> BackendSpec:
        return self._backend(name).spec

    def queue_order(self, capability: str) -> list[str]:
        """Ready task ids of one capability in the order they would leave (for tests and status)."""
        entries = [e for heap in self._ready.get(capability, {}).values() for e in heap if self._valid(e)]
        entries += [e for heap in self._pinned.values() for e in heap
                    if self._valid(e) and self._tasks[e[2]].capability == capability]
        return [e[2] for e in sorted(entries)]

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Live tasks per capability and state."""
        out = {cap: {state: n for state, n in d.items() if n} for cap, d in self._depths.items()}
        return {cap: d for cap, d in out.items() if d}

    def restore(self, tasks: Iterable[Task], done: Iterable[tuple[str, TaskState]], at: float,
                next_seq: int = 0, forgot: bool = False) -> None:
        """Rebuild from the store after a restart: same tasks, same queue order, same seq counter
        (``next_seq``: one past the highest ever given, ended tasks included; see Store.next_seq).
        ``done``: ended tasks, oldest first; ``forgot``: the store holds older ones left out of it.

        Tasks that were in flight keep their backend; that backend gets ``restart_grace_s`` to
        re-register and say which of them it still holds (see ``_on_register``).
        """
        self._now = at
        self._seq = max(self._seq, next_seq)
        for tid, st in done:
            self._ended(tid, st)
        live = [TaskRecord(t) for t in tasks]
        for t in live:
            self._tasks[t.id] = t
            self._seq = max(self._seq, t.seq + 1)
            self._index(t, None, t.state)
            if t.approval is ApprovalState.waiting:
                self._awaiting[t.id] = None
        for t in live:
            for d in t.depends_on:
                if self._done.get(d) is not S.succeeded:
                    t.deps_left += 1
                    self._dependents.setdefault(d, []).append(t.id)
            if t.state is S.ready:
                self._enqueue(t)
            elif t.state is S.pending and t.not_before is not None:
                heapq.heappush(self._delayed, (t.not_before, t.id))
            elif t.state in IN_FLIGHT and t.backend:
                b = self._backends.get(t.backend)
                if b is None:
                    spec = BackendSpec(name=t.backend, kind="digital", capabilities=[{"name": t.capability}])
                    b = self._backends[t.backend] = BackendRecord(
                        spec=spec, state=BackendState.offline, registered=False,
                        alive_until=at + self.cfg.restart_grace_s, liveness_s=0)
                b.batches.setdefault(t.batch_id or t.id, []).append(t.id)
                if t.sample_id:
                    self._sample_holder[t.sample_id] = t.id
        self.forgot = self.forgot or forgot
        self.timers += 1
        self._step = Step()

    def recall(self, ended: dict[str, TaskState]) -> None:
        """End states the shell read from its store for ids not found here (see ``forgot``): kept again
        as the newest, so that the submission or request that needs them next finds them."""
        for tid, st in ended.items():
            if st in TERMINAL_STATES and tid not in self._tasks:
                self._done.pop(tid, None)
                self._ended(tid, st)

    def _ended(self, task_id: str, state: TaskState) -> None:
        done = self._done
        done[task_id] = state
        if len(done) > self.cfg.done_kept:
            done.popitem(last=False)
            self.forgot = True

    # ---- events ----------------------------------------------------------------------------

    def _on_submit(self, task: Task) -> None:
        if task.id in self._tasks or task.id in self._done:
            raise NotAllowed(f"task id {task.id!r} already exists", field="id", hint="leave id empty for a new one")
        if task.id in task.depends_on:
            raise NotAllowed("a task cannot depend on itself", field="depends_on")
        for d in task.depends_on:
            if d not in self._tasks and d not in self._done:
                raise UnknownTaskError(f"dependency {d!r} is not a known task", field="depends_on")
        t = TaskRecord(task)
        t.seq = self._seq
        self._seq += 1
        t.state = S.pending
        t.attempts = 0
        self._tasks[t.id] = t
        self._record(t, None, S.pending, "submitted")
        if t.approval is ApprovalState.waiting:
            self._awaiting[t.id] = None
        failed_dep = next((d for d in t.depends_on if self._done.get(d) in (S.failed, S.cancelled)), None)
        if failed_dep is not None:
            self._finish(t, S.failed, f"dependency {failed_dep} {self._done[failed_dep].value}")
            return
        for d in t.depends_on:
            if self._done.get(d) is not S.succeeded:
                t.deps_left += 1
                self._dependents.setdefault(d, []).append(t.id)
        self._maybe_ready(t)

    def _on_register(self, ev: RegisterBackend) -> None:
        self.timers += 1
        spec = ev.spec
        old = self._backends.get(spec.name)
        b = BackendRecord(spec=spec, state=spec.state, alive_until=ev.at + ev.liveness_s, liveness_s=ev.liveness_s,
               reg=ev.reg)
        b.offers = {c.name: (c.fidelity, c.duration_s, c.cost) for c in spec.capabilities}
        self._backends[spec.name] = b
        for cap in b.offers:
            self._offered_by.setdefault(cap, set()).add(spec.name)
        if old is not None:
            self._unindex(old)
            b.held = old.held
            if old.state is BackendState.maintenance:
                b.state = old.state
            # Tasks the old incarnation held: those the worker still holds stay; the rest were lost.
            still = set(ev.in_flight)
            lost = []
            for bid, tids in old.batches.items():
                keep = [tid for tid in tids if tid in still]
                lost += [tid for tid in tids if tid not in still]
                if keep:
                    b.batches[bid] = keep
                    b.used += 1
                    b.backlog_s += self._duration(b, self._tasks[keep[0]].capability)
            for tid in lost:
                t = self._tasks[tid]
                if ev.same_worker and t.state is S.assigned:
                    # The same worker process, and it never got it: the assignment never arrived.
                    self._requeue(t, f"assignment never reached {spec.name}")
                else:
                    self._interrupt(t, f"{spec.name} came back without task {tid}")
        self._refresh_free(b)
        self._pull(b)
        self._retry_placement_for(b.offers)

    def _on_heartbeat(self, ev: Heartbeat) -> None:
        b = self._backends.get(ev.backend)
        if b is None or not b.registered:
            return  # the shell tells the worker to register again
        b.alive_until = ev.at + b.liveness_s
        if b.unreachable:
            b.unreachable = False
            self._refresh_free(b)
            self._pull(b)
        inv = ev.inventory
        if inv is None or inv.reg != b.reg:
            return  # no inventory, or one from an earlier registration
        held = set(inv.running) | set(inv.unacked)
        for bid in list(b.batches):
            tids = b.batches.get(bid)
            if not tids:
                continue
            keys = tuple((tid, self._tasks[tid].attempts) for tid in tids)
            if any(k in held for k in keys):
                continue
            seq, sent = b.stamps.get(bid, (0, ev.at))
            if seq <= inv.seq:  # it reached the worker, which neither holds it nor sent a result
                for tid in list(tids):
                    self._interrupt(self._tasks[tid], f"{b.name} no longer holds it")
            elif ev.at - sent >= b.liveness_s:  # still not there: send it again (the worker dedups)
                b.stamps[bid] = (seq, ev.at)
                self._step.instructions.append(Assign(b.name, bid, keys, b.reg, seq))
        for tid, attempt in inv.running:  # work the worker runs that nobody expects any more
            t = self._tasks.get(tid)
            if (t is not None and t.attempts == attempt and t.backend == b.name
                    and (t.state in IN_FLIGHT or t.state is S.needs_review)):
                continue
            self._step.instructions.append(Abort(b.name, tid, attempt))

    def _on_undelivered(self, ev: Undelivered) -> None:
        b = self._backends.get(ev.backend)
        if b is not None and b.registered and not b.unreachable:
            b.unreachable = True  # take nothing new until it is heard from again
            self._refresh_free(b)
        for tid, attempt in ev.tasks:
            t = self._tasks.get(tid)
            if t is not None and t.state is S.assigned and t.attempts == attempt and t.backend == ev.backend:
                self._requeue(t, f"assignment never left for {ev.backend}: {ev.why}")

    def _on_lost(self, name: str, reason: str) -> None:
        b = self._backend(name)
        self._unindex(b)
        if b.registered:
            self._step.instructions.append(Forget(name, reason))
        b.registered = False
        b.unreachable = False
        b.alive_until = min(b.alive_until, self._now)
        b.state = BackendState.offline
        held = [tid for tids in b.batches.values() for tid in tids]
        b.batches.clear()
        b.stamps.clear()
        b.used = 0
        b.backlog_s = 0.0
        for tid in held:
            self._interrupt(self._tasks[tid], f"{name}: {reason}")

    def _on_set_state(self, name: str, state: BackendState) -> None:
        b = self._backend(name)
        b.state = state
        self._refresh_free(b)
        if b.accepting():
            self._pull(b)

    def _check_holder(self, t: TaskRecord | None, attempt: int, backend: str | None, what: str) -> None:
        """Refuse a start or result from a backend that does not hold the attempt it names."""
        if t is None or backend is None or (1 <= attempt < t.attempts):
            return  # ended task or an earlier attempt: judged later (dropped or kept as late)
        if attempt < 1 or attempt > t.attempts:
            raise NotAllowed(f"{what} for attempt {attempt} of task {t.id}, which was never assigned",
                             field="attempt")
        if t.backend != backend:
            raise NotAllowed(f"{what} for task {t.id} from {backend}, which does not hold it", field="backend")

    def _on_started(self, ev: Started) -> None:
        t = self._tasks.get(ev.task_id)
        self._check_holder(t, ev.attempt, ev.backend, "start")
        if t is None or t.attempts != ev.attempt or t.state is not S.assigned:
            self._step.instructions.append(Dropped(ev.task_id, ev.attempt, "start of a task not assigned"))
            return
        self._move(t, S.running, "started")

    def _on_finished(self, r: Result, backend: str | None) -> None:
        t = self._tasks.get(r.task_id)
        self._check_holder(t, r.attempt, backend, "result")
        if t is None:
            self._step.instructions.append(Dropped(r.task_id, r.attempt, "task already ended"))
            return
        late = t.state not in IN_FLIGHT
        # A late result is still the truth about the attempt it names: accept it while the task
        # waits for review (the worker came back) or for its retry (saves re-running it).
        if r.attempt != t.attempts or (late and t.state not in (S.needs_review, S.pending, S.ready)):
            self._step.instructions.append(Dropped(r.task_id, r.attempt, f"stale attempt (task at {t.attempts})"))
            return
        if late and t.state is not S.needs_review and r.status is not ResultStatus.succeeded:
            self._step.instructions.append(Dropped(r.task_id, r.attempt, "late failure of a task already retried"))
            return
        if not late:
            self._release(t)
        self._step.results.append(r)
        self._step.changed.add(t.id)
        if t.cancel_requested:
            self._finish(t, S.cancelled, "cancelled while running")
        elif r.status is ResultStatus.succeeded:
            self._finish(t, S.succeeded, "result recorded" if not late else "late result recorded")
        elif t.state is S.needs_review:
            if not r.interrupted:  # the worker came back with a definitive failure
                self._finish(t, S.failed, r.error or "failed")
        elif r.interrupted and t.action is ActionClass.once:
            t.error = f"interrupted: {r.error}"
            self._move(t, S.needs_review, t.error)
        elif r.retryable and t.action is ActionClass.repeatable and t.attempts < t.max_attempts:
            self._retry(t, r.error or "failed", avoid=backend or t.backend)
        else:
            self._finish(t, S.failed, r.error or "failed")

    def _on_cancel(self, task_id: str, reason: str) -> None:
        t = self._live(task_id)
        if t.state in IN_FLIGHT:
            if not t.cancel_requested:
                t.cancel_requested = True
                self._step.changed.add(t.id)
                assert t.backend is not None
                self._step.instructions.append(Abort(t.backend, t.id))
            return
        self._finish(t, S.cancelled, reason)

    def _on_approve(self, task_id: str, actor: str) -> None:
        t = self._live(task_id)
        if t.approval is not ApprovalState.waiting:
            raise NotAllowed(f"task {task_id} is not waiting for approval (approval: {t.approval.value})")
        t.approval = ApprovalState.approved
        self._awaiting.pop(t.id, None)
        self._step.changed.add(t.id)
        self._maybe_ready(t)

    def _on_reject(self, task_id: str, actor: str, reason: str) -> None:
        t = self._live(task_id)
        if t.approval is not ApprovalState.waiting:
            raise NotAllowed(f"task {task_id} is not waiting for approval (approval: {t.approval.value})")
        t.approval = ApprovalState.rejected
        self._awaiting.pop(t.id, None)
        self._finish(t, S.cancelled, f"rejected by {actor}: {reason}")

    def _on_review(self, ev: Review) -> None:
        t = self._live(ev.task_id)
        if t.state is not S.needs_review:
            raise NotAllowed(f"task {ev.task_id} is {t.state.value}, not needs_review",
                             hint="ppu review lists the tasks that wait for a person")
        if ev.decision == "retry":
            t.avoid = ()
            t.error = None
            self._move(t, S.ready, f"retry approved by {ev.actor}")
            self._enqueue(t)
            self._place(t)
        elif ev.decision == "fail":
            self._finish(t, S.failed, f"failed by {ev.actor}: {ev.reason}")
        else:
            if ev.result is None or ev.result.status is not ResultStatus.succeeded:
                raise NotAllowed("a manual result must be a succeeded Result", field="result")
            self._step.results.append(ev.result)
            self._finish(t, S.succeeded, f"result entered by {ev.actor}")

    def _on_tick(self) -> None:
        now = self._now
        gap = now - self._last_tick if self._last_tick else 0.0
        self._last_tick = now
        if gap > self.cfg.tick_gap_s:
            # We were not listening (our own loop stalled): that silence is not the workers'.
            for b in self._backends.values():
                if b.registered:
                    b.alive_until = max(b.alive_until, now + b.liveness_s)
        while self._delayed and self._delayed[0][0] <= now:
            _, tid = heapq.heappop(self._delayed)
            t = self._tasks.get(tid)
            if t is not None and t.state is S.pending and t.not_before is not None and t.not_before <= now:
                t.not_before = None
                self._maybe_ready(t)
        for name, when in list(self._flush_at.items()):
            if when <= now:
                del self._flush_at[name]
                self._pull(self._backends[name])
        for b in list(self._backends.values()):
            if b.alive_until < now and (b.registered or b.batches):
                self._on_lost(b.name, "missed heartbeats" if b.registered else "did not come back after restart")
            elif not b.registered and b.alive_until + self.cfg.forget_after_s < now:
                self._forget(b)

    def _forget(self, b: BackendRecord) -> None:
        """A lost backend that holds nothing and never came back: let go of it (bounded memory)."""
        pinned = self._pinned.get(b.name, [])
        if any(self._valid(e) for e in pinned):
            return  # a live task waits for it by name
        self._pinned.pop(b.name, None)
        self._unindex(b)
        del self._backends[b.name]
        for names in self._offered_by.values():
            names.discard(b.name)
        self._step.instructions.append(Forget(b.name, "forgotten: lost and never came back", expired=True))

    # ---- state changes ---------------------------------------------------------------------

    def _finish(self, t: TaskRecord, dst: TaskState, reason: str) -> None:
        """Move to a terminal state and settle everything that waited on this task."""
        if t.state in IN_FLIGHT:
            self._release(t)
        if dst is not S.succeeded:
            t.error = reason
        self._move(t, dst, reason)
        self._ended(t.id, dst)
        del self._tasks[t.id]
        self._terminal[t.id] = t  # the shell snapshots it from the step before it is gone
        stack = [t]
        while stack:
            cur = stack.pop()
            for dep_id in self._dependents.pop(cur.id, []):
                d = self._tasks.get(dep_id)
                if d is None:
                    continue
                if cur.state is S.succeeded:
                    d.deps_left -= 1
                    self._maybe_ready(d)
                elif d.state in (S.pending, S.ready):
                    why = f"dependency {cur.id} {cur.state.value}"
                    d.error = why
                    self._move(d, S.failed, why)
                    self._ended(d.id, S.failed)
                    del self._tasks[d.id]
                    self._terminal[d.id] = d
                    stack.append(d)

    def _maybe_ready(self, t: TaskRecord) -> None:
        if t.state is not S.pending or t.deps_left > 0:
            return
        if t.approval in (ApprovalState.waiting, ApprovalState.rejected):
            return
        if t.not_before is not None and t.not_before > self._now:
            return
        t.not_before = None
        self._move(t, S.ready, "dependencies met" if t.depends_on else "accepted")
        self._enqueue(t)
        self._place(t)

    def _retry(self, t: TaskRecord, why: str, avoid: str | None) -> None:
        if t.state in IN_FLIGHT:
            self._release(t)
        if avoid and avoid not in t.avoid:
            t.avoid = (*t.avoid, avoid)
        t.error = why
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** max(0, t.attempts - 1))
        t.not_before = self._now + delay
        self._move(t, S.pending, f"retry {t.attempts + 1}/{t.max_attempts} in {delay:g}s: {why}")
        heapq.heappush(self._delayed, (t.not_before, t.id))
        self.timers += 1

    def _requeue(self, t: TaskRecord, why: str) -> None:
        """Back to the queue: the attempt provably never reached a worker (nothing ran)."""
        self._release(t)
        t.error = None
        self._move(t, S.ready, why)
        self._enqueue(t)
        self._place(t)

    def _interrupt(self, t: TaskRecord, why: str) -> None:
        """The backend running ``t`` vanished: requeue digital work, hold physical work for a person."""
        if t.cancel_requested:
            self._finish(t, S.cancelled, f"cancelled; backend gone ({why})")
        elif t.action is ActionClass.once:
            self._release(t)
            t.error = f"interrupted, never re-run automatically: {why}"
            self._move(t, S.needs_review, t.error)
        elif t.attempts < t.max_attempts:
            self._retry(t, why, avoid=t.backend)
        else:
            self._finish(t, S.failed, f"gave up after {t.attempts} attempts: {why}")

    def _release(self, t: TaskRecord) -> None:
        """Take ``t`` off its backend (if still there); frees the slot when its batch is empty."""
        name = t.backend
        if t.sample_id and self._sample_holder.get(t.sample_id) == t.id:
            del self._sample_holder[t.sample_id]
            for tid in sorted(self._sample_waiters.pop(t.sample_id, ()), key=lambda i: self._key_of(i)):
                w = self._tasks.get(tid)
                if w is not None and w.state is S.ready:
                    self._place(w)
        b = self._backends.get(name) if name else None
        bid = t.batch_id or t.id
        if b is None or bid not in b.batches:
            return
        tids = b.batches[bid]
        if t.id in tids:
            tids.remove(t.id)
        if not tids:
            del b.batches[bid]
            b.stamps.pop(bid, None)
            if b.registered:
                b.used = max(0, b.used - 1)
                b.backlog_s = max(0.0, b.backlog_s - self._duration(b, t.capability))
                self._refresh_free(b)
                self._pull(b)
