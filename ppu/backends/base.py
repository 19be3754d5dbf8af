"""The backend contract (STYLE.md §3): a small protocol that only does the verbs.

The orchestrator (the "frontend") validates, tracks, journals and retries; a backend receives a
batch of already-validated task runs and returns one :class:`~ppu.models.Result` per run, in
order. A failing item fails only its own task. Every real backend has a simulated twin under the
same type name, chosen by one switch (``simulated: true`` in its config).

Where loops live: ``run`` is a coroutine awaited on the worker's asyncio loop. A backend that
blocks (a torch forward pass, a Bluesky RunEngine) does that work on its own thread and awaits
it, so heartbeats and other backends on the same worker never stall.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from pydantic import Field

from ppu.models import (
    Artifact,
    BackendKind,
    BackendSpec,
    CapabilityOffer,
    Limit,
    Provenance,
    Result,
    ResultStatus,
    Strict,
)

ProgressFn = Callable[[str, float, str], Awaitable[None] | None]
"""progress(task_id, fraction 0..1, message)"""


class TaskRun(Strict):
    """One task as a backend sees it."""

    task_id: str
    attempt: int = Field(ge=1)
    capability: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    campaign: str | None = None
    sample_id: str | None = None
    block: Artifact | None = Field(None, description="a columnar task: its rows are in columns()")
    # The block's arrays, carried beside the message: a slot, not a pydantic private attribute (whose
    # set-up per instance took 1.1 of the 2.7 us a TaskRun cost to build).
    __slots__ = ("_columns",)

    def with_columns(self, columns: dict[str, Any]) -> TaskRun:
        self._columns = columns
        return self

    def columns(self) -> dict[str, Any]:
        """A columnar task's arrays (name -> 1-d numpy array of ``block.rows``)."""
        columns = getattr(self, "_columns", None)
        if self.block is None or columns is None:
            raise ValueError(f"task {self.task_id} carries no block of rows")
        return columns


class BackendConfig(Strict):
    """Fields every backend config has; a backend type subclasses this with its own fields."""

    type: str = Field(description="backend type name (see ppu.backends.registry) or 'module:Class'")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    slots: int = Field(1, ge=1, le=10_000)
    batch_size: int = Field(1, ge=1, le=100_000)
    batch_wait_s: float = Field(0.01, ge=0, le=60)
    site: str = "local"
    simulated: bool = Field(True, description="use the simulated twin instead of the real device/model")
    capabilities: list[CapabilityOffer] | None = Field(
        None, description="override the offers (fidelity, duration, cost) the type declares")
    safe_limits: dict[str, Limit] = Field(default_factory=dict)


class Backend(abc.ABC):
    kind: ClassVar[BackendKind]
    Config: ClassVar[type[BackendConfig]] = BackendConfig
    # Runs columnar tasks (``TaskRun.block``: rows as columns, answered with columns). Sent in its
    # registration (BackendSpec.columnar): the scheduler places blocks only on backends that run them, the
    # door refuses a block that no backend offering its capability runs, and a host handed one anyway (an
    # orchestrator of another version) fails the run, not retried (see ppu.host).
    columnar: ClassVar[bool] = False

    def __init__(self, config: BackendConfig):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abc.abstractmethod
    def default_offers(self) -> list[CapabilityOffer]:
        """What this backend type offers when the config does not override it."""

    def spec(self) -> BackendSpec:
        return BackendSpec(
            name=self.config.name, kind=self.kind,
            capabilities=self.config.capabilities or self.default_offers(),
            slots=self.config.slots, batch_size=self.config.batch_size, batch_wait_s=self.config.batch_wait_s,
            safe_limits=self.config.safe_limits or self.default_limits(), site=self.config.site,
            columnar=self.columnar,
        )

    def default_limits(self) -> dict[str, Limit]:
        return {}

    async def start(self) -> None:
        """Connect to the device or load the model; called once before the first run."""

    async def close(self) -> None:
        """Release devices, threads and memory."""

    @abc.abstractmethod
    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        """Execute a batch; one Result per run, same order. Must not raise for one bad item."""

    async def abort(self, task_id: str) -> None:
        """Stop a running task as soon as safely possible (the orchestrator also cancels the coroutine)."""

    async def pause(self, defer: bool = True) -> str:
        """Pause running work (lab-wide stop); ``defer``: at the next safe point (checkpoint).

        Returns the state the device was left in, in words a person can act on."""
        return "nothing to pause"

    async def resume(self) -> str:
        return "nothing to resume"

    def provenance(self, **kw: Any) -> Provenance:
        return Provenance(backend=self.name, kind=self.kind, **kw)

    def ok(self, run: TaskRun, outputs: dict[str, Any], started: float, **prov: Any) -> Result:
        return Result(task_id=run.task_id, attempt=run.attempt, status=ResultStatus.succeeded, outputs=outputs,
                      started_at=started, finished_at=time.time(), provenance=self.provenance(**prov))

    def fail(self, run: TaskRun, error: str, started: float, *, retryable: bool = True,
             interrupted: bool = False, **prov: Any) -> Result:
        return Result(task_id=run.task_id, attempt=run.attempt, status=ResultStatus.failed, error=error,
                      retryable=retryable, interrupted=interrupted, started_at=started,
                      finished_at=time.time(), provenance=self.provenance(**prov))
