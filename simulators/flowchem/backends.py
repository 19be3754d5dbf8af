"""Physical backends of the flow lab: ``react.flow`` and ``measure.hplc`` as Bluesky plans.

Subclasses of the core's :class:`ppu.backends.physical.PhysicalBackend` (one RunEngine per backend on
its own thread, checks, documents as JSONL or Tiled, abort, pause, suspenders, outputs reduced from the
documents alone): this pack brings only devices, plans and reductions, and nothing from the MOF pack.
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

from pathlib import Path
from typing import Any, ClassVar

from ophyd import Device
from pydantic import Field

from ppu.backends.base import BackendConfig, TaskRun
from ppu.backends.documents import Document, DocumentSink
from ppu.backends.physical import PhysicalBackend, PhysicalConfig, PlanFactory, events_of
from ppu.drivers.flowchem.analysis import analyse_chromatogram
from ppu.drivers.flowchem.devices import flow_reactor, hplc
from ppu.drivers.flowchem.plans import measure_hplc, run_flow_reaction
from ppu.models import CapabilityOffer, Limit
from ppu.simulators.flowchem.devices import HPLCSimulator, ReactorSimulator
from ppu.simulators.flowchem.instruments import FaultConfig, FlowReactorModel, HPLCModel, InstrumentModel, seeded_rng
from ppu.simulators.flowchem.lab import FlowLab, UnknownFractionError
from ppu.simulators.flowchem.world import FlowWorldConfig

REACT, HPLC_CAP = "react.flow", "measure.hplc"


class FlowInstrumentConfig(PhysicalConfig):
    run_dir: str = Field("runs/flow-lab", description="folder for the fraction register and the documents")
    lab: str = Field("flow-lab", min_length=1, description="simulated lab name; backends of one lab share vials")
    world: FlowWorldConfig = Field(default_factory=FlowWorldConfig, description="the simulated lab's kinetic world")
    faults: FaultConfig = Field(default_factory=FaultConfig, description="faults to inject (simulated)")
    drift_per_hour: float = Field(0.0, ge=0, le=1, description="relative instrument drift per lab hour")

    def register_path(self) -> Path:
        return Path(self.run_dir) / self.lab / "fractions.jsonl"


class FlowInstrumentBackend(PhysicalBackend):
    """The core's physical backend (RunEngine thread, checks, documents, abort, pause, suspenders)
    on the flow lab's devices: this pack writes only devices, plans and the reduction."""

    Config: ClassVar[type[BackendConfig]] = FlowInstrumentConfig

    def __init__(self, config: BackendConfig, *, sink: DocumentSink | None = None):
        assert isinstance(config, FlowInstrumentConfig)
        self.lab = (FlowLab.shared(config.lab, config.world, registry_path=config.register_path())
                    if config.simulated else None)
        super().__init__(config, sink=sink)
        self.cfg: FlowInstrumentConfig = config

    def model(self, cls: type[InstrumentModel]) -> Any:
        assert isinstance(self.cfg, FlowInstrumentConfig)
        seed = int(seeded_rng(self.cfg.seed, self.cfg.name).integers(0, 2**31))
        return cls(seed=seed, time_scale=self.cfg.time_scale, faults=self.cfg.faults,
                   drift_per_hour=self.cfg.drift_per_hour)

    def unknown_sample(self, sample_id: str) -> str | None:
        if self.lab is None:
            return None
        try:
            self.lab.sample(sample_id)
        except UnknownFractionError as exc:
            return str(exc)
        return None


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
        (ev,) = events_of(docs, "run_flow_reaction")
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
        (ev,) = events_of(docs, "measure_hplc")
        return analyse_chromatogram(ev["hplc_time_min"], ev["hplc_absorbance"]).outputs()
