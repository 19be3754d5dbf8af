"""What the lab looks like now, for people and clients: status, task listings, approvals, reviews,
samples. Read only: nothing here changes a task, a backend or the store.

A live task is read from the scheduler (the journal writes a repeatable task's start with its next
change, so the store may be one step behind), an ended one from the store.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import TYPE_CHECKING, Any

from ppu.errors import ValidationFailed
from ppu.models import TERMINAL_STATES, ActionClass, ApprovalState, Sample, Task, TaskState

if TYPE_CHECKING:
    from ppu.orchestrator.orchestrator import Orchestrator

MAX_RUNNING_SHOWN = 200  # running tasks listed by status (a lab runs far fewer; a digital flood is counted, not listed)


class ReadView:
    def __init__(self, orch: Orchestrator):
        self._orch = orch

    def get_task(self, task_id: str) -> Task | None:
        sched = self._orch.sched
        state = sched.state_of(task_id)
        if state is not None and state not in TERMINAL_STATES:
            return sched.task(task_id)
        return self._orch.store.get_task(task_id)

    def task_rows(self, state: TaskState | None, campaign: str | None, capability: str | None, limit: int,
                  offset: int = 0, before: tuple[int, str] | None = None) -> tuple[list[tuple[int, str, str]], bool]:
        """(seq, id, the Task's JSON) of the newest ``limit`` tasks in ``state`` as they are now, newest
        first, and whether more follow.

        The journal writes a repeatable task's start with its next change (often its result: one
        commit fewer per task), so the store may still hold a running task as ``assigned``: such a row
        is listed with the scheduler's record, ``running`` looks among the stored ``assigned`` rows too,
        and ``assigned`` leaves those out. Every other state is the store's own, and current."""
        sched, store = self._orch.sched, self._orch.store
        running, assigned = TaskState.running, TaskState.assigned
        stored: tuple[str, ...] | str | None = (running.value, assigned.value) if state is running else \
            state.value if state is not None else None
        rows: list[tuple[int, str, str]] = []
        while True:  # rows may be left out: read on until the page is full or the store has no more
            want = limit + 1 - len(rows)
            found = store.list_task_rows(stored, campaign, capability, want, offset, before)
            offset = 0
            for seq, tid, was, body in found:
                now = was
                if was == assigned.value and sched.state_of(tid) is running:
                    now, body = running.value, sched.task(tid).model_dump_json()
                if state is None or now == state.value:
                    rows.append((seq, tid, body))
            if len(found) < want or len(rows) > limit:
                break
            before = (found[-1][0], found[-1][1])
        return rows[:limit], len(rows) > limit

    def approvals(self, after_seq: int = -1) -> list[dict[str, Any]]:
        """Tasks waiting for a person's approval: why, and what they would do; in submission order
        (``seq``), those after ``after_seq``."""
        o = self._orch
        waiting = sorted(o.sched.live_tasks(approval=ApprovalState.waiting, after_seq=after_seq), key=lambda t: t.seq)
        out = []
        for t in waiting:
            offers = [(n, of) for n, s in o.specs.items() if (of := s.offer(t.capability))]
            out.append({
                "task_id": t.id, "seq": t.seq, "capability": t.capability, "campaign": t.campaign, "inputs": t.inputs,
                "reason": o.approval_why.get(t.id, ""), "backends": [n for n, _ in offers],
                "expected_duration_s": min((of.duration_s for _, of in offers), default=None),
                "expected_cost": min((of.cost for _, of in offers), default=None),
            })
        return out

    def reviews(self, after_seq: int = -1) -> list[dict[str, Any]]:
        """Interrupted physical tasks waiting for a person, with what is known about them; in
        submission order (``seq``), those after ``after_seq``."""
        o = self._orch
        out = []
        for t in sorted(o.sched.live_tasks(state=TaskState.needs_review, after_seq=after_seq), key=lambda t: t.seq):
            sample = o.store.get_sample(t.sample_id) if t.sample_id else None
            results = o.store.results_for(t.id)
            out.append({
                "task_id": t.id, "seq": t.seq, "capability": t.capability, "backend": t.backend, "attempts": t.attempts,
                "why": t.error, "inputs": t.inputs, "last_progress": o.progress_of.get(t.id),
                "run_uids": [u for r in results if r.provenance for u in r.provenance.run_uids],
                "results": [{"attempt": r.attempt, "status": r.status.value, "outputs": r.outputs,
                             "error": r.error} for r in results],
                "sample": sample.model_dump(mode="json") if sample else None,
            })
        return out

    def sample_detail(self, sample_id: str) -> dict[str, Any]:
        """A sample's lineage: what made it and with which inputs, every task that used it, where it is."""
        s = self.sample_record(sample_id)
        return {"sample": s.model_dump(mode="json"), "made_by": self.sample_task(s.made_by),
                "measurements": [self.sample_task(tid) for tid in s.measurements]}

    def sample_record(self, sample_id: str) -> Sample:
        s = self._orch.store.get_sample(sample_id)
        if s is None:
            raise ValidationFailed(f"unknown sample {sample_id!r}", field="sample_id",
                                   hint="ppu samples lists the known samples")
        return s

    def sample_task(self, tid: str | None) -> dict[str, Any] | None:
        """A task that made or used a sample, with its outputs (one entry of :meth:`sample_detail`)."""
        if tid is None:
            return None
        t = self.get_task(tid)
        r = self._orch.store.final_result(tid)
        return {"task_id": tid, "capability": t.capability if t else None, "state": t.state.value if t else None,
                "outputs": r.outputs if r else None,
                "entered_by": r.provenance.entered_by if r and r.provenance else None}

    def status(self) -> dict[str, Any]:
        o = self._orch
        now = o.clock()
        span = max(now - o.started_at, 1e-9)
        busy = o.busy.seconds(now)
        backends = o.sched.backends()
        for row in backends:
            row["utilisation"] = min(1.0, busy.get(row["name"], 0.0) / span / max(1, row["slots"]))
        # Running tasks: all counted by backend and capability; listed up to MAX_RUNNING_SHOWN, those a
        # person looks for first (on a stopped backend, reporting progress, physical; then the oldest).
        groups: Counter[tuple[str, str]] = Counter()
        running = []
        for tid, cap, backend, action, seq in o.sched.running():
            groups[(backend or "", cap)] += 1
            held = bool(backend and o.controls.holds.get(backend))
            progress = o.progress_of.get(tid)
            key = (not held, not (progress or {}).get("message"), action is not ActionClass.once, seq)
            running.append((key, {"task_id": tid, "capability": cap, "backend": backend, "held": held,
                                  "progress": progress}))
        shown = [row for _, row in heapq.nsmallest(MAX_RUNNING_SHOWN, running, key=lambda kv: kv[0])]
        return {"backends": backends, "queues": o.sched.queue_depths(), "counters": dict(o.counters),
                "tasks": {state: n for state, n in o.tasks_by_state.items() if n}, "uptime_s": span, "running": shown,
                "running_groups": [{"backend": b, "capability": c, "running": n}
                                   for (b, c), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))]}
