"""The vocabulary of DESIGN.md, one pydantic model each. Every model rejects unknown fields.

These are the boundary forms (wire, store, config, API). The scheduler keeps a compact
internal record of a task for speed and converts at its edge (see ``ppu.scheduler``).
"""

from __future__ import annotations

import math
import os
import time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

# Bounds on strings and lists at the door (docs/protocol.md, Limits; ppu.protocol re-exports them).
MAX_NAME = 128  # capability, backend, worker and campaign names; task, sample and batch ids
MAX_ACTOR = 128  # a person's name in the audit log
MAX_TEXT = 4096  # reasons, notes, progress messages
MAX_IDS = 10_000  # ids in one list (depends_on of a task, task_ids of one wait)


class Strict(BaseModel):
    """Base for every PPU model: unknown fields are an error, assignment is validated, and a float
    field refuses NaN and +-Infinity (``allow_inf_nan=False``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def non_finite_path(value: Any) -> str | None:
    """The dotted path of the first NaN or +-Infinity inside nested dicts/lists ('' at the top), else None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return path
        elif isinstance(v, dict):
            stack.extend((f"{path}.{k}" if path else str(k), x) for k, x in v.items())
        elif isinstance(v, list | tuple):
            stack.extend((f"{path}.{i}" if path else str(i), x) for i, x in enumerate(v))
    return None


MAX_DEPTH = 32
"""Levels of objects and lists in free-form JSON (inputs, outputs): deeper is refused at the door, with
the path (the wire's encoders and decoders give up at 200-255 levels, with errors that name nothing)."""


def too_deep_path(value: Any) -> str | None:
    """The dotted path of the first object or list nested deeper than MAX_DEPTH levels, else None."""
    stack: list[tuple[str, Any, int]] = [("", value, 1)]
    while stack:
        path, v, depth = stack.pop()
        if isinstance(v, dict | list | tuple):
            if depth > MAX_DEPTH:
                return path
            items = v.items() if isinstance(v, dict) else enumerate(v)
            stack.extend((f"{path}.{k}" if path else str(k), x, depth + 1) for k, x in items)
    return None


def _all_finite(v: Any, depth: int = 1) -> bool:
    """The fast check (about a microsecond for a small dict), false also past MAX_DEPTH levels;
    :func:`non_finite_path` and :func:`too_deep_path` say where."""
    for x in v.values() if isinstance(v, dict) else v:
        t = type(x)
        if t is str or t is int or t is bool or x is None:
            continue
        if isinstance(x, float):
            if x - x != 0.0:  # NaN and +-inf give NaN
                return False
        elif isinstance(x, dict | list | tuple) and (depth >= MAX_DEPTH or not _all_finite(x, depth + 1)):
            return False
    return True


def _finite(value: Any) -> Any:
    if _all_finite(value):
        return value
    deep = too_deep_path(value)
    if deep is not None:
        where = deep if len(deep) <= 200 else "..." + deep[-200:]
        raise ValueError(f"{where} is nested deeper than {MAX_DEPTH} levels of objects and lists; flatten it")
    path = non_finite_path(value)
    if path is not None:
        where = path if len(path) <= 200 else "..." + path[-200:]
        raise ValueError(f"{where or 'the value'} is not a finite number "
                         "(NaN, Infinity and numbers beyond +-1.8e308 are refused)")
    return value


JsonDict = Annotated[dict[str, Any], AfterValidator(_finite)]
"""A free-form JSON object (task inputs, result outputs) whose numbers must all be finite."""
Name = Annotated[str, Field(max_length=MAX_NAME)]


def new_id(prefix: str = "t") -> str:
    """``prefix-``, 11 hex digits of the Unix time in milliseconds, then 13 from the OS's random source.

    Time first: ids made close together sort together, so every index keyed by them (the store's
    tasks, journal and results) takes inserts on its last few B-tree pages instead of on random
    ones; with random ids SQLite spent nearly twice the CPU per task once the journal held 10,000
    tasks (issue 17.4). The 52 random bits keep ids made in the same millisecond, by any number of
    clients or orchestrators, apart."""
    return f"{prefix}-{time.time_ns() // 1_000_000:011x}{os.urandom(7).hex()[:13]}"


