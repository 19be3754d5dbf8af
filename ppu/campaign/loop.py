"""The generic closed loop on a replay world, with no lab and no clock: suggest, measure, ingest.

``in_flight`` experiments run at once: the generator is asked for one point whenever one finishes,
with the others passed as pending (first in, first out). Experiments are counted in the order they
finish, so "experiments to reach the top k" means physical measurements, whatever the strategy.
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

    def experiments_to(self, targets: set[int]) -> int | None:
        """1-based index of the first finished experiment whose candidate is in ``targets``."""
        return next((k + 1 for k, r in enumerate(self.results) if r["_id"] in targets), None)


def make_generator(name: str, world: ReplayWorld, seed: int, *, twin: bool = True, **kw: Any) -> Generator:
    """``twin``: BoTorch reads the world's twin column (when it has one) as a low-fidelity input."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; use one of {sorted(GENERATORS)}")
    cls = GENERATORS[name]
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
    asked = 0

    def ask() -> None:
        nonlocal asked
        [point] = gen.suggest(1)
        asked += 1
        flying.append(point)
        run.decisions.append({"n": asked, "_id": point["_id"], "candidate": world.pool[point["_id"]].id,
                              "why": getattr(gen, "last_why", gen.name) or gen.name,
                              "model_version": getattr(gen, "model_version", gen.name),
                              "pending": [p["_id"] for p in flying if p is not point]})

    while asked < min(in_flight, budget):
        ask()
    while flying:
        point = flying.popleft()
        result = {**point, **world.measure(point["_id"], rng)}
        gen.ingest([result])
        run.results.append(result)
        if on_result is not None:
            on_result(len(run.results), result)
        if stop is not None and point["_id"] in stop:
            break
        if asked < budget:
            ask()
    gen.finalize()
    return run
