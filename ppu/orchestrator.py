"""The orchestrator: the asyncio shell around the IO-free scheduler (STYLE.md §2, §6).

Everything here runs on ONE asyncio loop (the orchestrator's). Each public method turns a request
into scheduler events, journals the resulting steps to the store in one transaction, and only
then carries out the instructions (assign/abort through a :class:`WorkerLink`) and answers. So
an acknowledged submit or result is durable, and a SIGKILL at any point loses nothing that was
acknowledged: :meth:`Orchestrator.start` rebuilds the scheduler from the store.

Every change passes through :class:`~ppu.journal.Journal` (group commit on a journal thread,
crash-only: a failed commit makes the orchestrator refuse everything, sets
:attr:`Orchestrator.failed`, and its process exits non-zero; a restart rebuilds from the journal);
instructions and answers of a group leave only once it is durable.

Workers reach the orchestrator through links: :class:`LocalWorker` in-process (tests, CLI
one-shots) and the ZMQ worker over tcp/ipc/inproc (``ppu.transport``). Both host backends with
the same :class:`~ppu.host.BackendHost` and call the same methods here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ppu import capabilities
from ppu.autonomy import approval_key, approval_reason, process_key
from ppu.backends.base import Backend, TaskRun
from ppu.busy import BusyTime
from ppu.config import AutonomyConfig, OrchestratorConfig
from ppu.errors import (
    JournalFailed,
    NotAllowed,
    PPUError,
    SafeLimitError,
    UnknownBackendError,
    UnknownTaskError,
    ValidationFailed,
)
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
    SetBackendState,
    Started,
    Step,
    Submit,
    Tick,
    Undelivered,
)
from ppu.heap import freeze_once
from ppu.host import BackendHost
from ppu.journal import Journal
from ppu.models import (
    MAX_NAME,
    TERMINAL_STATES,
    ActionClass,
    ApprovalState,
    AuditEntry,
    BackendKind,
    BackendSpec,
    BackendState,
    Location,
    Provenance,
    Result,
    ResultStatus,
    Sample,
    SampleState,
    Task,
    TaskSpec,
    TaskState,
    limit_violations,
    new_id,
)
from ppu.scheduler import Scheduler, SchedulerConfig
from ppu.store import Store

log = logging.getLogger(__name__)
MAX_RUNNING_SHOWN = 200  # running tasks listed by status (a lab runs far fewer; a digital flood is counted, not listed)
# An assignment's own fields beside its tasks' (a task's record, by which a batch is sized, holds more
# than the task's part of the assignment).
_ASSIGN_MARGIN = 4096
ENDED_KEPT = 10_000  # ended tasks whose final record a wait finds without the store


class _Stored:
    """An ended task read back from the store, answering as the scheduler's records do."""

    __slots__ = ("state", "task")

    def __init__(self, task: Task):
        self.task = task
        self.state = task.state

    def to_task(self) -> Task:
        return self.task

    def body_json(self) -> str:
        return self.task.model_dump_json()


def made_sample(cap: capabilities.Capability, task_id: str, inputs: dict[str, Any], campaign: str | None,
                outputs: dict[str, Any], backend: str | None) -> Sample | None:
    """The sample a succeeded task made, from what its capability declares (never from field names)."""
    if cap.sample_output is None or not outputs.get(cap.sample_output):
        return None
    loc = (outputs.get(cap.location_output) if cap.location_output else None) or {}
    return Sample(id=str(outputs[cap.sample_output]), made_by=task_id, made_with=cap.approval_view(inputs) or {},
                  campaign=campaign, parents=cap.parents(inputs),
                  location=Location(device=str(loc.get("device", backend or "?")),
                                    slot=(str(loc["slot"]) if loc.get("slot") is not None else None)),
                  state=SampleState.available)


def block_output_columns(cap: capabilities.Capability) -> list[str]:
    """The output columns every block result of ``cap`` carries at least: its row outputs that are required
    floats (a served model's decoder answers a block with such columns, ``mean`` and ``std`` by default)."""
    return [name for name, f in cap.output_model.model_fields.items() if f.is_required() and f.annotation is float]


class WorkerLink(Protocol):
    """How the orchestrator reaches the worker that hosts a backend."""

    async def assign(self, backend: str, batch_id: str, runs: list[TaskRun], reg: str = "", seq: int = 0) -> None:
        """Send an assignment; raise PPUError when it provably cannot leave (it is requeued)."""

    async def abort(self, backend: str, task_id: str, attempt: int = 0) -> None: ...

    async def pause(self, backend: str, defer: bool = True) -> str: ...

    async def resume(self, backend: str) -> str: ...