class ActionClass(StrEnum):
    repeatable = "repeatable"  # digital: safe to run again
    once = "once"  # physical: consumes material or changes the world; never re-run silently


class TaskState(StrEnum):
    pending = "pending"  # waiting for dependencies, approval or a retry backoff
    ready = "ready"  # may be placed on a backend
    assigned = "assigned"  # sent to a backend, not yet confirmed started
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    needs_review = "needs_review"  # an interrupted `once` task: a person decides


TERMINAL_STATES = frozenset({TaskState.succeeded, TaskState.failed, TaskState.cancelled})


class ApprovalState(StrEnum):
    not_required = "not_required"
    waiting = "waiting"
    approved = "approved"
    rejected = "rejected"


class Autonomy(StrEnum):
    manual = "manual"  # every task waits for approval
    supervised = "supervised"  # approval above a cost threshold or for a process not yet run successfully
    autonomous = "autonomous"


class BackendKind(StrEnum):
    digital = "digital"
    physical = "physical"


class BackendState(StrEnum):
    online = "online"
    busy = "busy"
    offline = "offline"
    faulted = "faulted"
    maintenance = "maintenance"


class Limit(Strict):
    """A safe range for one setpoint, addressed by a dotted path into the task inputs."""

    min: float | None = None
    max: float | None = None
    unit: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> Limit:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def violation(self, value: float) -> str | None:
        if self.min is not None and value < self.min:
            return f"{value} {self.unit} is below the safe minimum {self.min} {self.unit}".replace("  ", " ")
        if self.max is not None and value > self.max:
            return f"{value} {self.unit} is above the safe maximum {self.max} {self.unit}".replace("  ", " ")
        return None


class CapabilityOffer(Strict):
    """What one backend says about one capability it offers."""

    name: str = Field(min_length=1, max_length=MAX_NAME)
    fidelity: float = Field(1.0, ge=0.0, le=1.0, description="0 = rough guess, 1 = ground truth")
    duration_s: float = Field(1.0, gt=0, description="expected duration of one task (or batch), lab time")
    cost: float = Field(0.0, ge=0, description="cost of one task in the lab's unit (e.g. EUR)")


