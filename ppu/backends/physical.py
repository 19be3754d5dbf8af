"""Physical backends: a capability carried out as a Bluesky plan on Ophyd devices.

A pack subclasses :class:`PhysicalBackend` once per instrument type: ``build_devices`` (the
Ophyd devices, simulated twins or EPICS), ``plan`` (the Bluesky plan for one task) and ``reduce``
(the outputs, from the run's documents alone). The base hosts ONE RunEngine on its own thread
(see :mod:`ppu.backends.runengine` for where the loops live) and does everything else: checks,
progress, abort, pause, documents, results. Offers and safe limits default to what the
capability declares (duration, cost, limits), so they are written once.

Order of checks for one task, all before a plan is submitted (so nothing moves on a refusal):
capability offered, inputs valid, setpoints inside ``safe_limits``, sample known
(:meth:`PhysicalBackend.unknown_sample`). A refusal is a failed Result with ``retryable=False``.
A plan that is aborted or hits a device fault returns ``interrupted=True, retryable=False`` (the
orchestrator sends such ``once`` tasks to review).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from bluesky.utils import Msg
from ophyd import Device
from pydantic import Field

from ppu import capabilities
from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.backends.documents import Document, DocumentSink, JsonlSink, split_by_run
from ppu.backends.runengine import PlanOutcome, RunEngineHost
from ppu.errors import ValidationFailed
from ppu.models import BackendKind, CapabilityOffer, Limit, Result, limit_violations

PlanFactory = Callable[[], Iterable[Msg]]


class PhysicalConfig(BackendConfig):
    epics_prefix: str = Field("", description="PV prefix of the instrument (real mode), e.g. 'INST1:'")
    time_scale: float = Field(1000.0, gt=0, le=1e9, description="simulated lab time runs this many times faster")
    seed: int = Field(0, description="seeds the simulated instruments' noise and faults")
    run_dir: str = Field("runs/lab", description="folder for the documents (and a simulated lab's state)")
    documents_dir: str | None = Field(None, description="JSONL documents folder (default <run_dir>/documents)")


async def _report(progress: ProgressFn, task_id: str, fraction: float, message: str) -> None:
    out = progress(task_id, fraction, message)
    if inspect.isawaitable(out):
        await out


class _Refused(Exception):
    """A task refused before anything moved."""


class PhysicalBackend(Backend):
    kind = BackendKind.physical
    Config: ClassVar[type[BackendConfig]] = PhysicalConfig
    capability: ClassVar[str]
    fidelity: ClassVar[float] = 1.0

    def __init__(self, config: BackendConfig, *, sink: DocumentSink | None = None):
        super().__init__(config)
        assert isinstance(config, PhysicalConfig)
        self.cfg = config
        self.sink: DocumentSink = sink or JsonlSink(config.documents_dir or Path(config.run_dir) / "documents")
        self.host = RunEngineHost(config.name, md={"backend": config.name})
        self.devices = self.build_devices()

    # ---- per type -----------------------------------------------------------------------------

    def build_devices(self) -> dict[str, Device]:
        raise NotImplementedError

    def default_offers(self) -> list[CapabilityOffer]:
        cap = capabilities.get(self.capability)
        return [CapabilityOffer(name=cap.name, fidelity=self.fidelity, duration_s=cap.duration_s or 1.0,
                                cost=cap.cost or 0.0)]

    def default_limits(self) -> dict[str, Limit]:
        return dict(capabilities.get(self.capability).limits)

    def unknown_sample(self, sample_id: str) -> str | None:
        """Why this backend cannot work on ``sample_id`` (None: it can). A simulated lab checks its register."""
        return None

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        raise NotImplementedError

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        """Outputs from the documents alone (never from the simulated world)."""
        raise NotImplementedError

    # ---- the contract -------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.host.start)

    async def close(self) -> None:
        for dev in self.devices.values():
            if hasattr(dev, "_timers"):  # simulated: no acquisition may finish after the loop is gone
                dev.stop()
        await asyncio.to_thread(self.host.close)

    async def pause(self, defer: bool = False) -> str:
        return await asyncio.to_thread(self.host.request_pause, defer)

    async def resume(self) -> str:
        return await asyncio.to_thread(self.host.resume)

    async def abort(self, task_id: str) -> None:
        await asyncio.to_thread(self.host.abort, task_id, "aborted by the orchestrator")

    def check(self, run: TaskRun) -> dict[str, Any]:
        """Everything that can refuse a task before it moves anything; returns the normalised inputs."""
        if run.capability != self.capability:
            raise _Refused(f"backend {self.name} offers {self.capability}, not {run.capability}")
        try:
            inputs = capabilities.validate_inputs(run.capability, run.inputs)
        except ValidationFailed as exc:
            raise _Refused(str(exc)) from None
        bad = limit_violations(self.spec().safe_limits, inputs)
        if bad:
            raise _Refused(f"outside safe limits of {self.name}: {'; '.join(bad)} (nothing moved)")
        for sample_id in capabilities.get(run.capability).samples_used(inputs):
            why = self.unknown_sample(sample_id)
            if why:
                raise _Refused(why)
        return inputs

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        if not self.host.RE:
            await self.start()
        return [await self._run_one(r, progress) for r in batch]

    async def _run_one(self, run: TaskRun, progress: ProgressFn) -> Result:
        started = time.time()
        try:
            inputs = self.check(run)
        except _Refused as exc:
            return self.fail(run, str(exc), started, retryable=False)
        md = {"task_id": run.task_id, "attempt": run.attempt, "campaign": run.campaign, "backend": self.name,
              "capability": run.capability}
        plan = self.plan(run, inputs, md)
        await _report(progress, run.task_id, 0.0, f"submitted to the RunEngine of {self.name}")
        fut = self.host.submit(run.task_id, plan)
        try:
            outcome: PlanOutcome = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            await asyncio.to_thread(self.host.abort, run.task_id, "task cancelled")
            raise
        prov = self._keep_documents(run, outcome)
        if not outcome.ok:
            why = outcome.error or f"run ended with exit status {outcome.exit_status}"
            return self.fail(run, f"{self.capability} on {self.name} interrupted: {why}", started,
                             retryable=False, interrupted=True, **prov)
        try:
            outputs = capabilities.validate_outputs(run.capability, self.reduce(run, inputs, outcome.documents))
        except Exception as exc:  # the run completed; its data did not give an answer
            return self.fail(run, f"{self.capability} on {self.name}: {exc}", started, retryable=False, **prov)
        await _report(progress, run.task_id, 1.0, "done")
        return self.ok(run, outputs, started, **prov)

    def _keep_documents(self, run: TaskRun, outcome: PlanOutcome) -> dict[str, Any]:
        where = []
        for uid, docs in split_by_run(outcome.documents).items():
            if uid:
                where.append(self.sink.write(uid, run.task_id, docs))
        return {"run_uids": outcome.run_uids, "documents": ";".join(where) or None,
                "device": "simulated" if self.cfg.simulated else self.cfg.epics_prefix or None}


def events(docs: list[Document]) -> list[dict[str, Any]]:
    return [d["data"] for n, d in docs if n == "event"]


def events_of(docs: list[Document], plan_name: str) -> list[dict[str, Any]]:
    """Events of the runs a given plan opened (a composed plan has transfer runs too)."""
    runs = [d["uid"] for n, d in docs if n == "start" and d.get("plan_name") == plan_name]
    grouped = split_by_run(docs)
    return [d["data"] for uid in runs for n, d in grouped.get(uid, []) if n == "event"]


_events, _events_of = events, events_of  # the names packs written before the split use
