"""Physical backends of the flow lab: ``react.flow`` and ``measure.hplc`` as Bluesky plans.

Shaped after ``ppu.backends.physical`` (one RunEngine per backend on its own thread, documents kept
as JSONL, outputs reduced from the documents alone), but built only on the core's generic parts
(``Backend``, ``RunEngineHost``, the document sinks), so this pack needs nothing from the MOF pack.
``simulated: true`` builds the devices' simulated builds on the shared :class:`FlowLab`; ``false``
builds the EPICS builds under ``epics_prefix``. Plans, analysis and results are the same either way.

Checks before a plan is submitted (nothing moves on a refusal): capability offered, inputs valid,
setpoints inside ``safe_limits``, vial known. A refusal is a failed result with
``retryable=False``; a device fault or an abort ends ``interrupted=True`` (the orchestrator sends
such ``once`` tasks to a person for review). A clogged coil is chemistry, not a fault: the run
completes, no vial is made, and the task fails without review.

This module joins drivers and simulators, so it lives on the simulators' side of the layering
(simulators depend on drivers, never the reverse).
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
from ppu.backends.documents import Document, DocumentSink, DocumentStream, JsonlSink, split_by_run
from ppu.backends.runengine import PlanOutcome, RunEngineHost
from ppu.drivers.flowchem.analysis import analyse_chromatogram
from ppu.drivers.flowchem.devices import flow_reactor, hplc
from ppu.drivers.flowchem.plans import measure_hplc, run_flow_reaction
from ppu.errors import ValidationFailed
from ppu.models import BackendKind, CapabilityOffer, Limit, Result, limit_violations
from ppu.simulators.flowchem.devices import HPLCSimulator, ReactorSimulator
from ppu.simulators.flowchem.instruments import FaultConfig, FlowReactorModel, HPLCModel, InstrumentModel, seeded_rng
from ppu.simulators.flowchem.lab import FlowLab, UnknownFractionError
from ppu.simulators.flowchem.world import FlowWorldConfig

REACT, HPLC_CAP = "react.flow", "measure.hplc"
PlanFactory = Callable[[], Iterable[Msg]]


class FlowInstrumentConfig(BackendConfig):
    epics_prefix: str = Field("", description="PV prefix of the instrument (real mode), e.g. 'FLOW1:'")
    time_scale: float = Field(1000.0, gt=0, le=1e9, description="simulated lab time runs this many times faster")
    seed: int = Field(0, description="seeds the simulated instruments' noise and faults")
    lab: str = Field("flow-lab", min_length=1, description="simulated lab name; backends of one lab share vials")
    world: FlowWorldConfig = Field(default_factory=FlowWorldConfig, description="the simulated lab's kinetic world")
    run_dir: str = Field("runs/flow-lab", description="folder for the fraction register and the documents")
    documents_dir: str | None = Field(None, description="JSONL documents folder (default <run_dir>/documents)")
    faults: FaultConfig = Field(default_factory=FaultConfig, description="faults to inject (simulated)")
    drift_per_hour: float = Field(0.0, ge=0, le=1, description="relative instrument drift per lab hour")

    def register_path(self) -> Path:
        return Path(self.run_dir) / self.lab / "fractions.jsonl"


class _Refused(Exception):
    """A task refused before anything moved."""


class FlowInstrumentBackend(Backend):
    kind = BackendKind.physical
    Config: ClassVar[type[BackendConfig]] = FlowInstrumentConfig
    capability: ClassVar[str]

    def __init__(self, config: BackendConfig, *, sink: DocumentSink | None = None):
        super().__init__(config)
        assert isinstance(config, FlowInstrumentConfig)
        self.cfg = config
        self.lab = (FlowLab.shared(config.lab, config.world, registry_path=config.register_path())
                    if config.simulated else None)
        self.sink: DocumentSink = sink or JsonlSink(config.documents_dir or Path(config.run_dir) / "documents")
        self.host = RunEngineHost(config.name, md={"backend": config.name})
        self.devices = self.build_devices()

    def build_devices(self) -> dict[str, Device]:
        raise NotImplementedError

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        raise NotImplementedError

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        """Outputs from the documents alone (never from the simulated world)."""
        raise NotImplementedError

    def model(self, cls: type[InstrumentModel]) -> Any:
        seed = int(seeded_rng(self.cfg.seed, self.cfg.name).integers(0, 2**31))
        return cls(seed=seed, time_scale=self.cfg.time_scale, faults=self.cfg.faults,
                   drift_per_hour=self.cfg.drift_per_hour)

    # ---- the contract -------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.host.start)

    async def close(self) -> None:
        for dev in self.devices.values():
            if getattr(dev, "simulated", False):  # no acquisition may finish after the loop is gone
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
        if capabilities.get(run.capability).needs_sample and self.lab is not None:
            try:
                self.lab.sample(str(inputs.get("sample_id")))
            except UnknownFractionError as exc:
                raise _Refused(str(exc)) from None
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
        note = progress(run.task_id, 0.0, f"submitted to the RunEngine of {self.name}")
        if inspect.isawaitable(note):
            await note
        stream = DocumentStream(self.sink, run.task_id)  # each document kept as it comes, not at the end
        fut = self.host.submit(run.task_id, self.plan(run, inputs, md), on_document=stream)
        try:
            outcome: PlanOutcome = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            await asyncio.to_thread(self.host.abort, run.task_id, "task cancelled")
            raise
        prov = self._provenance(outcome, stream)
        if not outcome.ok:
            why = outcome.error or f"run ended with exit status {outcome.exit_status}"
            return self.fail(run, f"{self.capability} on {self.name} interrupted: {why}", started,
                             retryable=False, interrupted=True, **prov)
        try:
            outputs = capabilities.validate_outputs(run.capability, self.reduce(run, inputs, outcome.documents))
        except Exception as exc:  # the run completed; its data did not give an answer
            return self.fail(run, f"{self.capability} on {self.name}: {exc}", started, retryable=False, **prov)
        note = progress(run.task_id, 1.0, "done")
        if inspect.isawaitable(note):
            await note
        return self.ok(run, outputs, started, **prov)

    def _provenance(self, outcome: PlanOutcome, stream: DocumentStream) -> dict[str, Any]:
        where = [stream.where[uid] for uid in outcome.run_uids if uid in stream.where]
        return {"run_uids": outcome.run_uids, "documents": ";".join(where) or None,
                "device": "simulated" if self.cfg.simulated else self.cfg.epics_prefix or None}


def _events(docs: list[Document], plan_name: str) -> list[dict[str, Any]]:
    runs = [d["uid"] for n, d in docs if n == "start" and d.get("plan_name") == plan_name]
    grouped = split_by_run(docs)
    return [d["data"] for uid in runs for n, d in grouped.get(uid, []) if n == "event"]


class FlowReactorBackend(FlowInstrumentBackend):
    """``react.flow``: run a recipe to steady state and collect a fraction (a new sample)."""

    capability = REACT

    def build_devices(self) -> dict[str, Device]:
        sim = ReactorSimulator(self.lab, self.model(FlowReactorModel)) if self.lab is not None else None
        return {"reactor": flow_reactor("reactor", prefix=self.cfg.epics_prefix, simulator=sim)}

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name=REACT, fidelity=1.0, duration_s=60 * (10 + 3 * 10 + 2), cost=15.0)]

    def default_limits(self) -> dict[str, Limit]:
        return {"recipe.temperature_c": Limit(min=20, max=180, unit="degC"),
                "recipe.residence_time_min": Limit(min=0.5, max=60, unit="min"),
                "recipe.equivalents_b": Limit(min=0.5, max=5, unit="eq"),
                "recipe.concentration_m": Limit(min=0.02, max=1.5, unit="mol/L"),
                "collect_volume_ml": Limit(min=0.5, max=20, unit="mL")}

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        label = f"F-{run.task_id}" + (f"-{run.attempt}" if run.attempt > 1 else "")
        return lambda: run_flow_reaction(self.devices["reactor"], inputs["recipe"], md,
                                         collect_volume_ml=inputs["collect_volume_ml"], sample_label=label)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        (ev,) = _events(docs, "run_flow_reaction")
        sample_id, pressure = str(ev["reactor_sample_id"]), float(ev["reactor_pressure_bar"])
        if not sample_id:
            raise RuntimeError(f"no fraction collected: back-pressure {pressure:.1f} bar (coil clogged, product "
                               "precipitated?); try a higher temperature or a lower concentration")
        return {"sample_id": sample_id, "volume_ml": float(ev["reactor_volume_ml"]), "pressure_bar": pressure,
                "location": {"device": self.name, "slot": str(ev["reactor_vial_slot"]) or None}}


class HPLCBackend(FlowInstrumentBackend):
    """``measure.hplc``: inject an aliquot of a fraction, analyse the chromatogram into yield and impurity."""

    capability = HPLC_CAP

    def build_devices(self) -> dict[str, Device]:
        sim = HPLCSimulator(self.lab, self.model(HPLCModel)) if self.lab is not None else None
        return {"hplc": hplc("hplc", prefix=self.cfg.epics_prefix, simulator=sim)}

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name=HPLC_CAP, fidelity=0.97, duration_s=60 * 10 + 120, cost=3.0)]

    def default_limits(self) -> dict[str, Limit]:
        return {"injection_ul": Limit(min=0.5, max=50, unit="uL"), "run_time_min": Limit(min=8, max=60, unit="min")}

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        return lambda: measure_hplc(self.devices["hplc"], inputs["sample_id"], inputs["run_time_min"],
                                    inputs["sample_rate_hz"], inputs["injection_ul"], md)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        (ev,) = _events(docs, "measure_hplc")
        return analyse_chromatogram(ev["hplc_time_min"], ev["hplc_absorbance"]).outputs()