class BackendSpec(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: BackendKind
    capabilities: list[CapabilityOffer] = Field(min_length=1)
    slots: int = Field(1, ge=1, le=10_000)
    batch_size: int = Field(1, ge=1, le=100_000)
    batch_wait_s: float = Field(0.01, ge=0, le=60, description="max wait to fill a batch")
    safe_limits: dict[str, Limit] = Field(default_factory=dict)
    site: str = Field("local", max_length=MAX_NAME)
    state: BackendState = BackendState.online
    columnar: bool = Field(False, description="runs columnar tasks (blocks of rows); the scheduler places blocks "
                           "only on such backends")

    @field_validator("capabilities")
    @classmethod
    def _unique(cls, v: list[CapabilityOffer]) -> list[CapabilityOffer]:
        names = [c.name for c in v]
        if len(names) != len(set(names)):
            raise ValueError(f"capability listed twice: {names}")
        return v

    def offer(self, capability: str) -> CapabilityOffer | None:
        for c in self.capabilities:
            if c.name == capability:
                return c
        return None


def lookup_path(data: Any, path: str) -> Any:
    """Read ``a.b.c`` out of nested dicts; None where the path does not exist."""
    cur = data
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def limit_violations(limits: dict[str, Limit], inputs: dict[str, Any]) -> list[str]:
    """Every setpoint in ``inputs`` outside ``limits``, as 'path: reason' lines."""
    out = []
    for path, lim in limits.items():
        value = lookup_path(inputs, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            why = lim.violation(float(value))
            if why:
                out.append(f"{path}: {why}")
    return out


MAX_BLOCK_ROWS = 100_000_000  # rows of one columnar block
MAX_BLOCK_COLUMNS = 1024


class Artifact(Strict):
    """A columnar block in the run's artifact store: an npz file named by its sha256.

    A task's ``block`` (its input rows) and a result's ``artifact`` (its output rows) are these.
    In a submitted TaskSpec only ``rows`` and ``columns`` are given: the orchestrator stores the
    columns that came with the submission and fills in ``sha256`` and ``bytes``."""

    rows: int = Field(ge=1, le=MAX_BLOCK_ROWS, description="rows (candidates) in the block")
    columns: list[Name] = Field(min_length=1, max_length=MAX_BLOCK_COLUMNS, description="column names, in order")
    sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$", description="sha256 of the npz file (set by the store)")
    bytes: int = Field(0, ge=0, description="size of the npz file")

    @field_validator("columns")
    @classmethod
    def _unique_columns(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("column names must be unique")
        return v


class TaskSpec(Strict):
    """What a client submits. The orchestrator validates it and turns it into a Task."""

    capability: str = Field(min_length=1, max_length=MAX_NAME, description="a known capability (ppu capabilities)")
    inputs: JsonDict = Field(default_factory=dict, description="validated by the capability's input model")
    id: str | None = Field(None, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9_.:\-]+$",
                           description="your own id (unique); default: one is made ('t-', the time, random)")
    priority: int = Field(0, ge=-1000, le=1000, description="higher goes first")
    campaign: str | None = Field(None, max_length=MAX_NAME, description="a label grouping tasks")
    depends_on: list[Name] = Field(default_factory=list, max_length=MAX_IDS,
                                   description="task ids that must succeed first")
    deadline: float | None = Field(None, description="epoch seconds; earlier deadlines go first")
    pin_backend: str | None = Field(None, max_length=MAX_NAME, description="run only on this backend")
    min_fidelity: float = Field(0.0, ge=0.0, le=1.0, description="only backends offering at least this fidelity")
    max_attempts: int = Field(3, ge=1, le=100, description="assignments before it fails (a `once` task: always 1)")
    sample_id: str | None = Field(None, max_length=MAX_NAME, description="the physical sample this task works on")
    block: Artifact | None = Field(None, description="a columnar task: its rows travel as binary frames "
                                   "(docs/protocol.md, Blocks); inputs then stay empty")


class Task(Strict):
    """A submitted task as the orchestrator keeps it (the reply to get_task, tasks and wait)."""

    id: str
    capability: str
    inputs: JsonDict = Field(default_factory=dict)
    action: ActionClass = Field(description="repeatable (digital) or once (physical: never re-run silently)")
    priority: int = 0
    campaign: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    deadline: float | None = Field(None, description="epoch seconds")
    pin_backend: str | None = None
    min_fidelity: float = 0.0
    max_attempts: int = 3
    sample_id: str | None = None
    block: Artifact | None = Field(None, description="a columnar task's input rows in the artifact store")
    seq: int = Field(0, description="submission order (FIFO among equal priority and deadline)")
    state: TaskState = TaskState.pending
    approval: ApprovalState = ApprovalState.not_required
    attempts: int = Field(0, description="assignments so far, each under its own number (one that never "
                        "reached a worker counts too)")
    backend: str | None = Field(None, description="the backend it is on, or last ran on")
    submitted_at: float = Field(default_factory=time.time, description="epoch seconds")
    submitted_by: str | None = Field(None, max_length=256, description="the actor who submitted it (audit form)")
    submitter_key: str | None = Field(None, max_length=64,
                                      description="CURVE public key (z85) that submitted it; None without CURVE")
    not_before: float | None = Field(None, description="epoch seconds: a retry waits for its backoff until then")
    avoid: list[str] = Field(default_factory=list, description="backends it will not be placed on again")
    cancel_requested: bool = Field(False, description="a cancel is on its way to the backend running it")
    error: str | None = Field(None, description="why it failed (last attempt)")
    batch_id: str | None = Field(None, description="the batch it was assigned in")


class SampleState(StrEnum):
    available = "available"
    consumed = "consumed"  # used up by a capability that declares uses_up_sample


class Location(Strict):
    device: str
    slot: str | None = None


class Sample(Strict):
    id: str
    made_by: str | None = Field(None, description="task id that made it")
    parents: list[str] = Field(default_factory=list, description="sample ids it was made from")
    made_with: JsonDict = Field(default_factory=dict,
                                description="the inputs its making capability declares for approval")
    campaign: str | None = None
    location: Location | None = None
    state: SampleState = SampleState.available
    measurements: list[str] = Field(default_factory=list, description="task ids that used or measured it")

    @model_validator(mode="before")
    @classmethod
    def _older_rows(cls, data: Any) -> Any:
        """Rows journalled before the packs split: the old name of ``made_with``, the never-set holder."""
        if isinstance(data, dict) and ("held_by" in data or _OLD_MADE_WITH in data):
            data = {k: v for k, v in data.items() if k != "held_by"}
            old = data.pop(_OLD_MADE_WITH, None)
            if old and not data.get("made_with"):
                data["made_with"] = {_OLD_MADE_WITH: old}
        return data


_OLD_MADE_WITH = "recipe"  # vocabulary-check: allowed (reads rows written before the packs split)


class ResultStatus(StrEnum):
    succeeded = "succeeded"
    failed = "failed"


class Provenance(Strict):
    backend: str
    kind: BackendKind
    model_name: str | None = None
    model_version: str | None = None
    weights_sha256: str | None = None
    device: str | None = None
    run_uids: list[str] = Field(default_factory=list, description="Bluesky run start uids")
    documents: str | None = Field(None, description="where the Bluesky documents are kept")
    entered_by: str | None = Field(None, description="person who entered a manual result")
    extra: JsonDict = Field(default_factory=dict)


class Result(Strict):
    task_id: str
    attempt: int = Field(description="the run attempt it reports (1, 2, ...); 0: entered by a person")
    status: ResultStatus
    outputs: JsonDict = Field(default_factory=dict)
    error: str | None = None
    retryable: bool = True
    interrupted: bool = Field(False, description="a physical run stopped part-way: a person must review")
    started_at: float | None = None
    finished_at: float | None = None
    provenance: Provenance | None = None
    artifact: Artifact | None = Field(None, description="a columnar task's output rows in the artifact store")
    # A columnar result's rows on their way from the backend to the artifact store: a slot, never
    # serialised or copied, and not a pydantic private attribute, whose set-up per instance cost
    # more than the rest of a Result's validation.
    __slots__ = ("_columns",)

    def with_columns(self, columns: dict[str, Any]) -> Result:
        self._columns = columns
        return self

    def columns(self) -> dict[str, Any] | None:
        return getattr(self, "_columns", None)

    @classmethod
    def succeeded_unchecked(cls, task_id: str, attempt: int, outputs: dict[str, Any], started_at: float,
                            finished_at: float, provenance: Provenance | None) -> Result:
        """A success whose parts the caller vouches for (a served model's decoded outputs): the same
        object as ``model_construct`` with every field given, without its per-field loop (a few
        microseconds per row of a forward batch)."""
        r = _new(cls)
        _set(r, "__dict__", {"task_id": task_id, "attempt": attempt, "status": ResultStatus.succeeded,
                             "outputs": outputs, "error": None, "retryable": True, "interrupted": False,
                             "started_at": started_at, "finished_at": finished_at, "provenance": provenance,
                             "artifact": None})
        _set(r, "__pydantic_fields_set__", set(_RESULT_FIELDS))
        _set(r, "__pydantic_extra__", None)
        _set(r, "__pydantic_private__", None)
        return r


_new = object.__new__
_set = object.__setattr__
_RESULT_FIELDS = frozenset(Result.model_fields)


class AuditEntry(Strict):
    at: float = Field(default_factory=time.time)
    actor: str
    action: str
    target: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