class Orchestrator:
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
        self._states: Counter[str] = Counter()
        self.progress_of: dict[str, dict[str, Any]] = {}
        # why each task waiting for approval waits (the policy's words, also in its audit entry)
        self._approval_why: dict[str, str] = {}
        self._waiters: dict[str, list[asyncio.Future[Any]]] = {}  # each answered with the ended record
        # The last ENDED_KEPT tasks that ended, as durably journaled: a wait for them reads no store.
        self._ended: collections.OrderedDict[str, Any] = collections.OrderedDict()  # popped oldest first
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self._known_processes: set[str] = set()  # approval keys of what made a sample successfully
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
        self._states.update(self.store.count_tasks())
        self.sched.restore(live, done, self.clock(), self.store.next_seq(), forgot=forgot)
        waiting = [t.id for t in live if t.approval is ApprovalState.waiting]
        self._approval_why = {t: str(d.get("reason", "")) for t, d in
                              self.store.audit_details("approval_required", waiting).items()}
        for s in self.store.list_samples():
            if s.made_with and s.made_by:
                self._known_processes.add(approval_key(s.made_with) or "")
        saved = self.store.get_meta("autonomy")
        if saved:  # a run-time change outlives a restart
            self.autonomy = AutonomyConfig.model_validate(saved)
        holds = self.store.get_meta("holds", {}) or {}
        self._holds: dict[str, bool] = dict(holds)
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
        for futs in self._waiters.values():
            for f in futs:
                f.cancel()
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
                    self._apply([Tick(self.clock())])
            except JournalFailed:
                return  # crash-only: the process ends; nothing more may change
            except Exception:  # never let the clock die; the next tick retries
                log.exception("tick failed")

    # ---- the one path every change takes ---------------------------------------------------

    def _apply(self, events: Iterable[Event], audits: Iterable[AuditEntry] = (),
               samples: Iterable[Sample] = ()) -> list[Step]:
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
        samples = list(samples) + self._sample_changes(steps)
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
        states = self._states
        for tr in step.transitions:
            if tr.src is not None:
                states[tr.src.value] -= 1
            states[tr.dst.value] += 1
            rec = step.records.get(tr.task_id)
            in_flight = (TaskState.assigned, TaskState.running)
            if tr.src in in_flight and tr.dst not in in_flight and rec is not None:  # left the backend
                self.busy.close(rec.backend, rec.batch_id or tr.task_id, tr.at)
            if self._subscribers:  # no event built for nobody (this runs for every transition)
                self._publish({"type": "transition", "task_id": tr.task_id,
                               "src": tr.src.value if tr.src else None, "dst": tr.dst.value, "at": tr.at,
                               "reason": tr.reason, "backend": getattr(rec, "backend", None),
                               "capability": getattr(rec, "capability", None),
                               "campaign": getattr(rec, "campaign", None)})
            if tr.dst in TERMINAL_STATES:
                self.progress_of.pop(tr.task_id, None)
                self._approval_why.pop(tr.task_id, None)
                if rec is not None:
                    self._remember_ended(tr.task_id, rec)
            if tr.dst in TERMINAL_STATES or tr.dst is TaskState.needs_review:
                for fut in self._waiters.pop(tr.task_id, []) if tr.dst in TERMINAL_STATES else []:
                    if not fut.done() and rec is not None:
                        fut.set_result(rec)  # the record: wait() makes the Task, wait_json() its JSON

    def _remember_ended(self, task_id: str, rec: Any) -> None:
        """Keep a durable ended task's record (the scheduler lets go of it), the oldest out past ENDED_KEPT."""
        ended = self._ended
        ended[task_id] = rec
        if len(ended) > ENDED_KEPT:
            ended.popitem(last=False)

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
            self._apply([Undelivered(backend, tasks, self.clock(), why)])
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

    def _publish(self, event: dict[str, Any]) -> None:
        for q in self._subscribers:
            if q.qsize() < 10_000:
                q.put_nowait(event)
            else:
                self.counters["events_dropped_slow_subscriber"] += 1

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(q)

    # ---- samples ---------------------------------------------------------------------------

    def _sample_changes(self, steps: list[Step]) -> list[Sample]:
        out = []
        for step in steps:
            for r in step.results:
                rec = step.records.get(r.task_id)
                if rec is None or r.status is not ResultStatus.succeeded:
                    continue
                cap = capabilities.get(rec.capability)  # what the capability declares, never field names
                sample = made_sample(cap, rec.id, rec.inputs, rec.campaign, r.outputs, rec.backend)
                if sample is not None:
                    self._known_processes.add(process_key(rec.capability, rec.inputs) or "")
                    out.append(sample)
                for sid in cap.samples_used(rec.inputs):
                    s = next((x for x in out if x.id == sid), None) or self.store.get_sample(sid)
                    if s is None:
                        continue
                    changed = False
                    if rec.id not in s.measurements:
                        s.measurements, changed = [*s.measurements, rec.id], True
                    if cap.uses_up_sample and s.state is not SampleState.consumed:
                        s.state, changed = SampleState.consumed, True
                    if changed and s not in out:
                        out.append(s)
        return out

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
        self._apply([RegisterBackend(spec, self.clock(), tuple(in_flight), liveness, same, reg)],
                    [AuditEntry(actor=spec.name, action="register", target=spec.name,
                                detail={"kind": spec.kind.value, "site": spec.site, "same_worker": same,
                                        "capabilities": [c.name for c in spec.capabilities]})])
        if self._holds.get(spec.name):
            self._apply([Hold(spec.name, True, self.clock())])

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
            self._apply([ev])  # reconciliation may requeue, re-send or abort
        return True

    def audit(self, entry: AuditEntry) -> None:
        """Write one audit entry (with the current group commit, if any)."""
        self._apply([], [entry])

    def lost(self, backend: str, reason: str = "worker lost") -> None:
        self._apply([BackendLost(backend, self.clock(), reason)])  # the Forget it yields is audited

    def started(self, task_id: str, attempt: int, backend: str | None = None) -> None:
        self._apply([Started(task_id, attempt, self.clock(), backend)])

    def progress(self, task_id: str, fraction: float, message: str, backend: str | None = None,
                 attempt: int | None = None) -> None:
        """Progress of a running attempt; refused (NotAllowed) unless ``backend`` holds it."""
        holder = self.sched.holder(task_id)
        if holder is None or (backend is not None and (
                holder[0] != backend or (attempt is not None and attempt != holder[1]))):
            raise NotAllowed(f"progress for task {task_id!r}, which {backend or 'nobody'} holds now",
                             field="task_id")
        self.progress_of[task_id] = {"fraction": fraction, "message": message, "at": self.clock()}
        self._publish({"type": "progress", "task_id": task_id, "fraction": fraction, "message": message})

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
        steps = self._apply([Finished(result, self.clock(), backend)])
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
        task = self.get_task(tid)
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

    def validate(self, spec: TaskSpec, actor: str | None = None, key: str | None = None, *,
                 stored: bool = True) -> tuple[Task, str | None]:
        """Everything checked at the door; returns the task and why it needs approval (or None).

        ``actor`` and ``key`` (the submitter's CURVE public key) are recorded on the task. ``stored``:
        a columnar task's rows are in the artifact store already (False: checking before storing them)."""
        cap = capabilities.get(spec.capability)
        if spec.block is not None:  # a columnar task: its rows were checked (dtype, shape) at the door
            if cap.action.value != "repeatable":
                raise ValidationFailed(f"{spec.capability} is a physical ({cap.action.value}) capability: it takes "
                                       "no columnar blocks", field="block", hint="submit one task per sample")
            if spec.inputs:
                raise ValidationFailed("a columnar task's rows are in its block; leave inputs empty",
                                       field="inputs")
            if stored and not spec.block.sha256:
                raise ValidationFailed("the block's rows are not stored", field="block",
                                       hint="submit blocks through the client's submit_block or screen")
            self._check_block_outputs(cap, spec.block.rows)
        inputs = {} if spec.block is not None else capabilities.validate_inputs(spec.capability, spec.inputs)
        used = cap.samples_used(inputs)
        sample_id = spec.sample_id or (used[0] if used else None)
        for name in cap.sample_inputs:  # every sample the capability declares it works on must be known
            ids = cap.samples_used({name: inputs.get(name)})
            if not ids:
                raise ValidationFailed(f"{spec.capability} needs a sample id in inputs.{name}",
                                       field=f"inputs.{name}", hint="ppu samples lists the known samples")
            for sid in ids:
                s = self.store.get_sample(sid)
                if s is None:
                    raise ValidationFailed(f"sample {sid!r} is not in the sample registry",
                                           field=f"inputs.{name}", hint="ppu samples lists the known samples")
                if s.state is SampleState.consumed:
                    raise ValidationFailed(f"sample {sid} is {s.state.value} and cannot be scheduled",
                                           field=f"inputs.{name}")
        offering = [s for s in self.specs.values() if s.offer(spec.capability)]
        if spec.pin_backend is not None:
            pinned = self.specs.get(spec.pin_backend)
            if pinned is None:
                raise UnknownBackendError(f"cannot pin to unknown backend {spec.pin_backend!r}",
                                          field="pin_backend", hint="ppu status lists the backends")
            if not pinned.offer(spec.capability):
                raise NotAllowed(f"{spec.pin_backend} does not offer {spec.capability}", field="pin_backend")
            offering = [pinned]
        if spec.block is not None and offering and not any(s.columnar for s in offering):
            raise ValidationFailed(f"no backend that offers {spec.capability} runs columnar blocks "
                                   f"({', '.join(sorted(s.name for s in offering))} take one row per task)",
                                   field="block", hint=f"submit {spec.capability} row by row, or serve it with "
                                   "a backend type that runs blocks, such as torch or ray")
        limited = [s for s in offering if s.safe_limits]
        if limited and len(limited) == len(offering):
            problems = {s.name: limit_violations(s.safe_limits, inputs) for s in limited}
            if all(problems.values()):
                first = next(iter(problems.values()))[0]
                raise SafeLimitError(f"outside the safe limits of every backend that offers "
                                     f"{spec.capability}: {first}", field="inputs." + first.split(":")[0],
                                     hint="change the setpoint or the backend's safe_limits in the lab config")
        reason = approval_reason(spec.capability, cap.action, inputs, offering, self.autonomy,
                                 self._known_processes)
        task = Task(id=spec.id or new_id(), capability=spec.capability, inputs=inputs, action=cap.action,
                    priority=spec.priority, campaign=spec.campaign, depends_on=spec.depends_on,
                    deadline=spec.deadline, pin_backend=spec.pin_backend, min_fidelity=spec.min_fidelity,
                    max_attempts=spec.max_attempts if cap.action.value == "repeatable" else 1,
                    sample_id=sample_id, submitted_at=self.clock(), submitted_by=actor, submitter_key=key,
                    block=spec.block,
                    approval=ApprovalState.waiting if reason else ApprovalState.not_required)
        return task, reason

    def _check_block_outputs(self, cap: capabilities.Capability, rows: int) -> None:
        """Refuse a block whose result could not travel back: its output columns come as one result message's
        binary frames, bounded by ``max_blob_bytes`` like the block's rows. Counted as the least any block of
        the capability answers with: a float64 column per required float output (``mean``, ``std``)."""
        names = block_output_columns(cap)
        limit = self.cfg.max_blob_bytes
        size = rows * 8 * len(names)
        if size <= limit:
            return
        fit = limit // (8 * len(names))
        raise ValidationFailed(
            f"a block of {rows} rows of {cap.name} answers with at least {size} bytes of output columns "
            f"({', '.join(names)}: 8 bytes a row each), above the orchestrator's limit of {limit} bytes "
            "(orchestrator.max_blob_bytes): its result could not be sent back", field="block.rows",
            hint=(f"pass block_rows={fit} or fewer" if fit else "submit it row by row")
            + " to screen / submit_block, or raise orchestrator.max_blob_bytes in the lab file")

    def submit(self, specs: list[TaskSpec], actor: str = "local", key: str | None = None) -> list[str]:
        """Validate every spec, then accept all of them in one durable transaction (or none).

        ``key``: the submitter's CURVE public key, recorded so that a client can cancel its own work."""
        checked = self._checked(specs, actor, key)
        ids = [t.id for t, _ in checked]
        now = self.clock()
        audits = [AuditEntry(at=now, actor="policy", action="approval_required", target=t.id,
                             detail={"reason": why, "capability": t.capability, "submitted_by": actor})
                  for t, why in checked if why]
        try:
            self._apply([Submit(t, now) for t, _ in checked], audits)
        except PPUError:
            self.counters["rejected_submissions"] += 1
            raise
        self._approval_why.update((t.id, why) for t, why in checked if why)
        self.counters["submitted"] += len(ids)
        return ids

    def check(self, specs: list[TaskSpec], actor: str = "local", key: str | None = None) -> None:
        """Refuse what :meth:`submit` would refuse, before the rows of its columnar tasks are stored
        (a refused submission leaves nothing in the artifact store)."""
        self._checked(specs, actor, key, stored=False)

    def _checked(self, specs: list[TaskSpec], actor: str, key: str | None,
                 stored: bool = True) -> list[tuple[Task, str | None]]:
        checked = [self.validate(s, actor, key, stored=stored) for s in specs]
        ids = [t.id for t, _ in checked]
        if len(set(ids)) != len(ids):
            raise NotAllowed("duplicate task ids in one submission", field="id")
        self._check_ids(ids, [t for t, _ in checked])
        return checked

    def _recall(self, ids: Iterable[str]) -> None:
        """The scheduler keeps only the newest ended tasks (``done_kept``): once it let older ones go, the
        ids it does not know are looked up in the store, so that a duplicate id is refused and an old
        dependency found as they were when the scheduler knew every task."""
        if self.sched.forgot:
            unknown = list(dict.fromkeys(i for i in ids if self.sched.state_of(i) is None))
            if unknown:
                self.sched.recall(self.store.task_states(unknown))

    def _check_ids(self, ids: list[str], tasks: list[Task]) -> None:
        """All or none: what the scheduler would refuse half-way through a submission, refused first."""
        self._recall(itertools.chain(ids, (d for t in tasks for d in t.depends_on)))  # read only if needed
        earlier: set[str] = set()
        for t in tasks:
            if self.sched.state_of(t.id) is not None:
                raise NotAllowed(f"task id {t.id!r} already exists", field="id", hint="leave id empty for a new one")
            for d in t.depends_on:
                if d not in earlier and self.sched.state_of(d) is None:
                    raise UnknownTaskError(f"dependency {d!r} is not a known task (or comes later in the "
                                           "submission)", field="depends_on")
            earlier.add(t.id)

    def cancel(self, task_id: str, actor: str = "local", reason: str = "") -> None:
        self._recall([task_id])  # an old task: "already ended", not "unknown"
        self._apply([Cancel(task_id, self.clock(), f"cancelled by {actor}" + (f": {reason}" if reason else ""))],
                    [AuditEntry(actor=actor, action="cancel", target=task_id, detail={"reason": reason})])

    def approve(self, task_id: str, actor: str = "local", note: str = "") -> None:
        self._recall([task_id])  # an old task: "already ended", not "unknown"
        self._apply([Approve(task_id, self.clock(), actor)],
                    [AuditEntry(actor=actor, action="approve", target=task_id, detail={"note": note})])
        self._approval_why.pop(task_id, None)

    def reject(self, task_id: str, actor: str = "local", reason: str = "") -> None:
        self._recall([task_id])  # an old task: "already ended", not "unknown"
        self._apply([Reject(task_id, self.clock(), actor, reason)],
                    [AuditEntry(actor=actor, action="reject", target=task_id, detail={"reason": reason})])
        self._approval_why.pop(task_id, None)

    def review(self, task_id: str, decision: str, actor: str = "local", reason: str = "",
               outputs: dict[str, Any] | None = None) -> None:
        self._recall([task_id])
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
        self._apply([Review(task_id, decision, self.clock(), actor, reason, result)],  # type: ignore[arg-type]
                    [AuditEntry(actor=actor, action=f"review_{decision}", target=task_id,
                                detail={"reason": reason, "outputs": outputs})])

    def hold(self, backend: str | None, held: bool, actor: str = "local") -> list[str]:
        """Lab-wide stop/resume of physical backends (or one backend): they take nothing new."""
        names = [backend] if backend else [n for n, s in self.specs.items() if s.kind is BackendKind.physical]
        for n in names:
            if n not in self.specs:
                raise UnknownBackendError(f"unknown backend {n[:MAX_NAME]!r}", field="backend",
                                          hint="ppu status lists the backends")
        if not names:
            return []  # no physical backend: nothing to stop, nothing to record
        self._holds.update({n: held for n in names})
        self.store.set_meta("holds", self._holds)
        self._apply([Hold(n, held, self.clock()) for n in names],
                    [AuditEntry(actor=actor, action="stop" if held else "resume", target=backend or "lab",
                                detail={"backends": names})])
        return names

    async def stop(self, backend: str | None = None, actor: str = "local", now: bool = False) -> dict[str, str]:
        """Lab-wide stop: physical backends take nothing new and pause their running plans.

        The pause is deferred to each plan's next checkpoint unless ``now`` (a long step already
        under way finishes first). Returns, per backend, the state it was left in. Digital work goes on.
        """
        names = self.hold(backend, True, actor)
        if not names:
            return {}
        states: dict[str, str] = {}
        for name in names:
            link = self.links.get(name)
            if link is None:
                states[name] = "not connected; it will take nothing new when it comes back"
                continue
            try:
                states[name] = await link.pause(name, defer=not now)
            except Exception as exc:
                states[name] = f"could not be reached to pause ({type(exc).__name__}); it takes nothing new"
        self.store.add_audit(AuditEntry(actor=actor, action="paused", target=backend or "lab", detail=states))
        return states

    async def resume(self, backend: str | None = None, actor: str = "local") -> dict[str, str]:
        """Undo a stop: resume paused plans, then let the backends take work again."""
        names = [backend] if backend else [n for n, held in self._holds.items() if held]
        states: dict[str, str] = {}
        for name in names:
            link = self.links.get(name)
            try:
                states[name] = await link.resume(name) if link is not None else "not connected"
            except Exception as exc:
                states[name] = f"could not be reached to resume ({type(exc).__name__})"
        if backend:
            self.hold(backend, False, actor)
        else:
            for name in names:
                self.hold(name, False, actor)
        return states

    def sample_detail(self, sample_id: str) -> dict[str, Any]:
        """A sample's lineage: what made it and with which inputs, every task that used it, where it is."""
        s = self.sample_record(sample_id)
        return {"sample": s.model_dump(mode="json"), "made_by": self.sample_task(s.made_by),
                "measurements": [self.sample_task(tid) for tid in s.measurements]}

    def sample_record(self, sample_id: str) -> Sample:
        s = self.store.get_sample(sample_id)
        if s is None:
            raise ValidationFailed(f"unknown sample {sample_id!r}", field="sample_id",
                                   hint="ppu samples lists the known samples")
        return s

    def sample_task(self, tid: str | None) -> dict[str, Any] | None:
        """A task that made or used a sample, with its outputs (one entry of :meth:`sample_detail`)."""
        if tid is None:
            return None
        t = self.get_task(tid)
        r = self.store.final_result(tid)
        return {"task_id": tid, "capability": t.capability if t else None, "state": t.state.value if t else None,
                "outputs": r.outputs if r else None,
                "entered_by": r.provenance.entered_by if r and r.provenance else None}

    def set_backend_state(self, backend: str, state: BackendState, actor: str = "local") -> None:
        self._apply([SetBackendState(backend, state, self.clock())],
                    [AuditEntry(actor=actor, action="backend_state", target=backend, detail={"state": state.value})])

    async def wait(self, task_ids: list[str], timeout: float | None = None) -> list[Task]:
        """Wait until every task has ended; returns their final records."""
        return [r.to_task() for r in await self._ended_records(task_ids, timeout)]

    async def wait_json(self, task_ids: list[str], timeout: float | None = None) -> list[str]:
        """:meth:`wait`, each task as the JSON the store keeps (what the server answers with: no
        model is built per task)."""
        return [r.body_json() for r in await self._ended_records(task_ids, timeout)]

    async def _ended_records(self, task_ids: list[str], timeout: float | None) -> list[Any]:
        """Each task's final record once every one has ended and is durable: the scheduler's record
        (kept in :attr:`_ended`) or, for one ended long ago, the store's (as :class:`_Stored`)."""
        loop = asyncio.get_running_loop()
        ended = [tid for tid in task_ids if self.sched.state_of(tid) in TERMINAL_STATES or
                 self.sched.state_of(tid) is None]
        known: dict[str, Any] = {tid: rec for tid in ended if (rec := self._ended.get(tid)) is not None}
        if len(known) < len(ended):  # the rest from the store, in one query, not one per id
            known.update((tid, _Stored(t)) for tid, t in
                         self.store.get_tasks([tid for tid in ended if tid not in known]).items())
        unknown = [tid for tid in ended if self.sched.state_of(tid) is None and tid not in known]
        if unknown:
            raise UnknownTaskError(f"unknown task {unknown[0]!r}", field="task_ids", hint="ppu tasks lists the tasks")
        futs: list[asyncio.Future[Any]] = []
        for tid in task_ids:
            f: asyncio.Future[Any] = loop.create_future()
            rec = known.get(tid)
            if rec is not None and rec.state in TERMINAL_STATES:
                f.set_result(rec)
            else:  # live, or ended in a group not yet durable: answered after it is
                self._waiters.setdefault(tid, []).append(f)
            futs.append(f)
        try:
            gathered = asyncio.gather(*futs)
            # close() cancels waiters; a gather nobody awaits any more must not log "never retrieved"
            gathered.add_done_callback(lambda g: g.cancelled() or g.exception())
            return list(await asyncio.wait_for(gathered, timeout))
        finally:  # a timed-out or cancelled wait leaves no future behind
            for tid, f in zip(task_ids, futs, strict=True):
                waiting = self._waiters.get(tid)
                if waiting is not None and f in waiting:
                    waiting.remove(f)
                    if not waiting:
                        del self._waiters[tid]

    def approvals(self, after_seq: int = -1) -> list[dict[str, Any]]:
        """Tasks waiting for a person's approval: why, and what they would do; in submission order
        (``seq``), those after ``after_seq``."""
        waiting = sorted(self.sched.live_tasks(approval=ApprovalState.waiting, after_seq=after_seq),
                         key=lambda t: t.seq)
        out = []
        for t in waiting:
            offers = [(n, o) for n, s in self.specs.items() if (o := s.offer(t.capability))]
            out.append({
                "task_id": t.id, "seq": t.seq, "capability": t.capability, "campaign": t.campaign, "inputs": t.inputs,
                "reason": self._approval_why.get(t.id, ""), "backends": [n for n, _ in offers],
                "expected_duration_s": min((o.duration_s for _, o in offers), default=None),
                "expected_cost": min((o.cost for _, o in offers), default=None),
            })
        return out

    def reviews(self, after_seq: int = -1) -> list[dict[str, Any]]:
        """Interrupted physical tasks waiting for a person, with what is known about them; in
        submission order (``seq``), those after ``after_seq``."""
        out = []
        for t in sorted(self.sched.live_tasks(state=TaskState.needs_review, after_seq=after_seq),
                        key=lambda t: t.seq):
            sample = self.store.get_sample(t.sample_id) if t.sample_id else None
            results = self.store.results_for(t.id)
            out.append({
                "task_id": t.id, "seq": t.seq, "capability": t.capability, "backend": t.backend, "attempts": t.attempts,
                "why": t.error, "inputs": t.inputs, "last_progress": self.progress_of.get(t.id),
                "run_uids": [u for r in results if r.provenance for u in r.provenance.run_uids],
                "results": [{"attempt": r.attempt, "status": r.status.value, "outputs": r.outputs,
                             "error": r.error} for r in results],
                "sample": sample.model_dump(mode="json") if sample else None,
            })
        return out

    def set_autonomy(self, level: str, actor: str, backend: str | None = None,
                     capability: str | None = None) -> None:
        """Change an autonomy level at run time (recorded in the audit log)."""
        from ppu.models import Autonomy

        new = Autonomy(level)
        if backend and backend not in self.specs and backend not in self.autonomy.backends:
            raise UnknownBackendError(f"unknown backend {backend[:MAX_NAME]!r}", field="backend",
                                      hint="ppu status lists the backends (a worker must have registered it)")
        if capability and not backend:
            capabilities.get(capability)  # UnknownCapabilityError naming the field
        if backend:
            self.autonomy.backends[backend] = new
        elif capability:
            self.autonomy.capabilities[capability] = new
        else:
            self.autonomy.default = new
        self.store.set_meta("autonomy", self.autonomy.model_dump(mode="json"))
        self.store.add_audit(AuditEntry(actor=actor, action="autonomy", target=backend or capability or "default",
                                        detail={"level": new.value}))

    def get_task(self, task_id: str) -> Task | None:
        state = self.sched.state_of(task_id)
        if state is not None and state not in TERMINAL_STATES:
            return self.sched.task(task_id)
        return self.store.get_task(task_id)

    def task_rows(self, state: TaskState | None, campaign: str | None, capability: str | None, limit: int,
                  offset: int = 0, before: tuple[int, str] | None = None) -> tuple[list[tuple[int, str, str]], bool]:
        """(seq, id, the Task's JSON) of the newest ``limit`` tasks in ``state`` as they are now, newest
        first, and whether more follow.

        The journal writes a repeatable task's start with its next change (often its result: one
        commit fewer per task), so the store may still hold a running task as ``assigned``: such a row
        is listed with the scheduler's record, ``running`` looks among the stored ``assigned`` rows too,
        and ``assigned`` leaves those out. Every other state is the store's own, and current."""
        running, assigned = TaskState.running, TaskState.assigned
        stored: tuple[str, ...] | str | None = (running.value, assigned.value) if state is running else \
            state.value if state is not None else None
        rows: list[tuple[int, str, str]] = []
        while True:  # rows may be left out: read on until the page is full or the store has no more
            want = limit + 1 - len(rows)
            found = self.store.list_task_rows(stored, campaign, capability, want, offset, before)
            offset = 0
            for seq, tid, was, body in found:
                now = was
                if was == assigned.value and self.sched.state_of(tid) is running:
                    now, body = running.value, self.sched.task(tid).model_dump_json()
                if state is None or now == state.value:
                    rows.append((seq, tid, body))
            if len(found) < want or len(rows) > limit:
                break
            before = (found[-1][0], found[-1][1])
        return rows[:limit], len(rows) > limit

    def status(self) -> dict[str, Any]:
        now = self.clock()
        span = max(now - self.started_at, 1e-9)
        busy = self.busy.seconds(now)
        backends = self.sched.backends()
        for row in backends:
            row["utilisation"] = min(1.0, busy.get(row["name"], 0.0) / span / max(1, row["slots"]))
        # Running tasks: all counted by backend and capability; listed up to MAX_RUNNING_SHOWN, those a
        # person looks for first (on a stopped backend, reporting progress, physical; then the oldest).
        groups: Counter[tuple[str, str]] = Counter()
        running = []
        for tid, cap, backend, action, seq in self.sched.running():
            groups[(backend or "", cap)] += 1
            held = bool(backend and self._holds.get(backend))
            progress = self.progress_of.get(tid)
            key = (not held, not (progress or {}).get("message"), action is not ActionClass.once, seq)
            running.append((key, {"task_id": tid, "capability": cap, "backend": backend, "held": held,
                                  "progress": progress}))
        shown = [row for _, row in heapq.nsmallest(MAX_RUNNING_SHOWN, running, key=lambda kv: kv[0])]
        return {"backends": backends, "queues": self.sched.queue_depths(), "counters": dict(self.counters),
                "tasks": {state: n for state, n in self._states.items() if n}, "uptime_s": span, "running": shown,
                "running_groups": [{"backend": b, "capability": c, "running": n}
                                   for (b, c), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))]}


