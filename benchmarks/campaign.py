"""Campaign efficiency: physical experiments to reach a world's top 1 % (issue 6, DESIGN.md figures).

Per world, on a simulated clock and the same pool: ours (digital-twin screening + constrained BO
with pending points), random search, and ours without digital screening (BO on physical results
only). "Reached" = a candidate whose true purity-constrained uptake is in the pool's top 1 % has
been synthesised, confirmed pure by XRD and measured. A BO run that has not reached it within
``--cap`` experiments counts as cap + 1 (censored; the table says how many were), which can only
flatter the baseline that misses. Each seed changes the optimiser, the instruments' noise and the
twin's prior data; random search is run ``--random-runs`` times (it is cheap).

    python benchmarks/campaign.py [--world sweet-spots --world mof74 | --world my-world.yaml] [--seeds 5]

A world YAML holds a campaign's ``world:`` fields, e.g. ``{csv: path/to/table.csv, pool_size: 300}``.
Last line: one JSON object keyed by world name, each with ``ours``, ``random``, ``no_screening``
(median experiments) and ``seeds``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ppu.campaign.config import CampaignConfig, WorldSpec
from ppu.campaign.runner import build_world
from ppu.campaign.screening import constrained_values, screen_locally
from ppu.campaign.simclock import simulate
from ppu.simulators.mof.world import DEMO_CSV

SHIPPED: dict[str, dict[str, Any]] = {
    "sweet-spots": {"kind": "sweet-spots", "seed": 0, "pool_size": 300},  # the demo campaign's world
    "mof74": {"kind": "mof74", "seed": 0, "pool_size": 300},              # open metal sites x activation
    "demo-table": {"csv": str(DEMO_CSV), "pool_size": 300},               # a table of measurements
}
STRATEGIES = {"ours": "ppu", "random": "random", "no_screening": "physical_only"}


def experiments_to(done: list[tuple[str, bool]], index: dict[str, int], values: np.ndarray,
                   threshold: float) -> int | None:
    for k, (cid, ok) in enumerate(done):
        if ok and values[index[cid]] >= threshold:
            return k + 1
    return None


def world_spec(name: str) -> tuple[str, WorldSpec]:
    if name in SHIPPED:
        return name, WorldSpec.model_validate(SHIPPED[name])
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"--world {name!r}: not a shipped world ({', '.join(SHIPPED)}) nor a YAML file")
    return path.stem, WorldSpec.model_validate(yaml.safe_load(path.read_text()) or {})


def bench_world(name: str, spec: WorldSpec, seeds: int, cap: int, random_runs: int) -> dict[str, Any]:
    base = CampaignConfig.model_validate({"world": spec.model_dump(), "budget": {"max_syntheses": cap}})
    world, pool = build_world(base)
    index = {c.id or "": i for i, c in enumerate(pool)}
    truth = constrained_values(world, pool, base.objective.purity_min)
    threshold = float(np.sort(truth)[::-1][max(1, math.ceil(0.01 * len(truth))) - 1])
    rows: dict[str, list[float]] = {k: [] for k in STRATEGIES}
    censored = dict.fromkeys(STRATEGIES, 0)
    t0 = time.time()
    for key, strategy in STRATEGIES.items():
        runs = random_runs if key == "random" else seeds
        for s in range(runs):
            cfg = base.model_copy(update={"seed": s})
            if key == "random":  # random search may go through the whole pool
                cfg = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"max_syntheses": len(pool)})})
            screen = screen_locally(world, pool, cfg) if strategy == "ppu" else None
            run = simulate(cfg, world, pool, strategy, seed=s, screen=screen,  # type: ignore[arg-type]
                           stop_at=(truth, threshold))
            n = experiments_to(run.done, index, truth, threshold)
            if n is None:
                censored[key] += 1
                n = cfg.budget.max_syntheses + 1
            rows[key].append(float(n))
        print(f"  {name}: {key:13s} {runs:4d} runs, done at {time.time() - t0:6.1f} s", flush=True)
    print(f"\nworld {name!r}: pool {len(pool)}, {int((truth > 0).sum())} candidates truly pure "
          f"(>= {base.objective.purity_min}), top 1 % threshold {threshold:.3f} mmol/g")
    print(f"{'strategy':15s}{'runs':>6s}{'median':>8s}{'mean':>8s}{'censored':>10s}   experiments per run")
    for k, v in rows.items():
        shown = " ".join(f"{x:.0f}" for x in v) if len(v) <= 12 else f"{min(v):.0f} .. {max(v):.0f}"
        print(f"{k:15s}{len(v):6d}{np.median(v):8.1f}{np.mean(v):8.1f}{censored[k]:10d}   {shown}")
    ours, rnd, nos = (float(np.median(rows[k])) for k in ("ours", "random", "no_screening"))
    print(f"ours / random = {ours / rnd:.2f} (target <= 0.33); no_screening / ours = {nos / ours:.2f} "
          f"(target >= 2)\n")
    return {"ours": ours, "random": rnd, "no_screening": nos, "seeds": seeds, "random_runs": random_runs,
            "cap": cap, "censored_ours": censored["ours"], "censored_no_screening": censored["no_screening"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", action="append", help=f"shipped world ({', '.join(SHIPPED)}) or a world YAML; "
                    "repeat for several (default: every shipped world)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per BO strategy (>= 5 for the issue's figures)")
    ap.add_argument("--cap", type=int, default=60, help="most experiments per BO run (a miss counts cap + 1)")
    ap.add_argument("--random-runs", type=int, default=200, help="random-search runs per world")
    args = ap.parse_args()
    out = {}
    for name in args.world or list(SHIPPED):
        label, spec = world_spec(name)
        out[label] = bench_world(label, spec, args.seeds, args.cap, args.random_runs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
