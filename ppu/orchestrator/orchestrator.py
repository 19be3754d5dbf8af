"""The orchestrator: the asyncio shell around the IO-free scheduler (STYLE.md §2, §6).

Everything here runs on ONE asyncio loop (the orchestrator's). Each public method turns a request
into scheduler events, journals the resulting steps to the store in one transaction, and only
then carries out the instructions (assign/abort through a :class:`~ppu.orchestrator.links.WorkerLink`)
and answers. So an acknowledged submit or result is durable, and a SIGKILL at any point loses nothing
that was acknowledged: :meth:`Orchestrator.start` rebuilds the scheduler from the store.

Every change passes through :class:`~ppu.journal.Journal` (group commit on a journal thread,
crash-only: a failed commit makes the orchestrator refuse everything, sets
:attr:`Orchestrator.failed`, and its process exits non-zero; a restart rebuilds from the journal);
instructions and answers of a group leave only once it is durable.

The jobs beside that path have modules of their own in this package: the door's checks
(:mod:`~ppu.orchestrator.door`), waits (:mod:`~ppu.orchestrator.waits`), the event feed
(:mod:`~ppu.orchestrator.feed`), the sample registry's changes (:mod:`~ppu.orchestrator.samples`),
the read views (:mod:`~ppu.orchestrator.view`) and the links to workers (:mod:`~ppu.orchestrator.links`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ppu import capabilities
from ppu.backends.base import TaskRun
from ppu.busy import BusyTime
from ppu.config import AutonomyConfig, OrchestratorConfig
from ppu.errors import JournalFailed, NotAllowed, PPUError, ValidationFailed
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
    Inventory,
    RegisterBackend,
    Reject,
    Review,
    Started,
    Step,
    Submit,
    Tick,
    Undelivered,
)
from ppu.heap import freeze_once
from ppu.journal import Journal
from ppu.models import (
    TERMINAL_STATES,
    ApprovalState,
    AuditEntry,
    BackendKind,
    BackendSpec,
    Provenance,
    Result,
    ResultStatus,
    Sample,
    TaskSpec,
    TaskState,
)
from ppu.orchestrator.controls import Controls
from ppu.orchestrator.door import Door
from ppu.orchestrator.feed import EventFeed
from ppu.orchestrator.links import WorkerLink
from ppu.orchestrator.samples import SampleBook, made_sample
from ppu.orchestrator.view import ReadView
from ppu.orchestrator.waits import Waits
from ppu.scheduler import Scheduler, SchedulerConfig
from ppu.store import Store

log = logging.getLogger(__name__)
# An assignment's own fields beside its tasks' (a task's record, by which a batch is sized, holds more
# than the task's part of the assignment).
_ASSIGN_MARGIN = 4096


class Orchestrator:
    """The scheduler, its journal and the links to workers, with the parts around them (door, waits, event
    feed, samples, read views, a person's controls)."""

    def __init__(
        self,
        store: Store,
        config: OrchestratorConfig | None = None,
        autonomy: AutonomyConfig | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.cfg = config or OrchestratorConfig()
        self.autonomy = autonomy or AutonomyConfig()
        self.clock = clock
        self.sched = Scheduler(SchedulerConfig(
            backoff_base_s=self.cfg.backoff_base_s, backoff_max_s=self.cfg.backoff_max_s,
            restart_grace_s=self.cfg.restart_grace_s,
            forget_after_s=10 * self.cfg.heartbeat_s * self.cfg.missed_heartbeats,
            max_batch_bytes=max(1, self.cfg.max_message_bytes - _ASSIGN_MARGIN),
            max_batch_blob_bytes=self.cfg.max_blob_bytes, done_kept=self.cfg.ended_kept))
        self.links: dict[str, WorkerLink] = {}
        self.specs: dict[str, BackendSpec] = {}
        self.counters: Counter[str] = Counter()
        # Tasks per state as the scheduler has them: seeded from the store at start, then moved by each
        # carried-out transition, so that a status counts without a query over every task ever run.
        self.tasks_by_state: Counter[str] = Counter()
        self.progress_of: dict[str, dict[str, Any]] = {}
        # why each task waiting for approval waits (the policy's words, also in its audit entry)
        self.approval_why: dict[str, str] = {}
        self.samples = SampleBook(store)
        self.door = Door(self.sched, store, self.cfg, self.specs, self.samples.known_processes,
                         lambda: self.autonomy, clock)
        self.waits = Waits(self.sched, store)
        self.feed = EventFeed(self.counters)
        self.view = ReadView(self)
        self.controls = Controls(self)  # a person's stops and autonomy levels
        self._rearm = asyncio.Event()
        self._timers_seen = -1
        self._timer: asyncio.Task[None] | None = None
        self.journal = Journal(store, self._carry_out_all)  # every change passes through it
        self.failed = self.journal.failed  # set when a commit failed: the process must end (crash-only)
        self.writer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._sending: set[asyncio.Task[None]] = set()
        self._assigning: dict[str, asyncio.Lock] = {}  # per backend: its assignments leave in order
        self._closing = False
        self.started_at = clock()
        self.busy = BusyTime(self.started_at)  # backends' busy intervals (Gantt charts) and utilisation

    # ---- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Take the store's writer lease, rebuild the scheduler's exact state from it, start the clock.

        Raises :class:`~ppu.errors.StoreHeld` when another orchestrator writes this store.
        """
        self.store.acquire_writer(self.writer_id, self.cfg.bind)
        self.journal.start()
        kept = self.sched.cfg.done_kept
        live, done = self.store.load(done_limit=kept + 1)  # one more: whether the store holds older ones
        forgot, done = len(done) > kept, done[-kept:]
        if forgot:  # a live task's dependency that ended before the newest kept ones still counts
            known = {tid for tid, _ in done} | {t.id for t in live}
            deps = list(dict.fromkeys(d for t in live for d in t.depends_on if d not in known))
            done += [(tid, st) for tid, st in self.store.task_states(deps).items() if st in TERMINAL_STATES]
        self.tasks_by_state.update(self.store.count_tasks())
        self.sched.restore(live, done, self.clock(), self.store.next_seq(), forgot=forgot)
        waiting = [t.id for t in live if t.approval is ApprovalState.waiting]
        self.approval_why.update((t, str(d.get("reason", ""))) for t, d in
                                 self.store.audit_details("approval_required", waiting).items())
        self.samples.load()
        saved = self.store.get_meta("autonomy")
        if saved:  # a run-time change outlives a restart
            self.autonomy = AutonomyConfig.model_validate(saved)
        self.controls.load()
        self._timer = asyncio.get_running_loop().create_task(self._tick_loop())
        freeze_once()  # modules and models live as long as the process: no full collection rescans them
        log.info("orchestrator started: %d live tasks, %d ended", len(live), len(done))

    async def close(self) -> None:
        self._closing = True
        self._rearm.set()
        if self._timer:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        self.waits.cancel_all()
        await self.journal.close()  # every closed group reaches the disk (or fails) before letting go
        self.store.release_writer()

    async def _tick_loop(self) -> None:
        # No wait_for here: on 3.11 it can swallow a cancellation that races with the event,
        # and a clock that cannot be cancelled hangs the loop's shutdown.
        while not self._closing:
            wake = self.sched.next_wake()
            delay = 0.5 if wake is None else min(0.5, max(0.0, wake - self.clock()))
            self._rearm.clear()
            waiter = asyncio.ensure_future(self._rearm.wait())
            try:
                await asyncio.wait({waiter}, timeout=delay + 0.001)
            finally:
                waiter.cancel()
            if self.journal.fatal is not None:
                return
            try:
                async with self.grouped():
                    self.apply([Tick(self.clock())])
            except JournalFailed:
                return  # crash-only: the process ends; nothing more may change
            except Exception:  # never let the clock die; the next tick retries
                log.exception("tick failed")

    # ---- the one path every change takes ---------------------------------------------------

    def apply(self, events: Iterable[Event], audits: Iterable[AuditEntry] = (),
              samples: Iterable[Sample] = ()) -> list[Step]:
        """Hand ``events`` to the scheduler and journal what they change, with ``audits`` and ``samples``
        (in the current group, if any): every change, from any part of the orchestrator, takes this path.
        An event the scheduler refuses raises after what the events before it changed is journaled."""
        self.journal.check()
        steps: list[Step] = []
        error: BaseException | None = None
        for ev in events:
            try:
                steps.append(self.sched.handle(ev))
            except Exception as exc:  # what the events before it changed is journaled all the same
                error = exc
                break
        audits = list(audits) if error is None else []
        samples = list(samples) + self.samples.changes(steps)
        self.journal.record(steps, audits, samples)
        if error is not None:
            raise error
        return steps

    def grouped(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Group commit (:meth:`ppu.journal.Journal.grouped`): every change made inside is journaled in
        ONE transaction at its end, and its answers leave only once that is durable."""
        return self.journal.grouped()

    def _carry_out_all(self, steps: list[Step]) -> None:
        """After the commit: an error here must not undo what is durable (nor its acks)."""
        for step in steps:
            try:
                self._carry_out(step)
            except Exception:
                self.counters["carry_out_errors"] += 1
                log.exception("could not carry out a journaled step")
        if self.sched.timers != self._timers_seen:  # the clock may have to wake sooner
            self._timers_seen = self.sched.timers
            self._rearm.set()

    def _carry_out(self, step: Step) -> None:
        loop = asyncio.get_running_loop()
        for ins in step.instructions:
            if isinstance(ins, Assign):
                runs = []
                for tid, attempt in ins.tasks:
                    now_assigned = self.sched.assignment(tid, attempt)
                    if now_assigned is None:
                        # It moved on while its group was on the way to disk: this assignment is stale.
                        self.counters["stale_assignments"] += 1
                        continue
                    cap, inputs, campaign, sample_id, block = now_assigned
                    runs.append(TaskRun.model_construct(task_id=tid, attempt=attempt, capability=cap, inputs=inputs,
                                                        campaign=campaign, sample_id=sample_id, block=block))
                link = self.links.get(ins.backend)
                if not runs:
                    continue
                self.busy.open(ins.backend, ins.batch_id, self.clock())
                if link is None:  # provably never left: back to the queue, not to review
                    loop.call_soon(self._undelivered, ins.backend, ins.tasks, "no connected worker")
                else:
                    self._spawn(loop, self._assign(link, ins, runs))
            elif isinstance(ins, Abort):
                link = self.links.get(ins.backend)
                if link is not None:
                    self._spawn(loop, link.abort(ins.backend, ins.task_id, ins.attempt))
            elif isinstance(ins, Forget):
                self._forget(ins)
            elif isinstance(ins, Dropped):
                self.counters["dropped_" + ins.why.split(" ")[0]] += 1
                log.info("dropped %s attempt %d: %s", ins.task_id, ins.attempt, ins.why)
        states = self.tasks_by_state
        for tr in step.transitions:
            if tr.src is not None:
                states[tr.src.value] -= 1
            states[tr.dst.value] += 1
            rec = step.records.get(tr.task_id)
            in_flight = (TaskState.assigned, TaskState.running)
            if tr.src in in_flight and tr.dst not in in_flight and rec is not None:  # left the backend
                self.busy.close(rec.backend, rec.batch_id or tr.task_id, tr.at)
            if self.feed:  # no event built for nobody (this runs for every transition)
                self.feed.publish({"type": "transition", "task_id": tr.task_id,
                                   "src": tr.src.value if tr.src else None, "dst": tr.dst.value, "at": tr.at,
                                   "reason": tr.reason, "backend": getattr(rec, "backend", None),
                                   "capability": getattr(rec, "capability", None),
                                   "campaign": getattr(rec, "campaign", None)})
            if tr.dst in TERMINAL_STATES:
                self.progress_of.pop(tr.task_id, None)
                self.approval_why.pop(tr.task_id, None)
                if rec is not None:
                    self.waits.ended(tr.task_id, rec)  # its end is durable: its waits are answered

    async def _assign(self, link: WorkerLink, ins: Assign, runs: list[TaskRun]) -> None:
        # One backend's assignments leave in the order they were made. The worker's heartbeat names
        # the last assignment number (seq) it got, and the scheduler takes an earlier batch that the
        # worker does not hold for lost: one that first reads its blocks from the artifact store
        # must not be overtaken by the next, smaller one.
        lock = self._assigning.get(ins.backend)
        if lock is None:
            lock = self._assigning[ins.backend] = asyncio.Lock()
        async with lock:
            # Sent from a task, so an ack may have left first: send only what is still this attempt's
            # (a re-sent assign arriving after the result's ack would otherwise run it again).
            runs = [r for r in runs if self.sched.holder(r.task_id) == (ins.backend, r.attempt)
                    and self.sched.state_of(r.task_id) is TaskState.assigned]
            if not runs:
                self.counters["assign_not_current"] += 1
                return
            try:
                await link.assign(ins.backend, ins.batch_id, runs, ins.reg, ins.seq)
            except PPUError as exc:  # refused before it left (no connection, queue full): requeue
                self.counters["send_failures"] += 1
                self._undelivered(ins.backend, ins.tasks, str(exc))

    def unrunnable(self, backend: str, run: TaskRun, why: str) -> None:
        """An assigned run that cannot be sent because of the task itself (its input block is gone
        from the artifact store, or its bytes no longer match their sha256): it fails, and is not
        retried, since no attempt could do better. Its batch-mates go on."""
        if self.sched.holder(run.task_id) != (backend, run.attempt):
            return
        self.counters["unrunnable"] += 1
        now = time.time()
        self.finished(Result(task_id=run.task_id, attempt=run.attempt, status=ResultStatus.failed, error=why,
                             retryable=False, started_at=now, finished_at=now), backend)

    def _undelivered(self, backend: str, tasks: tuple[tuple[str, int], ...], why: str) -> None:
        if self._closing:
            return
        self.counters["assign_undelivered"] += 1
        log.info("assignment of %s to %s never left: %s", [t for t, _ in tasks], backend, why)
        try:
            self.apply([Undelivered(backend, tasks, self.clock(), why)])
        except Exception:
            log.exception("could not requeue an undelivered assignment")

    def _forget(self, ins: Forget) -> None:
        link = self.links.pop(ins.backend, None)
        if ins.expired:
            self.specs.pop(ins.backend, None)
            boots: dict[str, str] = dict(self.store.get_meta("worker_boots", {}) or {})
            if boots.pop(ins.backend, None) is not None:  # a forgotten backend keeps nothing, on disk either
                self.store.set_meta("worker_boots", boots)
        else:
            self.store.add_audit(AuditEntry(actor="orchestrator", action="backend_lost", target=ins.backend,
                                            detail={"why": ins.reason}))
        forget = getattr(link, "forget", None)
        if forget is not None:
            forget(ins.backend, ins.reason)

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(self._send(coro))
        self._sending.add(task)  # keep a reference until it is done (asyncio holds weak ones)
        task.add_done_callback(self._sending.discard)

    async def _send(self, coro: Any) -> None:
        try:
            await coro
        except Exception:
            # Heartbeat inventories cover a message lost after it left (see Scheduler._on_heartbeat).
            self.counters["send_failures"] += 1
            log.exception("could not reach a worker")

    # ---- worker side -----------------------------------------------------------------------

    def register(self, spec: BackendSpec, link: WorkerLink, in_flight: Iterable[str] = (), *,
                 boot: str = "", reg: str = "") -> None:
        """A worker's registration of one backend.

        ``boot`` names the worker process: when the process that held the backend before registers
        again, in-flight tasks it does not hold never reached it and go back to their queue.
        """
        liveness = self.cfg.heartbeat_s * self.cfg.missed_heartbeats
        boots: dict[str, str] = dict(self.store.get_meta("worker_boots", {}) or {})
        same = bool(boot) and boots.get(spec.name) == boot
        if boot and not same:
            boots[spec.name] = boot
            self.store.set_meta("worker_boots", boots)  # durable before any assignment to it
        self.links[spec.name] = link
        self.specs[spec.name] = spec
        self.apply([RegisterBackend(spec, self.clock(), tuple(in_flight), liveness, same, reg)],
                    [AuditEntry(actor=spec.name, action="register", target=spec.name,
                                detail={"kind": spec.kind.value, "site": spec.site, "same_worker": same,
                                        "capabilities": [c.name for c in spec.capabilities]})])
        if self.controls.holds.get(spec.name):
            self.apply([Hold(spec.name, True, self.clock())])

    def heartbeat(self, backend: str, holding: tuple[str, int, list[Any], list[Any]] | None = None) -> bool:
        """A worker is alive; returns False when the backend is not registered (it must register).

        ``holding``: the worker's inventory of this backend, ``(reg, seq, running, unacked)`` with running and
        unacked as ``[task id, attempt]`` pairs."""
        if not self.sched.is_registered(backend):
            return False
        inventory = None
        if holding is not None:
            reg, seq, running, unacked = holding
            inventory = Inventory(reg, seq, tuple((str(t), int(a)) for t, a in running),
                                  tuple((str(t), int(a)) for t, a in unacked))
        ev = Heartbeat(backend, self.clock(), inventory)
        if inventory is None:
            self.sched.handle(ev)  # no state change worth journaling
        else:
            self.apply([ev])  # reconciliation may requeue, re-send or abort
        return True

    def audit(self, entry: AuditEntry) -> None:
        """Write one audit entry (with the current group commit, if any)."""
        self.apply([], [entry])

    def lost(self, backend: str, reason: str = "worker lost") -> None:
        self.apply([BackendLost(backend, self.clock(), reason)])  # the Forget it yields is audited

    def started(self, task_id: str, attempt: int, backend: str | None = None) -> None:
        self.apply([Started(task_id, attempt, self.clock(), backend)])

    def progress(self, task_id: str, fraction: float, message: str, backend: str | None = None,
                 attempt: int | None = None) -> None:
        """Progress of a running attempt; refused (NotAllowed) unless ``backend`` holds it."""
        holder = self.sched.holder(task_id)
        if holder is None or (backend is not None and (
                holder[0] != backend or (attempt is not None and attempt != holder[1]))):
            raise NotAllowed(f"progress for task {task_id!r}, which {backend or 'nobody'} holds now",
                             field="task_id")
        self.progress_of[task_id] = {"fraction": fraction, "message": message, "at": self.clock()}
        if self.feed:
            self.feed.publish({"type": "progress", "task_id": task_id, "fraction": fraction, "message": message})

    def finished(self, result: Result, backend: str | None = None) -> None:
        """Record a result (idempotent by task id + attempt). The caller acks after this returns."""
        work = self.sched.work_of(result.task_id) if result.status is ResultStatus.succeeded else None
        if work is not None:
            cap, block = work
            if block and result.artifact is None:
                # A block's success is its output columns (stored as result.artifact); its outputs are only a
                # summary, never the capability's row outputs. Refused, not recorded: the sender keeps it
                # and sends it again with its columns as binary frames (it used to be judged against the
                # row output model and fail the block for good).
                self.counters["block_results_without_columns"] += 1
                raise ValidationFailed(f"the result of block task {result.task_id} (attempt {result.attempt}) "
                                       "came without its output columns", field="blobs",
                                       hint="send it as a result message with its columns as binary frames")
            if not block:  # a block result's rows are in its artifact
                try:
                    outputs = capabilities.validate_outputs(cap, result.outputs)
                    result = result.model_copy(update={"outputs": outputs})
                except ValidationFailed as exc:
                    self.counters["invalid_outputs"] += 1
                    result = result.model_copy(update={
                        "status": ResultStatus.failed, "error": str(exc), "retryable": False})
        steps = self.apply([Finished(result, self.clock(), backend)])
        stale = any(isinstance(i, Dropped) and i.task_id == result.task_id and i.attempt == result.attempt
                    for s in steps for i in s.instructions)
        if stale and backend is not None and result.attempt >= 1:
            self._keep_late(result, backend)

    def _keep_late(self, result: Result, backend: str) -> None:
        """A result of an earlier attempt that did the work: keep it with the task, for the reviewer.

        It changes no state. It is kept only if the journal shows that attempt was assigned to the
        backend that sends it (so a forged one is refused), and once (re-sends are idempotent).
        """
        tid, n = result.task_id, result.attempt
        if any(r.attempt == n for r in self.store.results_for(tid)):
            return  # already recorded: a re-send
        assigned = [e for e in self.store.journal_for(tid) if e.get("dst") == TaskState.assigned.value]
        if len(assigned) < n or assigned[n - 1].get("reason") != f"on {backend}":
            self.counters["forged_results"] += 1
            raise NotAllowed(f"attempt {n} of task {tid} was never assigned to {backend}", field="attempt")
        task = self.view.get_task(tid)
        samples: list[Sample] = []
        if task is not None and result.status is ResultStatus.succeeded:
            made = made_sample(capabilities.get(task.capability), tid, task.inputs, task.campaign,
                               result.outputs, backend)
            if made is not None and self.store.get_sample(made.id) is None:
                samples.append(made)
        self.counters["late_results_kept"] += 1
        self.store.apply([Step(results=[result])], [AuditEntry(
            actor=backend, action="late_result", target=tid,
            detail={"attempt": n, "status": result.status.value, "sample": [s.id for s in samples]})], samples)

    # ---- client side -----------------------------------------------------------------------

    def submit(self, specs: list[TaskSpec], actor: str = "local", key: str | None = None) -> list[str]:
        """Validate every spec, then accept all of them in one durable transaction (or none).

        ``key``: the submitter's CURVE public key, recorded so that a client can cancel its own work."""
        checked = self.door.checked(specs, actor, key)
        ids = [t.id for t, _ in checked]
        now = self.clock()
        audits = [AuditEntry(at=now, actor="policy", action="approval_required", target=t.id,
                             detail={"reason": why, "capability": t.capability, "submitted_by": actor})
                  for t, why in checked if why]
        try:
            self.apply([Submit(t, now) for t, _ in checked], audits)
        except PPUError:
            self.counters["rejected_submissions"] += 1
            raise
        self.approval_why.update((t.id, why) for t, why in checked if why)
        self.counters["submitted"] += len(ids)
        return ids

    def check(self, specs: list[TaskSpec], actor: str = "local", key: str | None = None) -> None:
        """Refuse what :meth:`submit` would refuse, before the rows of its columnar tasks are stored
        (a refused submission leaves nothing in the artifact store)."""
        self.door.checked(specs, actor, key, stored=False)

    def cancel(self, task_id: str, actor: str = "local", reason: str = "") -> None:
        self.door.recall([task_id])  # an old task: "already ended", not "unknown"
        self.apply([Cancel(task_id, self.clock(), f"cancelled by {actor}" + (f": {reason}" if reason else ""))],
                    [AuditEntry(actor=actor, action="cancel", target=task_id, detail={"reason": reason})])

    def approve(self, task_id: str, actor: str = "local", note: str = "") -> None:
        self.door.recall([task_id])  # an old task: "already ended", not "unknown"
        self.apply([Approve(task_id, self.clock(), actor)],
                    [AuditEntry(actor=actor, action="approve", target=task_id, detail={"note": note})])
        self.approval_why.pop(task_id, None)

    def reject(self, task_id: str, actor: str = "local", reason: str = "") -> None:
        self.door.recall([task_id])  # an old task: "already ended", not "unknown"
        self.apply([Reject(task_id, self.clock(), actor, reason)],
                    [AuditEntry(actor=actor, action="reject", target=task_id, detail={"reason": reason})])
        self.approval_why.pop(task_id, None)

    def review(self, task_id: str, decision: str, actor: str = "local", reason: str = "",
               outputs: dict[str, Any] | None = None) -> None:
        self.door.recall([task_id])
        result = None
        if decision == "result":
            t = self.sched.task(task_id)
            checked = capabilities.validate_outputs(t.capability, outputs or {})
            # attempt 0 marks a result entered by a person: it never collides with a run's own
            # (possibly failed) result for the same attempt, which stays on record.
            result = Result(task_id=task_id, attempt=0, status=ResultStatus.succeeded, outputs=checked,
                            finished_at=self.clock(), provenance=Provenance(
                                backend=t.backend or "manual", kind=BackendKind.physical, entered_by=actor))
        elif decision not in ("retry", "fail"):
            raise NotAllowed(f"unknown review decision {decision!r}", hint="use retry, fail or result")
        self.apply([Review(task_id, decision, self.clock(), actor, reason, result)],  # type: ignore[arg-type]
                    [AuditEntry(actor=actor, action=f"review_{decision}", target=task_id,
                                detail={"reason": reason, "outputs": outputs})])
