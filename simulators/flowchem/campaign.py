"""What the generic campaign loop (:mod:`ppu.campaign.declared`) needs from the flow lab, and nothing else.

A flow-chemistry campaign is a campaign file (``campaigns/flowchem.yaml``): its problem (ligand,
temperature, residence time, equivalents, concentration), its workflow (react, then HPLC) and its
screen (``predict.yield`` on the kinetic twin) are declared there, and the core's loop runs it. The
pack brings two hooks, named by import path in its :class:`~ppu.packs.Pack`:

- :func:`campaign_lab`: a lab file (as a dict) made a campaign's simulated lab: the reactor and the
  HPLC get the campaign's run folder, world, time scale and seed;
- :func:`truth`: the kinetic world, for scoring a simulated campaign (expected yield of a recipe, a
  clogged run counting as nothing; the world's optimum over the process box). Only scoring reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ppu.drivers.flowchem.models import FlowRecipe
from ppu.simulators.flowchem.world import FlowWorld, FlowWorldConfig

PHYSICAL_TYPES = ("flow_reactor", "hplc")


def campaign_lab(lab: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Point the lab's reactors and HPLCs at the campaign's run folder, world, time scale and seed."""
    world = FlowWorldConfig.model_validate(settings.get("world") or {}).model_dump()
    phys = {"time_scale": settings["time_scale"], "seed": settings["seed"], "lab": settings["name"],
            "run_dir": str(Path(settings["run_dir"]) / "lab"), "world": world, "simulated": True}
    backends = [{**b, **phys} if b.get("type") in PHYSICAL_TYPES else b for b in lab.get("backends", [])]
    return {**lab, "backends": backends}


def recipe(point: dict[str, Any]) -> FlowRecipe:
    return FlowRecipe.model_validate({k: v for k, v in point.items() if k in FlowRecipe.model_fields})


class FlowTruth:
    """The world's expected outcomes (see the module docstring); outputs it does not know give None."""

    def __init__(self, world: FlowWorld):
        self.world = world

    def expected(self, points: Sequence[dict[str, Any]], output: str) -> np.ndarray | None:
        if output not in ("yield", "product_yield"):
            return None
        recipes = [recipe(p) for p in points]
        if len(recipes) > 64:  # a baseline's many points: the fast semi-implicit integrator (within ~1 %)
            return self.world.expected_yield_batch(recipes)
        return np.array([self.world.expected_yield(r) for r in recipes], dtype=float)

    def optimum(self, output: str) -> tuple[dict[str, Any], float] | None:
        if output not in ("yield", "product_yield"):
            return None
        best, value = self.world.true_optimum()
        return best.model_dump(mode="json"), value


def truth(world: dict[str, Any]) -> FlowTruth:
    return FlowTruth(FlowWorld.from_config(world))
