"""The scheduler's compact records of live tasks and backends (:class:`~ppu.models.Task` and
:class:`~ppu.models.BackendSpec` are their boundary forms), and a task record's JSON as the store keeps it.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from ppu.models import BackendSpec, BackendState, Task

_ACCEPTING = (BackendState.online, BackendState.busy)
_std_dumps = functools.partial(json.dumps, separators=(",", ":"), allow_nan=False)


def _dumps(obj: Any) -> str:
    """Compact JSON of a record's fields (orjson, several times faster; what it cannot write, such as
    an integer beyond 64 bits, the standard library writes). Numbers here are finite: the task
    models refuse NaN and infinities at the door."""
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return _std_dumps(obj)


class TaskRecord:
    """The scheduler's compact record of a live task (about 300 bytes; Task is the boundary form)."""

    __slots__ = (
        "_static", "action", "approval", "attempts", "avoid", "backend", "batch_id", "block", "campaign",
        "cancel_requested", "capability", "deadline", "depends_on", "deps_left", "error", "id", "inputs",
        "max_attempts", "min_fidelity", "not_before", "pin", "priority", "qver", "ready_at", "sample_id", "seq",
        "state", "submitted_at", "submitted_by", "submitter_key",
    )

    def __init__(self, t: Task):
        self.id = t.id
        self.capability = t.capability
        self.inputs = t.inputs
        self.block = t.block
        self.action = t.action
        self.priority = t.priority
        self.campaign = t.campaign
        self.depends_on = tuple(t.depends_on)
        self.deadline = t.deadline
        self.pin = t.pin_backend
        self.min_fidelity = t.min_fidelity
        self.max_attempts = t.max_attempts
        self.sample_id = t.sample_id
        self.seq = t.seq
        self.state = t.state
        self.approval = t.approval
        self.attempts = t.attempts
        self.backend = t.backend
        self.submitted_at = t.submitted_at
        self.submitted_by = t.submitted_by
        self.submitter_key = t.submitter_key
        self.not_before = t.not_before
        self.avoid: tuple[str, ...] = tuple(t.avoid)
        self.cancel_requested = t.cancel_requested
        self.error = t.error
        self.batch_id = t.batch_id
        self.deps_left = 0
        self.qver = 0
        self.ready_at = 0.0
        self._static: str | None = None  # body_json's fields that never change, serialised once

    def key(self) -> tuple[int, float, int]:
        return (-self.priority, self.deadline if self.deadline is not None else math.inf, self.seq)

    def size(self) -> int:
        """Bytes of the task's record as journaled (its inputs, mostly): what it adds to an assignment."""
        if self._static is None:
            self.body_json()
        return len(self._static or "")

    def blob_size(self) -> int:
        """Bytes of a columnar task's rows (as stored): what it adds to an assignment's binary frames."""
        return 0 if self.block is None else self.block.bytes

    def body_json(self) -> str:
        """The task as the store keeps it: the JSON of :meth:`to_task`, without building the model
        (this runs for every change of every task; tests check both forms agree). The fields fixed
        at submission (inputs among them) are serialised once; only the changing ones each time."""
        static = self._static
        if static is None:
            static = self._static = _dumps({
                "id": self.id, "capability": self.capability, "inputs": self.inputs, "action": self.action.value,
                "priority": self.priority, "campaign": self.campaign, "depends_on": list(self.depends_on),
                "deadline": self.deadline, "pin_backend": self.pin, "min_fidelity": self.min_fidelity,
                "max_attempts": self.max_attempts, "sample_id": self.sample_id,
                "block": None if self.block is None else self.block.model_dump(mode="json"), "seq": self.seq,
                "submitted_at": self.submitted_at, "submitted_by": self.submitted_by,
                "submitter_key": self.submitter_key,
            })[:-1]
        return static + "," + _dumps({
            "state": self.state.value, "approval": self.approval.value, "attempts": self.attempts,
            "backend": self.backend, "not_before": self.not_before, "avoid": list(self.avoid),
            "cancel_requested": self.cancel_requested, "error": self.error, "batch_id": self.batch_id,
        })[1:]

    def to_task(self) -> Task:
        return Task.model_construct(
            id=self.id, capability=self.capability, inputs=self.inputs, block=self.block, action=self.action,
            priority=self.priority, campaign=self.campaign, depends_on=list(self.depends_on),
            deadline=self.deadline, pin_backend=self.pin, min_fidelity=self.min_fidelity,
            max_attempts=self.max_attempts, sample_id=self.sample_id, seq=self.seq, state=self.state,
            approval=self.approval, attempts=self.attempts, backend=self.backend,
            submitted_at=self.submitted_at, submitted_by=self.submitted_by, submitter_key=self.submitter_key,
            not_before=self.not_before, avoid=list(self.avoid),
            cancel_requested=self.cancel_requested, error=self.error, batch_id=self.batch_id,
        )


@dataclass(slots=True)
class BackendRecord:
    spec: BackendSpec
    state: BackendState
    alive_until: float
    liveness_s: float
    held: bool = False
    registered: bool = True
    used: int = 0  # slots in use (a batch uses one slot)
    backlog_s: float = 0.0  # expected seconds of work in flight
    batches: dict[str, list[str]] = field(default_factory=dict)  # batch id -> task ids
    offers: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # cap -> (fid, dur, cost)
    reg: str = ""  # the registration in force; assignments are numbered under it
    seq: int = 0  # the last assignment number given under ``reg``
    stamps: dict[str, tuple[int, float]] = field(default_factory=dict)  # batch id -> (number, sent at)
    unreachable: bool = False  # an assignment could not be sent: nothing new until it is heard from

    @property
    def name(self) -> str:
        return self.spec.name

    def accepting(self) -> bool:
        return self.registered and self.state in _ACCEPTING and not self.held and not self.unreachable

    def free(self) -> int:
        return self.spec.slots - self.used if self.accepting() else 0
