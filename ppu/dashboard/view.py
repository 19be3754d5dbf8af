"""What the page shows, computed from what the client returns: no IO here (STYLE.md §2).

:class:`LabView` keeps the little the dashboard learns from the event stream (open busy intervals,
recent transitions, failures per backend) and turns one :class:`Raw` gathering of client answers
into the JSON snapshot the browser renders.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from ppu import capabilities
from ppu.models import Result, Sample, Task

LIVE = ("pending", "ready", "assigned", "running", "needs_review")
RUNNING = ("assigned", "running")
FAULTY = ("faulted", "offline", "maintenance")
WAITING = ("suspended", "paused")  # how a physical plan's progress message begins while it waits (ppu status too)


@dataclass
class Raw:
    """One round of client answers."""

    now: float
    status: dict[str, Any]
    live: list[Task]
    approvals: list[dict[str, Any]]
    reviews: list[dict[str, Any]]
    busy: list[dict[str, Any]]
    samples: list[Sample]
    measured: list[tuple[Task, Result]] = field(default_factory=list)
    progress: dict[str, float] = field(default_factory=dict)


def _short(capability: str | None, inputs: dict[str, Any], n: int = 60) -> str:
    """A one-line summary of task inputs for a table cell: the fields the capability declares first."""
    cap = capabilities.known().get(capability or "")
    return cap.summarise(inputs, n) if cap is not None else capabilities.flat_summary(inputs, n)


def _covered(intervals: list[list[Any]], t0: float, t1: float) -> float:
    """Seconds of [t0, t1] covered by at least one interval (slots running together count once)."""
    total, end = 0.0, t0
    for s, e, _ in sorted(intervals):
        s, e = max(s, end), min(e, t1)
        if e > s:
            total += e - s
            end = e
    return total


class LabView:
    def __init__(self, objectives: dict[str, str], maximize: bool = True, window_s: float = 600.0,
                 keep_events: int = 40):
        self.objectives = objectives
        self.maximize = maximize
        self.window_s = window_s
        self.open: dict[tuple[str, str], float] = {}  # (backend, task) -> since, from the event stream
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_events)
        self.failures: collections.Counter[str] = collections.Counter()
        self.progress: dict[str, float] = {}
        self.closed: collections.deque[tuple[str, float, float]] = collections.deque(maxlen=20_000)
        self.watching_since: float | None = None  # first event seen: before it, the busy log is the history

    # ---- the event stream -------------------------------------------------------------------

    def apply_event(self, ev: dict[str, Any]) -> None:
        if ev.get("type") == "progress":
            self.progress[str(ev.get("task_id"))] = float(ev.get("fraction") or 0.0)
            return
        if ev.get("type") != "transition":
            return
        tid, backend, at = str(ev.get("task_id")), ev.get("backend"), float(ev.get("at") or 0.0)
        if self.watching_since is None:
            self.watching_since = at
        if backend and ev.get("dst") in RUNNING and (backend, tid) not in self.open:
            self.open[(backend, tid)] = at
        if ev.get("dst") not in RUNNING:
            for key in [k for k in self.open if k[1] == tid]:
                self.closed.append((key[0], self.open.pop(key), at))
            self.progress.pop(tid, None)
        if ev.get("dst") == "failed" and backend:
            self.failures[backend] += 1
        self.events.appendleft({k: ev.get(k) for k in ("task_id", "src", "dst", "at", "backend",
                                                          "capability", "campaign", "reason")})

    # ---- the snapshot -----------------------------------------------------------------------

    def snapshot(self, raw: Raw) -> dict[str, Any]:
        now = raw.now
        running = [t for t in raw.live if t.state.value in RUNNING]
        # what is on a backend now but was never seen starting (it began before we subscribed)
        for t in running:
            if t.backend and (t.backend, t.id) not in self.open:
                self.open[(t.backend, t.id)] = now
        live_ids = {(t.backend, t.id) for t in running}
        for key in [k for k, since in self.open.items() if k not in live_ids and since <= now]:
            self.closed.append((key[0], self.open.pop(key), now))  # its end event was missed
        gantt = self._gantt(raw)
        return {
            "now": now,
            "backends": self._backends(raw, running, gantt["share"]),
            "gantt": gantt,
            "queues": self._queues(raw),
            "approvals": [{**a, "inputs_short": _short(a.get("capability"), a.get("inputs") or {}),
                           "waiting_s": self._waited(raw, a["task_id"])} for a in raw.approvals],
            "reviews": [{**r, "inputs_short": _short(r.get("capability"), r.get("inputs") or {})} for r in raw.reviews],
            "campaigns": self._campaigns(raw),
            "events": list(self.events),
            "counters": raw.status.get("counters", {}),
            "tasks": raw.status.get("tasks", {}),
            "uptime_s": raw.status.get("uptime_s", 0.0),
            "workers": raw.status.get("workers"),
        }

    def _waited(self, raw: Raw, task_id: str) -> float | None:
        for t in raw.live:
            if t.id == task_id:
                return max(0.0, raw.now - t.submitted_at)
        return None

    def _backends(self, raw: Raw, running: list[Task], share: dict[str, float]) -> list[dict[str, Any]]:
        out = []
        said = {r["task_id"]: str((r.get("progress") or {}).get("message") or "")
                for r in raw.status.get("running", [])}
        for b in raw.status.get("backends", []):
            current = [{"task_id": t.id, "capability": t.capability, "state": t.state.value,
                        "campaign": t.campaign, "inputs_short": _short(t.capability, t.inputs),
                        "progress": raw.progress.get(t.id, self.progress.get(t.id)),
                        "waiting": said[t.id] if said.get(t.id, "").startswith(WAITING) else None}
                       for t in running if t.backend == b["name"]]
            fault = b["state"] if b["state"] in FAULTY else ("held" if b.get("held") else None)
            out.append({**b, "current": current, "fault": fault, "failures": self.failures.get(b["name"], 0),
                        "busy_share": share.get(b["name"], 0.0)})
        return out

    def _gantt(self, raw: Raw) -> dict[str, Any]:
        t0 = raw.now - self.window_s
        rows: dict[str, list[list[Any]]] = {b["name"]: [] for b in raw.status.get("backends", [])}
        first = raw.now
        seen_from = self.watching_since if self.watching_since is not None else raw.now
        spans = [(iv["backend"], iv["start"], iv["end"]) for iv in raw.busy if iv["end"] < seen_from]
        spans += list(self.closed)
        for backend, start, end in spans:
            if end >= t0:
                rows.setdefault(backend, []).append([max(start, t0), end, "done"])
                first = min(first, start)
        for (backend, _), since in self.open.items():
            rows.setdefault(backend, []).append([max(since, t0), raw.now, "busy"])
            first = min(first, since)
        # zoom to the history there is, so a young lab does not draw one thin sliver
        start = max(t0, min(first, raw.now - 30.0))
        share = {name: _covered(iv, start, raw.now) / max(raw.now - start, 1e-9) for name, iv in rows.items()}
        return {"t0": start, "t1": raw.now, "rows": rows, "share": share}

    def _queues(self, raw: Raw) -> list[dict[str, Any]]:
        by_cap: dict[str, dict[str, Any]] = {}
        for t in raw.live:
            q = by_cap.setdefault(t.capability, {"capability": t.capability, "ready": 0, "pending": 0,
                                                 "approval": 0, "running": 0, "review": 0, "waits": []})
            if t.state.value in RUNNING:
                q["running"] += 1
            elif t.state.value == "needs_review":
                q["review"] += 1
            else:
                wait = max(0.0, raw.now - t.submitted_at)
                q["waits"].append(wait)
                q["approval" if t.approval.value == "waiting" else t.state.value] += 1
        out = []
        for q in sorted(by_cap.values(), key=lambda q: q["capability"]):
            waits = q.pop("waits")
            q["waiting"] = len(waits)
            q["oldest_wait_s"] = max(waits, default=None)
            q["mean_wait_s"] = sum(waits) / len(waits) if waits else None
            out.append(q)
        return out

    def _campaigns(self, raw: Raw) -> list[dict[str, Any]]:
        names: dict[str, None] = {}
        for t in raw.live:
            if t.campaign:
                names.setdefault(t.campaign)
        for t, _ in raw.measured:
            if t.campaign:
                names.setdefault(t.campaign)
        for s in raw.samples:
            if s.campaign:
                names.setdefault(s.campaign)
        out = []
        for name in names:
            points: list[dict[str, Any]] = []
            for t, r in sorted(((t, r) for t, r in raw.measured if t.campaign == name),
                               key=lambda tr: tr[1].finished_at or 0.0):
                key = self.objectives.get(t.capability)
                value = r.outputs.get(key) if key else None
                if isinstance(value, int | float):
                    points.append({"task_id": t.id, "value": float(value), "at": r.finished_at,
                                   "label": _short(t.capability, t.inputs, 40), "sample_id": t.sample_id})
            best: float | None = None
            for pt in points:
                if best is None or (pt["value"] > best if self.maximize else pt["value"] < best):
                    best = pt["value"]
                pt["best"] = best
            in_flight = [{"task_id": t.id, "capability": t.capability, "state": t.state.value,
                          "backend": t.backend, "waiting_approval": t.approval.value == "waiting",
                          "inputs_short": _short(t.capability, t.inputs), "sample_id": t.sample_id}
                         for t in raw.live if t.campaign == name]
            samples = [{"id": s.id, "state": s.state.value, "device": s.location.device if s.location else None,
                        "slot": s.location.slot if s.location else None, "made_by": s.made_by,
                        "measurements": len(s.measurements), "made_with": _short(None, s.made_with, 40)}
                       for s in raw.samples if s.campaign == name]
            # The objectives this campaign measured (a lab's packs may declare several).
            ran = {t.capability for t, _ in raw.measured if t.campaign == name} & set(self.objectives)
            objective = sorted(f"{c}.{self.objectives[c]}" for c in (ran or self.objectives))
            out.append({"name": name, "objective": ", ".join(objective), "maximize": self.maximize,
                        "points": points, "best": best, "in_flight": in_flight, "samples": samples[-60:]})
        return out
