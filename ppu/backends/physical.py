"""Physical backends: capabilities carried out as Bluesky plans on Ophyd devices.

One class per instrument type (``synthesis_robot``, ``xrd``, ``uvvis``, ``gas_sorption`` in the
registry); each hosts ONE RunEngine on its own thread (see :mod:`ppu.backends.runengine` for where
the loops live) and maps its capability to a plan from ``ppu.drivers``. ``simulated: true`` builds
the devices on the simulated lab (``ppu.simulators``), ``false`` on EPICS PVs under
``epics_prefix``; the plans, the analysis and the results are the same either way.

Order of checks for one task, all before a plan is submitted (so nothing moves on a refusal):
capability offered, inputs valid, setpoints inside ``safe_limits``, sample known. A refusal is a
failed Result with ``retryable=False``. A plan that is aborted or hits a device fault returns
``interrupted=True, retryable=False`` (the orchestrator sends such ``once`` tasks to review).

Samples across processes: the simulated robot records every sample it makes (recipe and realised
properties) in the lab's sample register, ``<run_dir>/<lab>/samples.jsonl``; instruments of the
same lab, in this process or another, look samples up there (``ppu.simulators.mof.lab``). Backends of
one lab therefore need the same ``lab`` name, ``world`` and ``run_dir``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import bluesky.preprocessors as bpp
from bluesky.utils import Msg
from ophyd import Device
from pydantic import Field, model_validator

from ppu import capabilities
from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.backends.documents import Document, DocumentSink, JsonlSink, split_by_run
from ppu.backends.runengine import PlanOutcome, RunEngineHost
from ppu.drivers.mof import analysis
from ppu.drivers.mof.sorption import gas_sorption_analyzer, isotherm_pressures, measure_isotherm
from ppu.drivers.mof.synthesis import synthesis_robot, synthesize
from ppu.drivers.mof.transfer import TransferModel, sample_transfer, transfer
from ppu.drivers.mof.uvvis import measure_uvvis, uvvis_spectrometer
from ppu.drivers.mof.xrd import measure_xrd, xrd_diffractometer
from ppu.errors import ValidationFailed
from ppu.models import BackendKind, CapabilityOffer, Limit, Result, limit_violations
from ppu.simulators.mof.instruments import (
    FaultConfig,
    InstrumentModel,
    IsothermModel,
    SynthesisModel,
    UVVisModel,
    XRDModel,
    seeded_rng,
)
from ppu.simulators.mof.lab import SimulatedLab, UnknownSampleError
from ppu.simulators.mof.world import WorldConfig

PlanFactory = Callable[[], Iterable[Msg]]


class PhysicalConfig(BackendConfig):
    epics_prefix: str = Field("", description="PV prefix of the instrument (real mode), e.g. 'XRD1:'")
    transfer_prefix: str | None = Field(None, description="PV prefix of the sample transfer (real mode); "
                                        "none: the sample is placed by hand")
    time_scale: float = Field(1000.0, gt=0, le=1e9, description="simulated lab time runs this many times faster")
    seed: int = Field(0, description="seeds the simulated instruments' noise and faults")
    lab: str = Field("lab", min_length=1, description="simulated lab name; backends of one lab share samples")
    world: WorldConfig = Field(default_factory=WorldConfig, description="the simulated lab's hidden world")
    world_csv: str | None = Field(None, description="shortcut for world.csv_path: a world from a table")
    run_dir: str = Field("runs/lab", description="folder for the sample register and the documents")
    documents_dir: str | None = Field(None, description="JSONL documents folder (default <run_dir>/documents)")
    faults: FaultConfig = Field(default_factory=FaultConfig, description="faults to inject (simulated)")
    drift_per_hour: float = Field(0.0, ge=0, le=1, description="relative instrument drift per lab hour")

    @model_validator(mode="after")
    def _csv(self) -> PhysicalConfig:
        if self.world_csv and not self.world.csv_path:
            self.world = self.world.model_copy(update={"csv_path": self.world_csv})
        return self

    def register_path(self) -> Path:
        return Path(self.run_dir) / self.lab / "samples.jsonl"


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

    def __init__(self, config: BackendConfig, *, sink: DocumentSink | None = None):
        super().__init__(config)
        assert isinstance(config, PhysicalConfig)
        self.cfg = config
        self.lab: SimulatedLab | None = None
        if config.simulated:
            self.lab = SimulatedLab.shared(config.lab, config.world, registry_path=config.register_path(),
                                           seed=config.seed)
        self.sink: DocumentSink = sink or JsonlSink(config.documents_dir or Path(config.run_dir) / "documents")
        self.host = RunEngineHost(config.name, md={"backend": config.name})
        self.devices = self.build_devices()

    # ---- per type -----------------------------------------------------------------------------

    def build_devices(self) -> dict[str, Device]:
        raise NotImplementedError

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        raise NotImplementedError

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        """Outputs from the documents alone (never from the simulated world)."""
        raise NotImplementedError

    def model(self, cls: type[InstrumentModel], *, faults: bool = True) -> InstrumentModel:
        seed = int(seeded_rng(self.cfg.seed, self.cfg.name).integers(0, 2**31))
        return cls(seed=seed, time_scale=self.cfg.time_scale, faults=self.cfg.faults if faults else None,
                   drift_per_hour=self.cfg.drift_per_hour)

    def transfer_device(self) -> Device | None:
        if self.cfg.simulated:
            return sample_transfer("transfer", simulated=True, lab=self.lab,
                                   model=self.model(TransferModel, faults=False))  # type: ignore[arg-type]
        if self.cfg.transfer_prefix is not None:
            return sample_transfer("transfer", simulated=False, prefix=self.cfg.transfer_prefix)
        return None

    def with_transfer(self, sample_id: str, dest: str, measure: Iterable[Msg], md: dict[str, Any]) -> Iterable[Msg]:
        """Rack -> instrument, measure, instrument -> rack (three runs) where there is a transfer."""
        dev = self.devices.get("transfer")
        if dev is None:
            return measure
        return bpp.pchain(transfer(dev, sample_id, dest, md), measure, transfer(dev, sample_id, "rack", md))

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
        sample_id = inputs.get("sample_id")
        if capabilities.get(run.capability).needs_sample and self.lab is not None:
            try:
                self.lab.sample(str(sample_id))
            except UnknownSampleError as exc:
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


def _events(docs: list[Document]) -> list[dict[str, Any]]:
    return [d["data"] for n, d in docs if n == "event"]


def _events_of(docs: list[Document], plan_name: str) -> list[dict[str, Any]]:
    """Events of the runs a given plan opened (a composed plan has transfer runs too)."""
    runs = [d["uid"] for n, d in docs if n == "start" and d.get("plan_name") == plan_name]
    grouped = split_by_run(docs)
    return [d["data"] for uid in runs for n, d in grouped.get(uid, []) if n == "event"]


class SynthesisBackend(PhysicalBackend):
    capability = "synthesize"

    def build_devices(self) -> dict[str, Device]:
        return {"robot": synthesis_robot("robot", simulated=self.cfg.simulated, prefix=self.cfg.epics_prefix,
                                         lab=self.lab, model=self.model(SynthesisModel))}  # type: ignore[arg-type]

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="synthesize", fidelity=1.0, duration_s=1800 + 4 * 3600, cost=50.0)]

    def default_limits(self) -> dict[str, Limit]:
        return {"recipe.anneal_temperature_c": Limit(min=20, max=800, unit="C"),
                "recipe.anneal_time_h": Limit(min=0, max=48, unit="h"),
                "target_mass_mg": Limit(min=1, max=500, unit="mg")}

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        label = f"S-{run.task_id}" + (f"-{run.attempt}" if run.attempt > 1 else "")
        return lambda: synthesize(self.devices["robot"], inputs["recipe"], md,
                                  target_mass_mg=inputs["target_mass_mg"], sample_label=label)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        (ev,) = _events(docs)
        sample_id = str(ev["robot_sample_id"])
        if not int(ev["robot_success"]):
            raise RuntimeError(f"synthesis gave no product (sample {sample_id} discarded); the recipe may not "
                               "be synthesisable")
        return {"sample_id": sample_id, "mass_mg": float(ev["robot_mass_mg"]),
                "location": {"device": self.name, "slot": str(ev["robot_slot"]) or None}}


class XRDBackend(PhysicalBackend):
    capability = "characterize.xrd"

    def build_devices(self) -> dict[str, Device]:
        devs = {"xrd": xrd_diffractometer("xrd", simulated=self.cfg.simulated, prefix=self.cfg.epics_prefix,
                                          lab=self.lab, model=self.model(XRDModel))}  # type: ignore[arg-type]
        t = self.transfer_device()
        return devs | ({"transfer": t} if t is not None else {})

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="characterize.xrd", fidelity=0.95, duration_s=60 + 0.5 * 1401, cost=10.0)]

    def default_limits(self) -> dict[str, Limit]:
        return {"two_theta_start": Limit(min=2, max=150, unit="deg"),
                "two_theta_stop": Limit(min=5, max=150, unit="deg")}

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        sid = inputs["sample_id"]
        return lambda: self.with_transfer(sid, self.name, measure_xrd(
            self.devices["xrd"], sid, inputs["two_theta_start"], inputs["two_theta_stop"],
            inputs["two_theta_step"], md), md)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        (ev,) = _events_of(docs, "measure_xrd")
        fit = analysis.identify_phases(ev["xrd_two_theta"], ev["xrd_intensity"])
        return {"phases": fit.phases, "purity": min(max(fit.purity, 0.0), 1.0), "main_phase": fit.main_phase}


class UVVisBackend(PhysicalBackend):
    capability = "measure.band_gap"

    def build_devices(self) -> dict[str, Device]:
        devs = {"uvvis": uvvis_spectrometer("uvvis", simulated=self.cfg.simulated, prefix=self.cfg.epics_prefix,
                                            lab=self.lab, model=self.model(UVVisModel))}  # type: ignore[arg-type]
        t = self.transfer_device()
        return devs | ({"transfer": t} if t is not None else {})

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="measure.band_gap", fidelity=0.9, duration_s=120.0, cost=2.0)]

    def default_limits(self) -> dict[str, Limit]:
        return {"wavelength_start_nm": Limit(min=190, max=1100, unit="nm"),
                "wavelength_stop_nm": Limit(min=190, max=1100, unit="nm")}

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        sid = inputs["sample_id"]
        return lambda: self.with_transfer(sid, self.name, measure_uvvis(
            self.devices["uvvis"], sid, inputs["wavelength_start_nm"], inputs["wavelength_stop_nm"], 1.0, md), md)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        (ev,) = _events_of(docs, "measure_uvvis")
        gap, r2 = analysis.tauc_band_gap(ev["uvvis_wavelength"], ev["uvvis_absorbance"])
        return {"band_gap_ev": gap, "fit_r2": r2}


class GasSorptionBackend(PhysicalBackend):
    capability = "measure.co2_uptake"

    def build_devices(self) -> dict[str, Device]:
        devs = {"gas": gas_sorption_analyzer("gas", simulated=self.cfg.simulated, prefix=self.cfg.epics_prefix,
                                             lab=self.lab, model=self.model(IsothermModel))}  # type: ignore[arg-type]
        t = self.transfer_device()
        return devs | ({"transfer": t} if t is not None else {})

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="measure.co2_uptake", fidelity=1.0, duration_s=1800 + 600 * 12, cost=20.0)]

    def default_limits(self) -> dict[str, Limit]:
        return {"pressure_bar": Limit(min=0.001, max=1.0, unit="bar"),
                "temperature_k": Limit(min=273, max=353, unit="K")}

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        sid = inputs["sample_id"]
        pressures = isotherm_pressures(inputs["points"], max(1.0, inputs["pressure_bar"]))
        return lambda: self.with_transfer(sid, self.name, measure_isotherm(
            self.devices["gas"], sid, pressures, inputs["temperature_k"], md), md)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        evs = _events_of(docs, "measure_isotherm")
        fit = analysis.fit_langmuir([e["gas_pressure"] for e in evs], [e["gas_uptake"] for e in evs])
        return {"uptake_mmol_g": max(fit.uptake(inputs["pressure_bar"]), 0.0), "model": "langmuir",
                "params": {"qmax_mmol_g": fit.qmax, "b_per_bar": fit.b, "r2": fit.r2}}
