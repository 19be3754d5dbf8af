"""The orchestrator: the asyncio shell around the IO-free scheduler (STYLE.md §2, §6).

Everything here runs on ONE asyncio loop (the orchestrator's). Each public method turns a request
into scheduler events, journals the resulting steps to the store in one transaction, and only
then carries out the instructions (assign/abort through a :class:`WorkerLink`) and answers. So
an acknowledged submit or result is durable, and a SIGKILL at any point loses nothing that was
acknowledged: :meth:`Orchestrator.start` rebuilds the scheduler from the store.

Crash-only journaling: the scheduler changes memory before the store commits, so a commit that
fails leaves memory ahead of disk. The orchestrator then refuses everything (``JournalFailed``),
answers nothing as accepted, sets :attr:`Orchestrator.failed` and its process exits non-zero; a
restart rebuilds from the journal. Group commits (:meth:`Orchestrator.grouped`) are written on
one journal thread, in order, so the loop never waits for an fsync; instructions and answers of
a group leave only once it is durable.

Workers reach the orchestrator through links: :class:`LocalWorker` in-process (tests, CLI
one-shots) and the ZMQ worker over tcp/ipc/inproc (``ppu.transport``). Both host backends with
the same :class:`~ppu.host.BackendHost` and call the same methods here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ppu import capabilities
from ppu.autonomy import approval_reason, recipe_key
from ppu.backends.base import Backend, TaskRun
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
)
from ppu.host import BackendHost
from ppu.models import (
    TERMINAL_STATES,
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
from ppu.store import Rows, Store

log = logging.getLogger(__name__)


@dataclass
class _Group:
    """Changes journaled in one transaction; ``durable`` resolves once they are on disk."""

    durable: asyncio.Future[None]
    steps: list[Step] = field(default_factory=list)
    audits: list[AuditEntry] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    users: int = 0
    write: concurrent.futures.Future[None] | None = None  # on the journal thread

    def add(self, steps: list[Step], audits: list[AuditEntry], samples: list[Sample]) -> None:
        self.steps.extend(steps)
        self.audits.extend(audits)
        self.samples.extend(samples)


def _worth_journaling(steps: list[Step], audits: list[AuditEntry], samples: list[Sample]) -> bool:
    return bool(audits or samples or any(s.transitions or s.results or s.changed for s in steps))


class WorkerLink(Protocol):
    """How the orchestrator reaches the worker that hosts a backend."""

    async def assign(self, backend: str, batch_id: str, runs: list[TaskRun]) -> None: ...

    async def abort(self, backend: str, task_id: str) -> None: ...

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
            restart_grace_s=self.cfg.restart_grace_s))
        self.links: dict[str, WorkerLink] = {}
        self.specs: dict[str, BackendSpec] = {}
        self.counters: Counter[str] = Counter()
        self.progress_of: dict[str, dict[str, Any]] = {}
        self.busy_log: list[dict[str, Any]] = []  # backend busy intervals, for Gantt charts
        self._busy_since: dict[tuple[str, str], float] = {}
        self._waiters: dict[str, list[asyncio.Future[Task]]] = {}
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self._known_recipes: set[str] = set()
        self._rearm = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._open: _Group | None = None  # the group that _apply adds to (inside grouped())
        self._pending = 0  # groups closed but not yet durable; while > 0 every change queues behind
        self._commit_lock = asyncio.Lock()  # FIFO: groups reach the disk in the order they closed
        self._commits: set[asyncio.Task[None]] = set()
        self._journal_thread: ThreadPoolExecutor | None = None
        self._fatal: JournalFailed | None = None
        self._poisoned = False  # set on the journal thread when a write failed
        self.failed = asyncio.Event()  # set when a commit failed: the process must end (crash-only)
        self.writer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._sending: set[asyncio.Task[None]] = set()
        self._closing = False
        self.started_at = clock()

    # ---- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Take the store's writer lease, rebuild the scheduler's exact state from it, start the clock.

        Raises :class:`~ppu.errors.StoreHeld` when another orchestrator writes this store.
        """
        self.store.acquire_writer(self.writer_id, self.cfg.bind)
        self._journal_thread = ThreadPoolExecutor(1, thread_name_prefix="ppu-journal")
        live, done = self.store.load()
        self.sched.restore(live, done, self.clock())
        for s in self.store.list_samples():
            if s.recipe and s.made_by:
                self._known_recipes.add(recipe_key({"recipe": s.recipe}) or "")
        saved = self.store.get_meta("autonomy")
        if saved:  # a run-time change outlives a restart
            self.autonomy = AutonomyConfig.model_validate(saved)
        holds = self.store.get_meta("holds", {}) or {}
        self._holds: dict[str, bool] = dict(holds)
        self._timer = asyncio.get_running_loop().create_task(self._tick_loop())
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
        if self._commits:  # let every closed group reach the disk (or fail) before letting go
            await asyncio.wait(list(self._commits))
        if self._journal_thread is not None:
            self._journal_thread.shutdown(wait=True)
            self._journal_thread = None
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
            if self._fatal is not None:
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
        if self._fatal is not None:
            raise self._fatal
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
        if self._open is not None:  # inside grouped(): journaled and carried out at its end
            self._open.add(steps, audits, samples)
        elif self._pending:
            # A direct caller (in-process API) while groups are on their way to disk: its return is
            # its acknowledgement, so it waits for its own write, queued behind theirs on the journal
            # thread (rare and short: the transport and the clock use grouped()).
            if _worth_journaling(steps, audits, samples):
                assert self._journal_thread is not None
                try:
                    self._journal_thread.submit(self._write, self.store.prepare(steps, audits, samples)).result()
                except Exception as exc:
                    raise self._die(exc) from exc
            self._carry_out_all(steps)
        else:
            if _worth_journaling(steps, audits, samples):
                # Durable first: nothing below (assignments, answers, waiters) happens before this.
                try:
                    self.store.apply(steps, audits, samples)
                except Exception as exc:
                    raise self._die(exc) from exc
            self._carry_out_all(steps)
        if error is not None:
            raise error
        return steps

    @contextlib.asynccontextmanager
    async def grouped(self) -> AsyncIterator[None]:
        """Group commit: every change made inside is journaled in ONE transaction at the end.

        The transport handles a burst of messages inside one group and sends its answers (acks,
        replies) only after the group is durable, so "durable before acknowledged" still holds while
        the store fsyncs once per burst, on the journal thread, not on the loop. Raises
        :class:`~ppu.errors.JournalFailed` when the commit failed: nothing of it may be acknowledged.
        """
        if self._fatal is not None:
            raise self._fatal
        group = self._open or self._new_group()
        self._open = group
        group.users += 1
        try:
            yield
        finally:
            group.users -= 1
            if group.users == 0 and self._open is group:
                self._open = None
                self._close(group)
            await asyncio.shield(group.durable)

    def _new_group(self) -> _Group:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a failure nobody awaits is no warning
        return _Group(durable=fut)

    def _close(self, group: _Group) -> None:
        """No more changes join this group: snapshot its rows now, write them behind the earlier ones."""
        try:
            if _worth_journaling(group.steps, group.audits, group.samples):
                assert self._journal_thread is not None, "start() the orchestrator first"
                # Queued now, so the journal thread writes groups in the order they closed.
                group.write = self._journal_thread.submit(
                    self._write, self.store.prepare(group.steps, group.audits, group.samples))
        except Exception as exc:
            group.durable.set_exception(self._die(exc))
            return
        self._pending += 1
        task = asyncio.get_running_loop().create_task(self._commit(group))
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    async def _commit(self, group: _Group) -> None:
        async with self._commit_lock:
            try:
                if self._fatal is not None:
                    raise self._fatal
                if group.write is not None:
                    await asyncio.wrap_future(group.write)
            except asyncio.CancelledError:  # the loop is going away; the thread finishes the write
                self._pending -= 1
                group.durable.cancel()
                raise
            except Exception as exc:
                self._pending -= 1
                group.durable.set_exception(exc if isinstance(exc, JournalFailed) else self._die(exc))
                return
            self._pending -= 1
            self._carry_out_all(group.steps)
            group.durable.set_result(None)

    def _write(self, rows: Rows) -> None:
        """On the journal thread: once one write failed, none after it may land (memory went on)."""
        if self._poisoned:
            raise JournalFailed("an earlier journal write failed")
        try:
            self.store.write(rows)
        except BaseException:
            self._poisoned = True
            raise

    def _die(self, exc: BaseException) -> JournalFailed:
        """A commit failed: memory is ahead of the journal. Refuse everything from now on and stop."""
        if self._fatal is None:
            self._fatal = JournalFailed(
                f"the journal could not be written ({type(exc).__name__}: {exc}); the orchestrator stops "
                "so that nothing unjournaled is acknowledged or carried out",
                hint="fix the store (disk full? read-only? database down?), then start the orchestrator "
                     "again: it rebuilds from the journal")
            log.critical("JOURNAL COMMIT FAILED, stopping (crash-only): %s", exc)
            self.failed.set()
        return self._fatal

    def _carry_out_all(self, steps: list[Step]) -> None:
        """After the commit: an error here must not undo what is durable (nor its acks)."""
        for step in steps:
            try:
                self._carry_out(step)
            except Exception:
                self.counters["carry_out_errors"] += 1
                log.exception("could not carry out a journaled step")
        self._rearm.set()

    def _carry_out(self, step: Step) -> None:
        loop = asyncio.get_running_loop()
        for ins in step.instructions:
            if isinstance(ins, Assign):
                runs = []
                for tid, attempt in ins.tasks:
                    if self.sched.state_of(tid) is not TaskState.assigned or self.sched.task(tid).attempts != attempt:
                        # It moved on while its group was on the way to disk: this assignment is stale.
                        self.counters["stale_assignments"] += 1
                        continue
                    t = self.sched.task(tid)
                    runs.append(TaskRun(task_id=tid, attempt=attempt, capability=t.capability, inputs=t.inputs,
                                        campaign=t.campaign, sample_id=t.sample_id))
                link = self.links.get(ins.backend)
                if not runs:
                    continue
                self._busy_since[(ins.backend, ins.batch_id)] = self.clock()
                if link is not None:
                    self._spawn(loop, link.assign(ins.backend, ins.batch_id, runs))
            elif isinstance(ins, Abort):
                link = self.links.get(ins.backend)
                if link is not None:
                    self._spawn(loop, link.abort(ins.backend, ins.task_id))
            elif isinstance(ins, Dropped):
                self.counters["dropped_" + ins.why.split(" ")[0]] += 1
                log.info("dropped %s attempt %d: %s", ins.task_id, ins.attempt, ins.why)
        for tr in step.transitions:
            rec = step.records.get(tr.task_id)
            in_flight = (TaskState.assigned, TaskState.running)
            if tr.src in in_flight and tr.dst not in in_flight and rec is not None:  # left the backend
                self._close_busy(rec.backend, rec.batch_id or tr.task_id, tr.at)
            event = {"type": "transition", "task_id": tr.task_id, "src": tr.src.value if tr.src else None,
                     "dst": tr.dst.value, "at": tr.at, "reason": tr.reason,
                     "backend": getattr(rec, "backend", None), "capability": getattr(rec, "capability", None),
                     "campaign": getattr(rec, "campaign", None)}
            self._publish(event)
            if tr.dst in TERMINAL_STATES or tr.dst is TaskState.needs_review:
                for fut in self._waiters.pop(tr.task_id, []) if tr.dst in TERMINAL_STATES else []:
                    if not fut.done() and rec is not None:
                        fut.set_result(rec.to_task())

    def _close_busy(self, backend: str | None, batch_id: str, at: float) -> None:
        if backend is None:
            return
        start = self._busy_since.pop((backend, batch_id), None)
        if start is not None:
            self.busy_log.append({"backend": backend, "start": start, "end": at, "batch": batch_id})

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(self._send(coro))
        self._sending.add(task)  # keep a reference until it is done (asyncio holds weak ones)
        task.add_done_callback(self._sending.discard)

    async def _send(self, coro: Any) -> None:
        try:
            await coro
        except Exception:
            # The lease covers this: an assignment that never arrives ends as a lost worker.
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
                cap = capabilities.get(rec.capability)
                if cap.makes_sample and "sample_id" in r.outputs:
                    loc = r.outputs.get("location") or {}
                    sample = Sample(
                        id=r.outputs["sample_id"], made_by=rec.id, recipe=rec.inputs.get("recipe", {}),
                        campaign=rec.campaign, parents=list(rec.inputs.get("parents", [])),
                        location=Location(device=str(loc.get("device", rec.backend or "?")),
                                          slot=(str(loc["slot"]) if loc.get("slot") is not None else None)),
                        state=SampleState.available)
                    self._known_recipes.add(recipe_key(rec.inputs) or "")
                    out.append(sample)
                elif cap.needs_sample and rec.sample_id:
                    s = self.store.get_sample(rec.sample_id)
                    if s is not None and rec.id not in s.measurements:
                        s.measurements = [*s.measurements, rec.id]
                        out.append(s)
        return out

    # ---- worker side -----------------------------------------------------------------------

    def register(self, spec: BackendSpec, link: WorkerLink, in_flight: Iterable[str] = ()) -> None:
        liveness = self.cfg.heartbeat_s * self.cfg.missed_heartbeats
        self.links[spec.name] = link
        self.specs[spec.name] = spec
        self._apply([RegisterBackend(spec, self.clock(), tuple(in_flight), liveness)],
                    [AuditEntry(actor=spec.name, action="register", target=spec.name,
                                detail={"kind": spec.kind.value, "site": spec.site,
                                        "capabilities": [c.name for c in spec.capabilities]})])
        if self._holds.get(spec.name):
            self._apply([Hold(spec.name, True, self.clock())])

    def heartbeat(self, backend: str) -> None:
        self.sched.handle(Heartbeat(backend, self.clock()))  # no state change worth journaling

    def lost(self, backend: str, reason: str = "worker lost") -> None:
        self.links.pop(backend, None)
        self._apply([BackendLost(backend, self.clock(), reason)],
                    [AuditEntry(actor="orchestrator", action="backend_lost", target=backend, detail={"why": reason})])

    def started(self, task_id: str, attempt: int) -> None:
        self._apply([Started(task_id, attempt, self.clock())])

    def progress(self, task_id: str, fraction: float, message: str) -> None:
        self.progress_of[task_id] = {"fraction": fraction, "message": message, "at": self.clock()}
        self._publish({"type": "progress", "task_id": task_id, "fraction": fraction, "message": message})

    def finished(self, result: Result, backend: str | None = None) -> None:
        """Record a result (idempotent by task id + attempt). The caller acks after this returns."""
        if result.status is ResultStatus.succeeded:
            state = self.sched.state_of(result.task_id)
            live = state is not None and state not in TERMINAL_STATES
            if live:
                cap = self.sched.task(result.task_id).capability
                try:
                    outputs = capabilities.validate_outputs(cap, result.outputs)
                    result = result.model_copy(update={"outputs": outputs})
                except ValidationFailed as exc:
                    self.counters["invalid_outputs"] += 1
                    result = result.model_copy(update={
                        "status": ResultStatus.failed, "error": str(exc), "retryable": False})
        self._apply([Finished(result, self.clock(), backend)])

    # ---- client side -----------------------------------------------------------------------

    def validate(self, spec: TaskSpec) -> tuple[Task, str | None]:
        """Everything checked at the door; returns the task and why it needs approval (or None)."""
        cap = capabilities.get(spec.capability)
        inputs = capabilities.validate_inputs(spec.capability, spec.inputs)
        sample_id = spec.sample_id or (inputs.get("sample_id") if cap.needs_sample else None)
        if cap.needs_sample:
            s = self.store.get_sample(str(sample_id)) if sample_id else None
            if s is None:
                raise ValidationFailed(f"sample {sample_id!r} is not in the sample registry",
                                       field="inputs.sample_id", hint="ppu samples lists the known samples")
            if s.state in (SampleState.consumed, SampleState.lost):
                raise ValidationFailed(f"sample {sample_id} is {s.state.value} and cannot be scheduled",
                                       field="inputs.sample_id")
        offering = [s for s in self.specs.values() if s.offer(spec.capability)]
        if spec.pin_backend is not None:
            pinned = self.specs.get(spec.pin_backend)
            if pinned is None:
                raise UnknownBackendError(f"cannot pin to unknown backend {spec.pin_backend!r}",
                                          field="pin_backend", hint="ppu status lists the backends")
            if not pinned.offer(spec.capability):
                raise NotAllowed(f"{spec.pin_backend} does not offer {spec.capability}", field="pin_backend")
            offering = [pinned]
        limited = [s for s in offering if s.safe_limits]
        if limited and len(limited) == len(offering):
            problems = {s.name: limit_violations(s.safe_limits, inputs) for s in limited}
            if all(problems.values()):
                first = next(iter(problems.values()))[0]
                raise SafeLimitError(f"outside the safe limits of every backend that offers "
                                     f"{spec.capability}: {first}", field="inputs." + first.split(":")[0],
                                     hint="change the setpoint or the backend's safe_limits in the lab config")
        reason = approval_reason(spec.capability, cap.action, inputs, offering, self.autonomy, self._known_recipes)
        task = Task(id=spec.id or new_id(), capability=spec.capability, inputs=inputs, action=cap.action,
                    priority=spec.priority, campaign=spec.campaign, depends_on=spec.depends_on,
                    deadline=spec.deadline, pin_backend=spec.pin_backend, min_fidelity=spec.min_fidelity,
                    max_attempts=spec.max_attempts if cap.action.value == "repeatable" else 1,
                    sample_id=sample_id, submitted_at=self.clock(),
                    approval=ApprovalState.waiting if reason else ApprovalState.not_required)
        return task, reason

    def submit(self, specs: list[TaskSpec], actor: str = "local") -> list[str]:
        """Validate every spec, then accept all of them in one durable transaction (or none)."""
        checked = [self.validate(s) for s in specs]
        ids = [t.id for t, _ in checked]
        if len(set(ids)) != len(ids):
            raise NotAllowed("duplicate task ids in one submission", field="id")
        self._check_ids(ids, [t for t, _ in checked])
        now = self.clock()
        audits = [AuditEntry(at=now, actor="policy", action="approval_required", target=t.id,
                             detail={"reason": why, "capability": t.capability, "submitted_by": actor})
                  for t, why in checked if why]
        try:
            self._apply([Submit(t, now) for t, _ in checked], audits)
        except PPUError:
            self.counters["rejected_submissions"] += 1
            raise
        self.counters["submitted"] += len(ids)
        return ids

    def _check_ids(self, ids: list[str], tasks: list[Task]) -> None:
        """All or none: what the scheduler would refuse half-way through a submission, refused first."""
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
        self._apply([Cancel(task_id, self.clock(), f"cancelled by {actor}" + (f": {reason}" if reason else ""))],
                    [AuditEntry(actor=actor, action="cancel", target=task_id, detail={"reason": reason})])

    def approve(self, task_id: str, actor: str = "local", note: str = "") -> None:
        self._apply([Approve(task_id, self.clock(), actor)],
                    [AuditEntry(actor=actor, action="approve", target=task_id, detail={"note": note})])

    def reject(self, task_id: str, actor: str = "local", reason: str = "") -> None:
        self._apply([Reject(task_id, self.clock(), actor, reason)],
                    [AuditEntry(actor=actor, action="reject", target=task_id, detail={"reason": reason})])

    def review(self, task_id: str, decision: str, actor: str = "local", reason: str = "",
               outputs: dict[str, Any] | None = None) -> None:
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
                raise UnknownBackendError(f"unknown backend {n!r}", hint="ppu status lists the backends")
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

        The pause is deferred to each plan's next checkpoint unless ``now`` (a synthesis in its
        anneal finishes first). Returns, per backend, the state it was left in. Digital work goes on.
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
        """A sample's lineage: recipe, the task that made it, every measurement on it, where it is."""
        s = self.store.get_sample(sample_id)
        if s is None:
            raise ValidationFailed(f"unknown sample {sample_id!r}", field="sample_id",
                                   hint="ppu samples lists the known samples")

        def with_result(tid: str | None) -> dict[str, Any] | None:
            if tid is None:
                return None
            t = self.get_task(tid)
            r = self.store.final_result(tid)
            return {"task_id": tid, "capability": t.capability if t else None, "state": t.state.value if t else None,
                    "outputs": r.outputs if r else None,
                    "entered_by": r.provenance.entered_by if r and r.provenance else None}

        measured = [m for tid in s.measurements if (m := with_result(tid)) is not None]
        return {"sample": s.model_dump(mode="json"), "made_by": with_result(s.made_by), "measurements": measured}

    def set_backend_state(self, backend: str, state: BackendState, actor: str = "local") -> None:
        self._apply([SetBackendState(backend, state, self.clock())],
                    [AuditEntry(actor=actor, action="backend_state", target=backend, detail={"state": state.value})])

    async def wait(self, task_ids: list[str], timeout: float | None = None) -> list[Task]:
        """Wait until every task has ended; returns their final records."""
        loop = asyncio.get_running_loop()
        ended = [tid for tid in task_ids if self.sched.state_of(tid) in TERMINAL_STATES or
                 self.sched.state_of(tid) is None]
        stored = self.store.get_tasks(ended) if ended else {}  # one query, not one per id
        futs = []
        for tid in task_ids:
            f: asyncio.Future[Task] = loop.create_future()
            state = self.sched.state_of(tid)
            t = stored.get(tid)
            if t is not None and t.state in TERMINAL_STATES:
                f.set_result(t)
            elif state is not None:  # live, or ended in a group not yet durable: answered after it is
                self._waiters.setdefault(tid, []).append(f)
            else:
                raise NotAllowed(f"unknown task {tid!r}")
            futs.append(f)
        return list(await asyncio.wait_for(asyncio.gather(*futs), timeout))

    def approvals(self) -> list[dict[str, Any]]:
        """Tasks waiting for a person's approval: why, and what they would do."""
        reasons = {e.target: e.detail.get("reason", "") for e in self.store.audit_entries()
                   if e.action == "approval_required"}
        out = []
        for t in self.sched.live_tasks():
            if t.approval is not ApprovalState.waiting:
                continue
            offers = [(n, o) for n, s in self.specs.items() if (o := s.offer(t.capability))]
            out.append({
                "task_id": t.id, "capability": t.capability, "campaign": t.campaign, "inputs": t.inputs,
                "reason": reasons.get(t.id, ""), "backends": [n for n, _ in offers],
                "expected_duration_s": min((o.duration_s for _, o in offers), default=None),
                "expected_cost": min((o.cost for _, o in offers), default=None),
            })
        return out

    def reviews(self) -> list[dict[str, Any]]:
        """Interrupted physical tasks waiting for a person, with what is known about them."""
        out = []
        for t in self.sched.live_tasks():
            if t.state is not TaskState.needs_review:
                continue
            sample = self.store.get_sample(t.sample_id) if t.sample_id else None
            results = self.store.results_for(t.id)
            out.append({
                "task_id": t.id, "capability": t.capability, "backend": t.backend, "attempts": t.attempts,
                "why": t.error, "inputs": t.inputs, "last_progress": self.progress_of.get(t.id),
                "run_uids": [u for r in results if r.provenance for u in r.provenance.run_uids],
                "sample": sample.model_dump(mode="json") if sample else None,
            })
        return out

    def set_autonomy(self, level: str, actor: str, backend: str | None = None,
                     capability: str | None = None) -> None:
        """Change an autonomy level at run time (recorded in the audit log)."""
        from ppu.models import Autonomy

        new = Autonomy(level)
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

    def status(self) -> dict[str, Any]:
        now = self.clock()
        span = max(now - self.started_at, 1e-9)
        busy: dict[str, float] = {}
        for iv in self.busy_log:
            busy[iv["backend"]] = busy.get(iv["backend"], 0.0) + iv["end"] - max(iv["start"], self.started_at)
        for (name, _), start in self._busy_since.items():
            busy[name] = busy.get(name, 0.0) + now - start
        backends = self.sched.backends()
        for row in backends:
            row["utilisation"] = min(1.0, busy.get(row["name"], 0.0) / span / max(1, row["slots"]))
        return {"backends": backends, "queues": self.sched.queue_depths(), "counters": dict(self.counters),
                "tasks": self.store.count_tasks(), "uptime_s": span}


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
                self.orch.started(payload["task_id"], payload["attempt"])
            elif kind == "progress":
                self.orch.progress(payload["task_id"], payload["fraction"], payload["message"])
            elif kind == "result":
                r = Result.model_validate(payload)
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

    async def assign(self, backend: str, batch_id: str, runs: list[TaskRun]) -> None:
        self.hosts[backend].assign(batch_id, runs)

    async def abort(self, backend: str, task_id: str) -> None:
        await self.hosts[backend].abort(task_id)

    async def pause(self, backend: str, defer: bool = True) -> str:
        return await self.hosts[backend].backend.pause(defer)

    async def resume(self, backend: str) -> str:
        return await self.hosts[backend].backend.resume()
