"""The live tasks and backends the scheduler keeps, the one way a task's state moves, and placement:
where ready tasks wait and which backend takes them.

Data layout, chosen for 1,000 backends x 100,000 queued tasks (see benchmarks/scheduler_scale.py):
- ready tasks sit in one heap per (capability, minimum fidelity) plus one heap per pinned backend,
  ordered by (-priority, deadline, submission seq): priorities first, then earliest deadline,
  then FIFO. Entries are removed lazily (a per-task queue version marks stale ones).
- ``_free[capability]`` holds the backends that could take work now, so a task arriving while
  everything is busy costs one heap push, and a freed slot costs a few heap peeks.
- live tasks are counted per capability and state, and the running, in-review and
  awaiting-approval ones listed, as they move: a status costs the same behind any backlog.
"""

from __future__ import annotations

import collections
import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ppu.errors import IllegalTransition, NotAllowed, UnknownBackendError, UnknownTaskError
from ppu.events import Assign, Step, Transition
from ppu.models import TERMINAL_STATES, BackendState, TaskState, limit_violations
from ppu.scheduler.records import BackendRecord, TaskRecord

S = TaskState
# The one table of legal moves. Terminal states have no way out.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    # pending/ready -> succeeded: a late result for the attempt that was being retried.
    S.pending: frozenset({S.ready, S.succeeded, S.failed, S.cancelled}),
    S.ready: frozenset({S.assigned, S.pending, S.succeeded, S.cancelled, S.failed}),
    S.assigned: frozenset({S.running, S.ready, S.pending, S.succeeded, S.failed, S.cancelled, S.needs_review}),
    S.running: frozenset({S.succeeded, S.failed, S.cancelled, S.needs_review, S.pending}),
    S.needs_review: frozenset({S.ready, S.succeeded, S.failed, S.cancelled}),
    S.succeeded: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
}
IN_FLIGHT = (S.assigned, S.running)
# The live-task lists and counts (Placement._index) are keyed by each state's plain string: an enum
# member hashes in Python (~0.25 us) and every transition of every task updates them.
RUNNING, REVIEW = S.running, S.needs_review
_ENDED = frozenset(s._value_ for s in TERMINAL_STATES)
_SKIP_LIMIT = 64  # heads a freed slot may pass over (pinned elsewhere, avoided, limits) per pull


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    restart_grace_s: float = 10.0  # how long a restarted scheduler waits for workers to come back
    forget_after_s: float = 60.0  # a lost backend holding nothing is forgotten this long after its loss
    tick_gap_s: float = 1.0  # ticks further apart than this mean the orchestrator itself stalled
    # A batch stops growing before its tasks' records pass max_batch_bytes, or its columnar tasks' rows
    # max_batch_blob_bytes: its assignment is one message. One task always goes, however large (the
    # door bounds each task). 0: no bound.
    max_batch_bytes: int = 0
    max_batch_blob_bytes: int = 0
    # Ended tasks whose end state is kept here (for dependencies and duplicate ids), the newest ones;
    # once older ones are let go (:attr:`Scheduler.forgot`), the shell asks its store about an id it
    # does not find (:meth:`Scheduler.recall`). Memory stays bounded however many tasks a lab runs.
    done_kept: int = 50_000


