"""The MOF pack's physical backends: synthesis robot, XRD, UV-vis and gas sorption.

Each maps its capability to a plan from ``ppu.drivers.mof`` and reduces the run's documents with
``ppu.drivers.mof.analysis``. ``simulated: true`` builds the devices on the simulated lab
(:mod:`ppu.simulators.mof`), ``false`` on EPICS PVs under ``epics_prefix``; the plans, the
analysis and the results are the same either way.

Samples across processes: the simulated robot records every sample it makes (recipe and realised
properties) in the lab's sample register, ``<run_dir>/<lab>/samples.jsonl``; instruments of the
same lab, in this process or another, look samples up there (:mod:`ppu.simulators.mof.lab`).
Backends of one lab therefore need the same ``lab`` name, ``world`` and ``run_dir``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import bluesky.preprocessors as bpp
from bluesky.utils import Msg
from ophyd import Device
from pydantic import Field, model_validator

from ppu.backends.base import BackendConfig, TaskRun
from ppu.backends.documents import Document, DocumentSink
from ppu.backends.physical import PhysicalBackend, PhysicalConfig, PlanFactory, events, events_of
from ppu.drivers.mof import analysis
from ppu.drivers.mof.sorption import isotherm_pressures, measure_isotherm
from ppu.drivers.mof.synthesis import synthesize
from ppu.drivers.mof.transfer import transfer
from ppu.drivers.mof.uvvis import measure_uvvis
from ppu.drivers.mof.xrd import measure_xrd
from ppu.simulators.mof.devices import (
    TransferModel,
    gas_sorption_analyzer,
    sample_transfer,
    synthesis_robot,
    uvvis_spectrometer,
    xrd_diffractometer,
)
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


class MOFInstrumentConfig(PhysicalConfig):
    transfer_prefix: str | None = Field(None, description="PV prefix of the sample transfer (real mode); "
                                        "none: the sample is placed by hand")
    lab: str = Field("lab", min_length=1, description="simulated lab name; backends of one lab share samples")
    world: WorldConfig = Field(default_factory=WorldConfig, description="the simulated lab's hidden world")
    world_csv: str | None = Field(None, description="shortcut for world.csv_path: a world from a table")
    faults: FaultConfig = Field(default_factory=FaultConfig, description="faults to inject (simulated)")
    drift_per_hour: float = Field(0.0, ge=0, le=1, description="relative instrument drift per lab hour")

    @model_validator(mode="after")
    def _csv(self) -> MOFInstrumentConfig:
        if self.world_csv and not self.world.csv_path:
            self.world = self.world.model_copy(update={"csv_path": self.world_csv})
        return self

    def register_path(self) -> Path:
        return Path(self.run_dir) / self.lab / "samples.jsonl"


class MOFInstrument(PhysicalBackend):
    """An instrument of the simulated MOF lab (or its EPICS build): the lab, the models, the transfer."""

    Config: ClassVar[type[BackendConfig]] = MOFInstrumentConfig

    def __init__(self, config: BackendConfig, *, sink: DocumentSink | None = None):
        assert isinstance(config, MOFInstrumentConfig)
        self.mof = config
        self.lab: SimulatedLab | None = None
        if config.simulated:
            self.lab = SimulatedLab.shared(config.lab, config.world, registry_path=config.register_path(),
                                           seed=config.seed)
        super().__init__(config, sink=sink)

    def unknown_sample(self, sample_id: str) -> str | None:
        if self.lab is None:
            return None
        try:
            self.lab.sample(sample_id)
        except UnknownSampleError as exc:
            return str(exc)
        return None

    def model(self, cls: type[InstrumentModel], *, faults: bool = True) -> InstrumentModel:
        seed = int(seeded_rng(self.cfg.seed, self.cfg.name).integers(0, 2**31))
        return cls(seed=seed, time_scale=self.cfg.time_scale, faults=self.mof.faults if faults else None,
                   drift_per_hour=self.mof.drift_per_hour)

    def transfer_device(self) -> Device | None:
        if self.cfg.simulated:
            return sample_transfer("transfer", simulated=True, lab=self.lab,
                                   model=self.model(TransferModel, faults=False))  # type: ignore[arg-type]
        if self.mof.transfer_prefix is not None:
            return sample_transfer("transfer", simulated=False, prefix=self.mof.transfer_prefix)
        return None

    def device_prefix(self, key: str) -> str | None:
        return self.mof.transfer_prefix if key == "transfer" else super().device_prefix(key)

    def with_transfer(self, sample_id: str, dest: str, measure: Iterable[Msg], md: dict[str, Any]) -> Iterable[Msg]:
        """Rack -> instrument, measure, instrument -> rack (three runs) where there is a transfer."""
        dev = self.devices.get("transfer")
        if dev is None:
            return measure
        return bpp.pchain(transfer(dev, sample_id, dest, md), measure, transfer(dev, sample_id, "rack", md))


class SynthesisBackend(MOFInstrument):
    capability = "synthesize"
    fidelity = 1.0

    def build_devices(self) -> dict[str, Device]:
        return {"robot": synthesis_robot("robot", simulated=self.cfg.simulated, prefix=self.cfg.epics_prefix,
                                         lab=self.lab, model=self.model(SynthesisModel))}  # type: ignore[arg-type]

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        label = f"S-{run.task_id}" + (f"-{run.attempt}" if run.attempt > 1 else "")
        return lambda: synthesize(self.devices["robot"], inputs["recipe"], md,
                                  target_mass_mg=inputs["target_mass_mg"], sample_label=label)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        (ev,) = events(docs)
        sample_id = str(ev["robot_sample_id"])
        if not int(ev["robot_success"]):
            raise RuntimeError(f"synthesis gave no product (sample {sample_id} discarded); the recipe may not "
                               "be synthesisable")
        return {"sample_id": sample_id, "mass_mg": float(ev["robot_mass_mg"]),
                "location": {"device": self.name, "slot": str(ev["robot_slot"]) or None}}


class XRDBackend(MOFInstrument):
    capability = "characterize.xrd"
    fidelity = 0.95

    def build_devices(self) -> dict[str, Device]:
        devs = {"xrd": xrd_diffractometer("xrd", simulated=self.cfg.simulated, prefix=self.cfg.epics_prefix,
                                          lab=self.lab, model=self.model(XRDModel))}  # type: ignore[arg-type]
        t = self.transfer_device()
        return devs | ({"transfer": t} if t is not None else {})

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        sid = inputs["sample_id"]
        return lambda: self.with_transfer(sid, self.name, measure_xrd(
            self.devices["xrd"], sid, inputs["two_theta_start"], inputs["two_theta_stop"],
            inputs["two_theta_step"], md), md)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        (ev,) = events_of(docs, "measure_xrd")
        fit = analysis.identify_phases(ev["xrd_two_theta"], ev["xrd_intensity"])
        return {"phases": fit.phases, "purity": min(max(fit.purity, 0.0), 1.0), "main_phase": fit.main_phase}


class UVVisBackend(MOFInstrument):
    capability = "measure.band_gap"
    fidelity = 0.9

    def build_devices(self) -> dict[str, Device]:
        devs = {"uvvis": uvvis_spectrometer("uvvis", simulated=self.cfg.simulated, prefix=self.cfg.epics_prefix,
                                            lab=self.lab, model=self.model(UVVisModel))}  # type: ignore[arg-type]
        t = self.transfer_device()
        return devs | ({"transfer": t} if t is not None else {})

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        sid = inputs["sample_id"]
        return lambda: self.with_transfer(sid, self.name, measure_uvvis(
            self.devices["uvvis"], sid, inputs["wavelength_start_nm"], inputs["wavelength_stop_nm"], 1.0, md), md)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        (ev,) = events_of(docs, "measure_uvvis")
        gap, r2 = analysis.tauc_band_gap(ev["uvvis_wavelength"], ev["uvvis_absorbance"])
        return {"band_gap_ev": gap, "fit_r2": r2}


class GasSorptionBackend(MOFInstrument):
    capability = "measure.co2_uptake"
    fidelity = 1.0

    def build_devices(self) -> dict[str, Device]:
        devs = {"gas": gas_sorption_analyzer("gas", simulated=self.cfg.simulated, prefix=self.cfg.epics_prefix,
                                             lab=self.lab, model=self.model(IsothermModel))}  # type: ignore[arg-type]
        t = self.transfer_device()
        return devs | ({"transfer": t} if t is not None else {})

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        sid = inputs["sample_id"]
        pressures = isotherm_pressures(inputs["points"], max(1.0, inputs["pressure_bar"]))
        return lambda: self.with_transfer(sid, self.name, measure_isotherm(
            self.devices["gas"], sid, pressures, inputs["temperature_k"], md), md)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        evs = events_of(docs, "measure_isotherm")
        fit = analysis.fit_langmuir([e["gas_pressure"] for e in evs], [e["gas_uptake"] for e in evs])
        return {"uptake_mmol_g": max(fit.uptake(inputs["pressure_bar"]), 0.0), "model": "langmuir",
                "params": {"qmax_mmol_g": fit.qmax, "b_per_bar": fit.b, "r2": fit.r2}}
