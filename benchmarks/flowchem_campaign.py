"""Flow-chemistry campaign efficiency: reactions needed to come within a few per cent of the optimum.

On the kinetic world, with the generator the campaign file declares (``campaigns/flowchem.yaml``: its
problem, read by the core's BoTorch generator; no orchestrator: the loop's decisions, not its
plumbing): ours (kinetic-twin screen of 256 random recipes as the warm start, then qLogNEI with
``optimize_acqf_mixed`` over the box once per ligand), the same without the twin screen (Sobol start,
BO on physical results only), and random search over the same space. Each experiment is measured as
the lab would: the reactor's run-to-run scatter (seeded by the experiment), a clog drawn from the
world's clog probability (yield 0), the HPLC analysis' noise (0.005). "Reached" = a measured recipe
whose *true* expected yield is at least ``--target`` x the world's optimum. A run that has not
reached it within ``--cap`` experiments counts as cap + 1 (censored).

    python benchmarks/flowchem_campaign.py [--seeds 3] [--cap 20] [--target 0.97]

Last line: one JSON object with ``ours``, ``no_screening``, ``random`` (median experiments),
``optimum`` and ``seeds``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ppu.campaign.declared import load_lab_campaign, random_points
from ppu.campaign.generators import BoTorchGenerator
from ppu.campaign.problem import Problem
from ppu.simulators.flowchem.campaign import recipe
from ppu.simulators.flowchem.instruments import FlowReactorModel, seeded_rng
from ppu.simulators.flowchem.twin import KineticTwin
from ppu.simulators.flowchem.world import FlowWorld, FlowWorldConfig

CAMPAIGN = Path(__file__).resolve().parents[1] / "campaigns" / "flowchem.yaml"


def measure(world: FlowWorld, point: dict[str, Any], tag: str) -> float:
    rng = seeded_rng("bench", tag)
    actual = FlowReactorModel().actual(recipe(point), rng)
    if rng.random() < world.clog_probability(actual):
        return 0.0
    return float(np.clip(world.outcome(actual).product_yield + rng.normal(0, 0.005), 0, 1))


def run_bo(problem: Problem, world: FlowWorld, goal: float, seed: int, cap: int, screen: bool, n_init: int) -> int:
    gen = BoTorchGenerator(problem, seed=seed, n_init=n_init)
    if screen:  # the twin's optimistic score (mean + std) of random recipes: the initial design's ranking
        cands = random_points(problem, 256, seed)
        preds = KineticTwin(seed=seed).predict([recipe(c) for c in cands])
        gen.warm_start(cands, [p["mean"] + p["std"] for p in preds])
    for n in range(1, cap + 1):
        [point] = gen.suggest(1)
        gen.ingest([{**point, "yield": measure(world, point, f"{seed}-{screen}-{n}")}])
        if world.expected_yield(recipe(point)) >= goal:
            return n
    return cap + 1


def run_random(problem: Problem, world: FlowWorld, goal: float, seed: int, cap: int) -> int:
    points = random_points(problem, cap, 10_000 + seed)
    hits = np.nonzero(world.expected_yield_batch([recipe(p) for p in points]) >= goal)[0]
    return int(hits[0]) + 1 if len(hits) else cap + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cap", type=int, default=20)
    ap.add_argument("--target", type=float, default=0.97, help="fraction of the optimum that counts as reached")
    ap.add_argument("--random-runs", type=int, default=200)
    ap.add_argument("--world-seed", type=int, default=0)
    args = ap.parse_args()
    cfg = load_lab_campaign(CAMPAIGN)
    problem, n_init = cfg.problem, cfg.optimiser.n_init
    world = FlowWorld(FlowWorldConfig(seed=args.world_seed))
    t0 = time.time()
    _, optimum = world.true_optimum()
    goal = args.target * optimum
    ours = [run_bo(problem, world, goal, s, args.cap, True, n_init) for s in range(args.seeds)]
    bare = [run_bo(problem, world, goal, s, args.cap, False, n_init) for s in range(args.seeds)]
    rand = [run_random(problem, world, goal, s, args.cap * 5) for s in range(args.random_runs)]
    rows = [("ours (twin screen + qLogNEI)", ours), ("no screening (qLogNEI only)", bare), ("random search", rand)]
    print(f"flow world seed {args.world_seed}: optimum expected yield {optimum:.3f}, goal {goal:.3f} "
          f"({args.target:.0%}); cap {args.cap} (random: {args.cap * 5}); problem from {CAMPAIGN.name}")
    print(f"{'strategy':32s} {'median':>7s} {'mean':>7s} {'censored':>9s}  per seed")
    for name, vals in rows:
        cap = args.cap * 5 if name == "random search" else args.cap
        per = "" if name == "random search" else " ".join(str(v) for v in vals)
        print(f"{name:32s} {np.median(vals):7.1f} {np.mean(vals):7.1f} {sum(v > cap for v in vals):9d}  {per}")
    print(f"wall {time.time() - t0:.0f} s")
    print(json.dumps({"ours": float(np.median(ours)), "no_screening": float(np.median(bare)),
                      "random": float(np.median(rand)), "optimum": optimum, "goal": goal, "seeds": args.seeds,
                      "cap": args.cap}))


if __name__ == "__main__":
    main()