class Placement:
    """The scheduler's state and placement; :class:`~ppu.scheduler.Scheduler` turns events into its moves."""

    def __init__(self, config: SchedulerConfig | None = None):
        self.cfg = config or SchedulerConfig()
        self._tasks: dict[str, TaskRecord] = {}  # every non-terminal task
        # The newest done_kept ended tasks, oldest first: their end state. An OrderedDict: a dict whose
        # oldest key is deleted at every insert rescans the dead slots before it (quadratic in done_kept).
        self._done: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self.forgot = False  # an ended task was let go of (or not restored): unknown ids may be in the store
        self._dependents: dict[str, list[str]] = {}
        self._ready: dict[str, dict[float, list[tuple[tuple[int, float, int], int, str]]]] = {}
        self._pinned: dict[str, list[tuple[tuple[int, float, int], int, str]]] = {}
        self._delayed: list[tuple[float, str]] = []  # (not_before, task id)
        self._backends: dict[str, BackendRecord] = {}
        self._offered_by: dict[str, set[str]] = {}  # capability -> backend names
        self._free: dict[str, set[str]] = {}  # capability -> backends with a free slot now
        self._flush_at: dict[str, float] = {}  # batch backend -> when its partial batch must leave
        self._sample_holder: dict[str, str] = {}
        self._sample_waiters: dict[str, set[str]] = {}  # sample id -> ready tasks refused for it
        self._seq = 0
        self._batch_seq = 0
        self._step = Step()
        self._terminal: dict[str, TaskRecord] = {}  # tasks that ended during the current step
        # Live tasks counted and listed without a walk over all of them: a status, and the approvals and
        # reviews a dashboard asks for at every refresh, cost the same behind a backlog of 100,000 tasks.
        self._depths: dict[str, dict[str, int]] = {}  # capability -> state -> live tasks
        self._listed: dict[str, dict[str, None]] = {RUNNING._value_: {}, REVIEW._value_: {}}  # ordered sets
        self._awaiting: dict[str, None] = {}  # live tasks waiting for a person's approval
        self._now = 0.0
        self._last_tick = 0.0
        # Counts changes that may bring next_wake() earlier (a batch flush, a retry's backoff, a
        # registration's liveness): the shell re-arms its clock only when this moved.
        self.timers = 0

    # ---- moves: the one way a task's state changes ---------------------------------------

    def _move(self, t: TaskRecord, dst: TaskState, reason: str) -> None:
        if dst not in TRANSITIONS[t.state]:
            raise IllegalTransition(t.id, t.state.value, dst.value)
        self._record(t, t.state, dst, reason)
        t.state = dst
        if dst is S.ready:
            t.ready_at = self._now

    def _record(self, t: TaskRecord, src: TaskState | None, dst: TaskState, reason: str) -> None:
        self._step.transitions.append(Transition(t.id, src, dst, self._now, reason))
        self._step.changed.add(t.id)
        self._index(t, src, dst)

    def _index(self, t: TaskRecord, src: TaskState | None, dst: TaskState) -> None:
        """Keep the live tasks' counts and lists (see ``_depths``) as ``t`` moves from ``src`` to ``dst``."""
        depth = self._depths.get(t.capability)
        if depth is None:
            depth = self._depths[t.capability] = {}
        if src is not None:
            key = src._value_
            depth[key] -= 1
            if src is RUNNING or src is REVIEW:
                del self._listed[key][t.id]
        key = dst._value_
        if key in _ENDED:
            self._awaiting.pop(t.id, None)
            return
        depth[key] = depth.get(key, 0) + 1
        if dst is RUNNING or dst is REVIEW:
            self._listed[key][t.id] = None


    # ---- queues and placement --------------------------------------------------------------

    def _enqueue(self, t: TaskRecord) -> None:
        t.qver += 1
        entry = (t.key(), t.qver, t.id)
        if t.pin:
            heapq.heappush(self._pinned.setdefault(t.pin, []), entry)
        else:
            heapq.heappush(self._ready.setdefault(t.capability, {}).setdefault(t.min_fidelity, []), entry)

    def _valid(self, e: tuple[Any, int, str]) -> bool:
        t = self._tasks.get(e[2])
        return t is not None and t.state is S.ready and t.qver == e[1]

    def _stale_delayed(self, e: tuple[float, str]) -> bool:
        t = self._tasks.get(e[1])
        return t is None or t.state is not S.pending or t.not_before != e[0]

    def _peek(self, heap: list[tuple[Any, int, str]]) -> tuple[Any, int, str] | None:
        while heap and not self._valid(heap[0]):
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _best_head(self, heaps: Iterable[list[Any]]) -> tuple[tuple[Any, int, str], list[Any]] | None:
        """The entry that leaves first among ``heaps``' valid heads, and the heap it heads."""
        best: tuple[Any, int, str] | None = None
        best_heap: list[Any] = []
        for heap in heaps:
            head = self._peek(heap)
            if head is not None and (best is None or head < best):
                best, best_heap = head, heap
        return None if best is None else (best, best_heap)

    def _heaps_for(self, b: BackendRecord) -> list[list[tuple[Any, int, str]]]:
        heaps = []
        for cap, (fid, _, _) in b.offers.items():
            for minf, heap in self._ready.get(cap, {}).items():
                if minf <= fid and heap:
                    heaps.append(heap)
        pinned = self._pinned.get(b.name)
        if pinned:
            heaps.append(pinned)
        return heaps

    def _acceptable(self, b: BackendRecord, t: TaskRecord) -> bool:
        offer = b.offers.get(t.capability)
        if offer is None or offer[0] < t.min_fidelity or (t.pin and t.pin != b.name):
            return False
        if t.block is not None and not b.spec.columnar:  # a block waits for a backend that runs blocks
            return False
        if b.spec.safe_limits and limit_violations(b.spec.safe_limits, t.inputs):
            return False
        if t.sample_id and self._sample_holder.get(t.sample_id, t.id) != t.id:
            self._sample_waiters.setdefault(t.sample_id, set()).add(t.id)
            return False
        if b.name in t.avoid:
            # "on another backend where possible": only refuse while another candidate is up.
            others = self._offered_by.get(t.capability, set()) - {b.name} - set(t.avoid)
            if any(self._backends[o].accepting() for o in others):
                return False
        return True

    def _pull(self, b: BackendRecord) -> None:
        """Fill ``b``'s free slots with the best ready tasks it can take."""
        skipped: list[tuple[list[Any], tuple[Any, int, str]]] = []
        while b.free() > 0:
            found = self._best_head(self._heaps_for(b))
            if found is None:
                break
            best, best_heap = found
            t = self._tasks[best[2]]
            if not self._acceptable(b, t):
                skipped.append((best_heap, heapq.heappop(best_heap)))
                if len(skipped) >= _SKIP_LIMIT:
                    break
                continue
            if b.spec.batch_size > 1:
                if not self._pull_batch(b, t):
                    break
            else:
                heapq.heappop(best_heap)
                self._assign(b, [t])
        for heap, e in skipped:
            heapq.heappush(heap, e)

    def _pull_batch(self, b: BackendRecord, head: TaskRecord) -> bool:
        """Take up to batch_size ready tasks of head's capability; wait for more until the flush time."""
        cap = head.capability
        fid = b.offers[cap][0]
        heaps = [h for minf, h in self._ready.get(cap, {}).items() if minf <= fid]
        if b.name in self._pinned:
            heaps.append(self._pinned[b.name])
        if self._flush_at.get(b.name, 0.0) > self._now and sum(map(len, heaps)) < b.spec.batch_size:
            # A partial batch already waits for its flush time, and even every queued entry would not
            # fill it: nothing changes (without this, each task of a burst re-scanned the whole queue).
            return False
        taken: list[tuple[list[Any], tuple[Any, int, str]]] = []
        aside: list[tuple[list[Any], tuple[Any, int, str]]] = []
        budget, blob_budget = self.cfg.max_batch_bytes, self.cfg.max_batch_blob_bytes
        size = blobs = 0
        full = False
        while len(taken) < b.spec.batch_size and len(aside) < _SKIP_LIMIT:
            found = self._best_head(heaps)
            if found is None:
                break
            best, best_heap = found
            t = self._tasks[best[2]]
            if taken and t.capability == cap and ((budget and size + t.size() > budget)
                                                  or (blob_budget and blobs + t.blob_size() > blob_budget)):
                full = True  # as many bytes as one assignment carries: it leaves now, the task waits
                break
            heapq.heappop(best_heap)
            if t.capability == cap and self._acceptable(b, t):
                taken.append((best_heap, best))
                size += t.size() if budget else 0
                blobs += t.blob_size()
            else:
                aside.append((best_heap, best))
        for h, e in aside:
            heapq.heappush(h, e)
        if not taken:
            return False
        if len(taken) < b.spec.batch_size and not full:
            flush = min(self._tasks[e[2]].ready_at for _, e in taken) + b.spec.batch_wait_s
            if flush > self._now:
                for h, e in taken:
                    heapq.heappush(h, e)
                self._flush_at[b.name] = min(flush, self._flush_at.get(b.name, math.inf))
                self.timers += 1
                return False
        self._flush_at.pop(b.name, None)
        self._assign(b, [self._tasks[e[2]] for _, e in taken])
        return True

    def _assign(self, b: BackendRecord, tasks: list[TaskRecord]) -> None:
        self._batch_seq += 1
        batch_id = f"{b.name}#{self._batch_seq}" if len(tasks) > 1 else tasks[0].id
        for t in tasks:
            t.attempts += 1
            t.backend = b.name
            t.batch_id = batch_id if len(tasks) > 1 else None
            if t.sample_id:
                self._sample_holder[t.sample_id] = t.id
            self._move(t, S.assigned, f"on {b.name}")
        b.batches[batch_id] = [t.id for t in tasks]
        b.seq += 1
        b.stamps[batch_id] = (b.seq, self._now)
        b.used += 1
        b.backlog_s += self._duration(b, tasks[0].capability)
        self._refresh_free(b)
        self._step.instructions.append(Assign(b.name, batch_id, tuple((t.id, t.attempts) for t in tasks),
                                              b.reg, b.seq))

    def _place(self, t: TaskRecord) -> None:
        """A task just became ready: offer it to free backends, best by policy first."""
        free = self._free.get(t.capability)
        if not free:
            return
        cands = [self._backends[n] for n in free]
        if len(cands) > 1:
            cands.sort(key=lambda b: self._policy_key(b, t.capability))
        for b in cands:
            if t.state is not S.ready:
                return
            if self._acceptable(b, t):
                self._pull(b)

    def _policy_key(self, b: BackendRecord, cap: str) -> tuple[float, float, float, str]:
        """Default policy: earliest expected completion, then lower cost, then higher fidelity."""
        fid, dur, cost = b.offers[cap]
        return (b.backlog_s / b.spec.slots + dur, cost, -fid, b.name)

    def _retry_placement_for(self, caps: Iterable[str]) -> None:
        for cap in caps:
            for name in list(self._free.get(cap, ())):
                self._pull(self._backends[name])

    def _refresh_free(self, b: BackendRecord) -> None:
        has = b.free() > 0
        for cap in b.offers:
            s = self._free.setdefault(cap, set())
            if has:
                s.add(b.name)
            else:
                s.discard(b.name)
        if not has:
            self._flush_at.pop(b.name, None)

    def _unindex(self, b: BackendRecord) -> None:
        for cap in b.offers:
            self._free.get(cap, set()).discard(b.name)
            self._offered_by.get(cap, set()).discard(b.name)
        self._flush_at.pop(b.name, None)

    # ---- helpers ---------------------------------------------------------------------------

    def _key_of(self, tid: str) -> tuple[int, float, int]:
        t = self._tasks.get(tid)
        return t.key() if t is not None else (0, 0.0, 0)

    def _duration(self, b: BackendRecord, cap: str) -> float:
        o = b.offers.get(cap)
        return o[1] if o else 0.0

    def _effective_state(self, b: BackendRecord) -> BackendState:
        if b.state is BackendState.online and b.used >= b.spec.slots:
            return BackendState.busy
        return b.state

    def _backend(self, name: str) -> BackendRecord:
        b = self._backends.get(name)
        if b is None:
            raise UnknownBackendError(f"unknown backend {name!r}", hint="ppu status lists the backends")
        return b

    def _live(self, task_id: str) -> TaskRecord:
        t = self._tasks.get(task_id)
        if t is None:
            if task_id in self._done:
                raise NotAllowed(f"task {task_id} already ended ({self._done[task_id].value})")
            raise UnknownTaskError(f"unknown task {task_id!r}", hint="ppu tasks lists the tasks")
        return t
