"""Synthesis robot: weighs, mixes and anneals a recipe into a new sample in a rack slot.

Component names are the interface the plans use: set ``recipe`` (JSON of a
:class:`~ppu.capabilities.Candidate`), ``target_mass_mg`` and optionally ``sample_label``;
``trigger()``; read ``sample_id``, ``success``, ``mass_mg`` and ``slot``.
"""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal

from ppu.capabilities import Candidate
from ppu.drivers.mof._base import EpicsAcquisition, SimulatedAcquisition
from ppu.simulators.mof.instruments import SynthesisModel
from ppu.simulators.mof.lab import SimulatedLab


class SynthesisRobot(SimulatedAcquisition):
    """The simulated twin: soft signals; the shared :class:`SimulatedLab` realises the sample."""

    recipe = Cpt(Signal, value="{}", kind="config")
    target_mass_mg = Cpt(Signal, value=50.0, kind="config")
    sample_label = Cpt(Signal, value="", kind="config")
    sample_id = Cpt(Signal, value="", kind="hinted")
    success = Cpt(Signal, value=0, kind="normal")
    mass_mg = Cpt(Signal, value=0.0, kind="hinted")
    slot = Cpt(Signal, value="", kind="normal")

    def __init__(self, prefix: str = "", *, name: str, lab: SimulatedLab, model: SynthesisModel | None = None,
                 **kw: Any):
        super().__init__(prefix, name=name, lab=lab, model=model or SynthesisModel(), **kw)
        self._made = 0

    def _candidate(self) -> Candidate:
        return Candidate.model_validate_json(self.recipe.get())

    def _prepare(self) -> None:
        self._candidate()  # a malformed recipe fails before anything is weighed
        self.lab.rack()

    def _lab_seconds(self) -> float:
        return self.model.duration_s(self._candidate().anneal_time_h)  # type: ignore[attr-defined]

    def _acquire(self) -> None:
        recipe = self._candidate()
        self._made += 1
        label = self.sample_label.get() or f"{self.name}-{self._made:05d}"
        truth = self.lab.world.properties(recipe)
        success = bool(self.model.rng.random() < truth.success_probability)
        mass = self.model.mass_mg(float(self.target_mass_mg.get()), success)  # type: ignore[attr-defined]
        rec = self.lab.realise(label, recipe, success=success, mass_mg=mass)
        self.sample_id.put(rec.sample_id)
        self.success.put(int(success))
        self.mass_mg.put(rec.mass_mg)
        self.slot.put(rec.slot or "")


class EpicsSynthesisRobot(EpicsAcquisition):
    """The same interface on EPICS PVs (``<prefix>Recipe``, ``<prefix>SampleId_RBV``, ...)."""

    recipe = Cpt(EpicsSignal, "Recipe", string=True, kind="config")
    target_mass_mg = Cpt(EpicsSignal, "TargetMass", kind="config")
    sample_label = Cpt(EpicsSignal, "SampleLabel", string=True, kind="config")
    sample_id = Cpt(EpicsSignalRO, "SampleId_RBV", string=True, kind="hinted")
    success = Cpt(EpicsSignalRO, "Success_RBV", kind="normal")
    mass_mg = Cpt(EpicsSignalRO, "Mass_RBV", kind="hinted")
    slot = Cpt(EpicsSignalRO, "Slot_RBV", string=True, kind="normal")


def synthesis_robot(name: str, *, simulated: bool, prefix: str = "", lab: SimulatedLab | None = None,
                    model: SynthesisModel | None = None) -> Device:
    """One switch picks the twin; the plans never know which they got."""
    if simulated:
        if lab is None:
            raise ValueError("a simulated synthesis robot needs a SimulatedLab")
        return SynthesisRobot(name=name, lab=lab, model=model)
    return EpicsSynthesisRobot(prefix, name=name)


def synthesize(robot: Device, recipe: Candidate | dict[str, Any], md: dict[str, Any] | None = None, *,
               target_mass_mg: float = 50.0, sample_label: str = "") -> MsgGenerator[Any]:
    """Make one sample from ``recipe``: one run, one event with the new sample's id, mass and slot.

    The trigger is not rewindable: a pause during the anneal would re-run it on resume and make a
    second sample, so the checkpoint is cleared first and a pause request there aborts the run
    (the result is then marked interrupted for a person to review).
    """
    cand = recipe if isinstance(recipe, Candidate) else Candidate.model_validate(recipe)
    _md = {"plan_name": "synthesize", "recipe": cand.model_dump(mode="json"), "sample_label": sample_label,
           "target_mass_mg": target_mass_mg, **(md or {})}

    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(robot.recipe, cand.model_dump_json(), robot.target_mass_mg, target_mass_mg,  # type: ignore[attr-defined]
                          robot.sample_label, sample_label)  # type: ignore[attr-defined]
        yield from bps.clear_checkpoint()
        return (yield from bps.trigger_and_read([robot]))

    return (yield from inner())
