"""The generic closed loop on a replay world, with no lab and no clock: suggest, measure, ingest.

``in_flight`` experiments run at once: the generator is asked for one point whenever one finishes,
with the others passed as pending (first in, first out). Experiments are counted in the order they
finish, so "experiments to reach the top k" means physical measurements, whatever the strategy.

A world with ``fidelities`` gets a multi-fidelity generator whose suggestions carry ``_fidelity``:
a digital level is answered at once (it takes no in-flight slot and is no experiment), a physical
one is an experiment at its cost; "reached" needs the full measurement of a top candidate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppu.campaign.generators import GENERATORS, BoTorchGenerator, Generator
from ppu.campaign.replay import ReplayWorld


@dataclass
class LoopRun:
    results: list[dict[str, Any]] = field(default_factory=list)  # point + outputs + _id, in finishing order
    decisions: list[dict[str, Any]] = field(default_factory=list)  # one per suggestion: why, model version
    digital: list[dict[str, Any]] = field(default_factory=list)  # digital-level answers (no experiments)
    full_level: str | None = None  # the name of the full measurement's level (multi-fidelity only)

    def experiments_to(self, targets: set[int]) -> int | None:
        """Physical experiments up to and including the first full measurement of a candidate in ``targets``."""
        return next((k + 1 for k, r in enumerate(self.results) if r["_id"] in targets and self.is_full(r)), None)

    def is_full(self, result: dict[str, Any]) -> bool:
        return result.get("_fidelity") is None or result["_fidelity"] == self.full_level

    def cost_to(self, targets: set[int], costs: dict[str, float]) -> float | None:
        """Total declared cost (digital levels included) up to the first full measurement of a target."""
        k = self.experiments_to(targets)
        if k is None:
            return None
        last = self.results[k - 1]["_at"]
        spent = [r for r in (*self.results, *self.digital) if r["_at"] <= last]
        return float(sum(costs[r.get("_fidelity") or self.full_level or ""] for r in spent))


def make_generator(name: str, world: ReplayWorld, seed: int, *, twin: bool = True, **kw: Any) -> Generator:
    """``twin``: BoTorch reads the world's twin column (when it has one) as a low-fidelity input, and a
    world with ``fidelities`` gets the multi-fidelity generator (``twin=False``: BoTorch on the full
    measurement alone, the same optimiser with the twin and the cheap levels off)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; use one of {sorted(GENERATORS)}")
    cls = GENERATORS[name]
    if cls is BoTorchGenerator and world.fidelities and twin:
        from ppu.campaign.multifidelity import MultiFidelityGenerator

        levels = kw.pop("levels", None) or world.fidelities
        return MultiFidelityGenerator(world.problem, levels=levels, pool=world.points(), seed=seed,
                                      n_init=kw.pop("n_init", 2))
    if cls is not BoTorchGenerator:
        kw.pop("n_init", None)
    elif twin and world.twin_column is not None:
        kw["context"] = [world.twin_column]
    return cls(world.problem, pool=world.points(), seed=seed, **kw)


def run_replay(world: ReplayWorld, gen: Generator, *, budget: int, seed: int = 0, in_flight: int = 1,
               stop: set[int] | None = None,
               on_result: Callable[[int, dict[str, Any]], None] | None = None) -> LoopRun:
    """Run ``gen`` on ``world`` for at most ``budget`` experiments (or until a ``stop`` candidate is measured)."""
    rng = np.random.default_rng([seed, 7919])  # the replicates drawn (replicates: draw)
    run = LoopRun()
    if world.prior:
        gen.ingest([dict(p) for p in world.prior])  # earlier measurements: learnt from, not counted
    flying: deque[dict[str, Any]] = deque()
    budget = min(budget, len(world.pool))
    levels = {f.name: f for f in world.fidelities}
    run.full_level = next((f.name for f in world.fidelities if f.column is None), None)
    asked = 0
    clock = 0  # orders digital answers and experiments for cost accounting

    def measure(point: dict[str, Any]) -> dict[str, Any]:
        nonlocal clock
        clock += 1
        level = point.get("_fidelity")
        got = world.measure(point["_id"], rng) if level is None else world.measure_at(point["_id"], level, rng)
        return {**point, **got, "_at": clock}

    def ask() -> None:
        nonlocal asked
        while True:
            [point] = gen.suggest(1)
            level = point.get("_fidelity")
            run.decisions.append({"n": len(run.decisions) + 1, "_id": point["_id"],
                                  "candidate": world.pool[point["_id"]].id, "fidelity": level,
                                  "cost": levels[level].cost if level in levels else None,
                                  "why": getattr(gen, "last_why", gen.name) or gen.name,
                                  "model_version": getattr(gen, "model_version", gen.name),
                                  "pending": [p["_id"] for p in flying]})
            if level in levels and not levels[level].physical:  # digital: answered now, no experiment
                result = measure(point)
                gen.ingest([result])
                run.digital.append(result)
                continue
            asked += 1
            flying.append(point)
            return

    while asked < min(in_flight, budget):
        ask()
    while flying:
        point = flying.popleft()
        result = measure(point)
        gen.ingest([result])
        run.results.append(result)
        if on_result is not None:
            on_result(len(run.results), result)
        if stop is not None and point["_id"] in stop and run.is_full(result):
            break
        if asked < budget:
            ask()
    gen.finalize()
    return run
