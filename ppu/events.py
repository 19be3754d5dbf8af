"""Stimuli the scheduler accepts and instructions it returns (STYLE.md §2).

These never cross a process boundary: the wire forms are the pydantic messages of
``ppu.protocol``. They are frozen slotted dataclasses because the scheduler handles hundreds of
thousands of them and their fields are already validated models or plain values.
Every event carries ``at``: the scheduler never reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ppu.models import BackendSpec, BackendState, Result, Task, TaskState

# ---- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    task: Task
    at: float


RunKey = tuple[str, int]  # (task id, attempt): the identity of one attempt, end to end


@dataclass(frozen=True, slots=True)
class RegisterBackend:
    spec: BackendSpec
    at: float
    # task ids the worker still holds (None: a fresh worker that holds nothing)
    in_flight: tuple[str, ...] = ()
    liveness_s: float = 3.0
    # The worker process that registered is the one that held this backend before (same boot id):
    # an in-flight task it does not hold provably never reached it, so it goes back to its queue.
    same_worker: bool = False
    reg: str = ""  # the registration's id; assignments and inventories carry it


@dataclass(frozen=True, slots=True)
class Inventory:
    """What a worker holds for one backend, as of one heartbeat (Majordomo-style reconciliation).

    ``seq`` is the highest assignment number it had received under registration ``reg`` when it
    sent the heartbeat: assignments numbered above it were still on their way.
    """

    reg: str
    seq: int
    running: tuple[RunKey, ...] = ()
    unacked: tuple[RunKey, ...] = ()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    backend: str
    at: float
    inventory: Inventory | None = None


@dataclass(frozen=True, slots=True)
class Undelivered:
    """An assignment that provably never left the orchestrator (no connected worker, send refused)."""

    backend: str
    tasks: tuple[RunKey, ...]
    at: float
    why: str = "no connected worker"


@dataclass(frozen=True, slots=True)
class BackendLost:
    backend: str
    at: float
    reason: str = "worker lost"


@dataclass(frozen=True, slots=True)
class SetBackendState:
    backend: str
    state: BackendState
    at: float


@dataclass(frozen=True, slots=True)
class Hold:
    """Lab-wide stop (``held=True``) or resume of one backend: it takes nothing new while held."""

    backend: str
    held: bool
    at: float


@dataclass(frozen=True, slots=True)
class Started:
    task_id: str
    attempt: int
    at: float
    backend: str | None = None  # None: an in-process caller; a worker's start names its backend


@dataclass(frozen=True, slots=True)
class Finished:
    result: Result
    at: float
    backend: str | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    task_id: str
    at: float
    reason: str = "cancelled by request"


@dataclass(frozen=True, slots=True)
class Approve:
    task_id: str
    at: float
    actor: str = "unknown"


@dataclass(frozen=True, slots=True)
class Reject:
    task_id: str
    at: float
    actor: str = "unknown"
    reason: str = "rejected"


@dataclass(frozen=True, slots=True)
class Review:
    """A person's decision on a ``needs_review`` task."""

    task_id: str
    decision: Literal["retry", "fail", "result"]
    at: float
    actor: str = "unknown"
    reason: str = ""
    result: Result | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    at: float


Event = (
    Submit | RegisterBackend | Heartbeat | BackendLost | SetBackendState | Hold | Started | Finished
    | Cancel | Approve | Reject | Review | Tick | Undelivered
)

# ---- instructions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assign:
    """Run these tasks on ``backend`` as one batch (one task when the backend does not batch)."""

    backend: str
    batch_id: str
    tasks: tuple[tuple[str, int], ...]  # (task id, attempt)
    reg: str = ""  # the backend's registration it was made under
    seq: int = 0  # its number under that registration (the worker echoes the highest it got)


@dataclass(frozen=True, slots=True)
class Abort:
    backend: str
    task_id: str
    attempt: int = 0  # 0: whatever attempt the worker runs


@dataclass(frozen=True, slots=True)
class Forget:
    """The backend was declared lost: drop its connection and ask its worker to register again."""

    backend: str
    reason: str
    expired: bool = False  # True: lost long ago and holding nothing; drop it from every view


@dataclass(frozen=True, slots=True)
class Transition:
    task_id: str
    src: TaskState | None  # None: the task was just accepted
    dst: TaskState
    at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Dropped:
    """A result or start that no longer matches the task (duplicate, stale attempt)."""

    task_id: str
    attempt: int
    why: str


Instruction = Assign | Abort | Dropped | Forget


@dataclass(slots=True)
class Step:
    """What one event produced: instructions to carry out and transitions to journal first."""

    instructions: list[Instruction] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    results: list[Result] = field(default_factory=list)  # results accepted (to be recorded)
    records: dict[str, Any] = field(default_factory=dict)  # changed task id -> scheduler record

    def tasks(self) -> list[Task]:
        """Snapshots of every task this step changed, for the store."""
        return [rec.to_task() for rec in self.records.values()]
