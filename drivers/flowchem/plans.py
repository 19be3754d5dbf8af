"""Bluesky plans of the flow lab: a reaction run makes a fraction, an HPLC run measures one.

Plans say what, the RunEngine decides how (STYLE.md §1): each is a generator of messages and can
be listed without a RunEngine. The devices also work with stock plans: ``count([reactor])`` runs
the reactor at its current setpoints, ``count([hplc])`` injects the vial ``hplc.sample_id`` names.
"""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator
from ophyd import Device

from ppu.drivers.flowchem.models import FlowRecipe


def run_flow_reaction(reactor: Device, recipe: FlowRecipe | dict[str, Any], md: dict[str, Any] | None = None, *,
                      collect_volume_ml: float = 2.0, sample_label: str = "") -> MsgGenerator[Any]:
    """Run ``recipe`` to steady state and collect one fraction: one run, one event with the vial's id.

    The trigger is not rewindable (it consumes reagents and makes a vial), so the checkpoint is
    cleared first: a pause request during the reaction aborts the run instead of repeating it,
    and the orchestrator sends the task to a person for review.
    """
    r = recipe if isinstance(recipe, FlowRecipe) else FlowRecipe.model_validate(recipe)
    _md = {"plan_name": "run_flow_reaction", "recipe": r.model_dump(mode="json"), "sample_label": sample_label,
           "collect_volume_ml": collect_volume_ml, **(md or {})}

    @bpp.stage_decorator([reactor])
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(reactor.ligand, r.ligand, reactor.temperature_c, r.temperature_c,  # type: ignore[attr-defined]
                          reactor.residence_time_min, r.residence_time_min,  # type: ignore[attr-defined]
                          reactor.equivalents_b, r.equivalents_b,  # type: ignore[attr-defined]
                          reactor.concentration_m, r.concentration_m,  # type: ignore[attr-defined]
                          reactor.collect_volume_ml, collect_volume_ml,  # type: ignore[attr-defined]
                          reactor.sample_label, sample_label)  # type: ignore[attr-defined]
        yield from bps.clear_checkpoint()
        return (yield from bps.trigger_and_read([reactor]))

    return (yield from inner())


def measure_hplc(hplc: Device, sample_id: str, run_time_min: float = 10.0, sample_rate_hz: float = 10.0,
                 injection_ul: float = 5.0, md: dict[str, Any] | None = None) -> MsgGenerator[Any]:
    """One injection of ``sample_id``: one run, one event holding the time axis and the detector trace.

    A checkpoint precedes the injection: pausing before it and resuming re-runs nothing physical.
    """
    _md = {"plan_name": "measure_hplc", "sample_id": sample_id,
           "plan_args": {"run_time_min": run_time_min, "sample_rate_hz": sample_rate_hz,
                         "injection_ul": injection_ul}, **(md or {})}

    @bpp.stage_decorator([hplc])
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[Any]:
        yield from bps.mv(hplc.sample_id, sample_id, hplc.run_time_min, run_time_min,  # type: ignore[attr-defined]
                          hplc.sample_rate_hz, sample_rate_hz, hplc.injection_ul, injection_ul)  # type: ignore[attr-defined]
        yield from bps.checkpoint()
        return (yield from bps.trigger_and_read([hplc]))

    return (yield from inner())
