"""Small builders for scheduler tests: no sockets, no clock."""

from __future__ import annotations

from typing import Any

from ppu.events import Assign, RegisterBackend, Step, Submit
from ppu.models import ActionClass, BackendSpec, Limit, Result, ResultStatus, Task
from ppu.scheduler import Scheduler, SchedulerConfig


def task(tid: str, cap: str = "echo", action: ActionClass = ActionClass.repeatable, **kw: Any) -> Task:
    return Task(id=tid, capability=cap, action=action, inputs=kw.pop("inputs", {"x": 1}), **kw)


def spec(name: str, caps: str | list[str] = "echo", *, slots: int = 1, batch: int = 1, wait: float = 0.0,
         fidelity: float = 1.0, duration: float = 1.0, cost: float = 0.0, kind: str = "digital",
         limits: dict[str, Limit] | None = None) -> BackendSpec:
    names = [caps] if isinstance(caps, str) else caps
    return BackendSpec(
        name=name, kind=kind,
        capabilities=[{"name": c, "fidelity": fidelity, "duration_s": duration, "cost": cost} for c in names],
        slots=slots, batch_size=batch, batch_wait_s=wait, safe_limits=limits or {})


def ok(tid: str, attempt: int = 1, **outputs: Any) -> Result:
    return Result(task_id=tid, attempt=attempt, status=ResultStatus.succeeded, outputs=outputs or {"y": 2})


def bad(tid: str, attempt: int = 1, retryable: bool = True, interrupted: bool = False) -> Result:
    return Result(task_id=tid, attempt=attempt, status=ResultStatus.failed, error="boom",
                  retryable=retryable, interrupted=interrupted)


def assigns(step: Step) -> list[Assign]:
    return [i for i in step.instructions if isinstance(i, Assign)]


def assigned_ids(step: Step) -> list[str]:
    return [tid for a in assigns(step) for tid, _ in a.tasks]


def sched(**cfg: Any) -> Scheduler:
    return Scheduler(SchedulerConfig(**cfg))


def register(s: Scheduler, *specs: BackendSpec, at: float = 0.0, liveness: float = 1e9) -> list[Step]:
    return [s.handle(RegisterBackend(sp, at, (), liveness)) for sp in specs]


def submit(s: Scheduler, *tasks: Task, at: float = 0.0) -> list[Step]:
    return [s.handle(Submit(t, at)) for t in tasks]
