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
from ophyd import Device, EpicsSignal, EpicsSignalRO

from ppu.backends.devices import EpicsAcquisition
from ppu.drivers.mof.capabilities import Candidate


class EpicsSynthesisRobot(EpicsAcquisition):
    """The same interface on EPICS PVs (``<prefix>Recipe``, ``<prefix>SampleId_RBV``, ...)."""

    recipe = Cpt(EpicsSignal, "Recipe", string=True, kind="config")
    target_mass_mg = Cpt(EpicsSignal, "TargetMass", kind="config")
    sample_label = Cpt(EpicsSignal, "SampleLabel", string=True, kind="config")
    sample_id = Cpt(EpicsSignalRO, "SampleId_RBV", string=True, kind="hinted")
    success = Cpt(EpicsSignalRO, "Success_RBV", kind="normal")
    mass_mg = Cpt(EpicsSignalRO, "Mass_RBV", kind="hinted")
    slot = Cpt(EpicsSignalRO, "Slot_RBV", string=True, kind="normal")


def synthesize(robot: Device, recipe: Candidate | dict[str, Any], md: dict[str, Any] | None = None, *,
               target_mass_mg: float = 50.0, sample_label: str = "") -> MsgGenerator[Any]:
    """Make one sample from ``recipe``: one run, one event with the new sample's id, mass and slot.

    The trigger is not rewindable: a pause during the anneal would re-run it on resume and make a
    second sample, so the checkpoint is cleared first and a pause request there aborts the run
    (the result is then marked interrupted for a person to review).
    """
    cand = recipe if isinstance(recipe, Candidate) else Candidate.model_validate(recipe)
    _md = {"plan_name": "synthesize", "recipe": cand.model_dump(mode="json"), "sample_label": sample_label,
           "sample_id": sample_label or None, "detectors": [robot.name], "motors": [], "num_points": 1,
           "hints": {"dimensions": [(["time"], "primary")]},
           "target_mass_mg": target_mass_mg, **(md or {})}

    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(robot.recipe, cand.model_dump_json(), robot.target_mass_mg, target_mass_mg,  # type: ignore[attr-defined]
                          robot.sample_label, sample_label)  # type: ignore[attr-defined]
        yield from bps.clear_checkpoint()
        return (yield from bps.trigger_and_read([robot]))

    return (yield from inner())