class LocalWorker:
    """An in-process worker: hosts backends on the orchestrator's loop and links them directly."""

    def __init__(self, orch: Orchestrator, backends: list[Backend]):
        self.orch = orch
        self.hosts: dict[str, BackendHost] = {}
        for b in backends:
            self.hosts[b.name] = BackendHost(b, self._reporter(b.name))
        self._hb: asyncio.Task[None] | None = None

    def _reporter(self, name: str) -> Any:
        async def report(kind: str, payload: dict[str, Any]) -> None:
            if kind == "started":
                for task_id, attempt in payload["runs"]:
                    self.orch.started(task_id, attempt, name)
            elif kind == "progress":
                with contextlib.suppress(NotAllowed):  # progress of an attempt no longer expected
                    self.orch.progress(payload["task_id"], payload["fraction"], payload["message"], name)
            elif kind == "results":
                for r in payload["results"]:
                    self.orch.finished(r, name)
                    self.hosts[name].ack(r.task_id, r.attempt)
        return report

    async def start(self) -> None:
        for host in self.hosts.values():
            await host.start()
            self.orch.register(host.backend.spec(), self, host.in_flight())
        self._hb = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            for name in self.hosts:
                self.orch.heartbeat(name)
            await asyncio.sleep(self.orch.cfg.heartbeat_s)

    async def close(self) -> None:
        if self._hb:
            self._hb.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hb
        for host in self.hosts.values():
            await host.close()

    async def assign(self, backend: str, batch_id: str, runs: list[TaskRun], reg: str = "", seq: int = 0) -> None:
        self.hosts[backend].assign(batch_id, runs)

    async def abort(self, backend: str, task_id: str, attempt: int = 0) -> None:
        await self.hosts[backend].abort(task_id, attempt)

    def forget(self, backend: str, reason: str) -> None:
        """The scheduler declared the backend lost (a stalled loop): register it again."""
        host = self.hosts.get(backend)
        if host is not None:
            asyncio.get_running_loop().call_soon(
                lambda: self.orch.register(host.backend.spec(), self, host.in_flight()))

    async def pause(self, backend: str, defer: bool = True) -> str:
        return await self.hosts[backend].backend.pause(defer)

    async def resume(self, backend: str) -> str:
        return await self.hosts[backend].backend.resume()
