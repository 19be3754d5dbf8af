"""Flow-chemistry campaign efficiency: reactions needed to come within a few per cent of the optimum.

On the kinetic world, with the campaign's own optimiser (no orchestrator: the loop's decisions,
not its plumbing): ours (kinetic-twin screen, then BoTorch qLogNEI over the box x ligand), the
same without the twin screen (BO on physical results only), and random search. Each experiment is
measured as the lab would: the reactor's run-to-run scatter (seeded by the experiment), a clog
drawn from the world's clog probability (yield 0), the HPLC analysis' noise (0.005).
"Reached" = a measured recipe whose *true* expected yield is at least ``--target`` x the world's
optimum. A run that has not reached it within ``--cap`` experiments counts as cap + 1 (censored).

    python benchmarks/flowchem_campaign.py [--seeds 3] [--cap 20] [--target 0.97]

Last line: one JSON object with ``ours``, ``no_screening``, ``random`` (median experiments),
``optimum`` and ``seeds``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ppu.simulators.flowchem.instruments import FlowReactorModel, seeded_rng
from ppu.simulators.flowchem.optimizer import MixedBoxOptimizer
from ppu.simulators.flowchem.twin import KineticTwin
from ppu.simulators.flowchem.world import FlowWorld, FlowWorldConfig


def measure(world: FlowWorld, recipe: object, tag: str) -> float:
    rng = seeded_rng("bench", tag)
    actual = FlowReactorModel().actual(recipe, rng)  # type: ignore[arg-type]
    if rng.random() < world.clog_probability(actual):
        return 0.0
    return float(np.clip(world.outcome(actual).product_yield + rng.normal(0, 0.005), 0, 1))


def run_bo(world: FlowWorld, goal: float, seed: int, cap: int, screen: bool) -> int:
    opt = MixedBoxOptimizer(seed=seed, n_init=4)
    if screen:
        cands = opt.random_recipes(256)
        opt.set_screen(cands, [p["mean"] + p["std"] for p in KineticTwin(seed=seed).predict(cands)])
    else:  # no twin: the first points are random
        opt.set_screen(opt.random_recipes(cap), [0.0] * cap)
    for n in range(1, cap + 1):
        recipe = opt.propose().recipe
        opt.observe(recipe, measure(world, recipe, f"{seed}-{screen}-{n}"))
        if world.expected_yield(recipe) >= goal:
            return n
    return cap + 1


def run_random(world: FlowWorld, goal: float, seed: int, cap: int) -> int:
    recipes = MixedBoxOptimizer(seed=10_000 + seed, strategy="random").random_recipes(cap)
    hits = np.nonzero(world.expected_yield_batch(recipes) >= goal)[0]
    return int(hits[0]) + 1 if len(hits) else cap + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cap", type=int, default=20)
    ap.add_argument("--target", type=float, default=0.97, help="fraction of the optimum that counts as reached")
    ap.add_argument("--random-runs", type=int, default=200)
    ap.add_argument("--world-seed", type=int, default=0)
    args = ap.parse_args()
    world = FlowWorld(FlowWorldConfig(seed=args.world_seed))
    t0 = time.time()
    _, optimum = world.true_optimum()
    goal = args.target * optimum
    ours = [run_bo(world, goal, s, args.cap, screen=True) for s in range(args.seeds)]
    bare = [run_bo(world, goal, s, args.cap, screen=False) for s in range(args.seeds)]
    rand = [run_random(world, goal, s, args.cap * 5) for s in range(args.random_runs)]
    rows = [("ours (twin screen + qLogNEI)", ours), ("no screening (qLogNEI only)", bare), ("random search", rand)]
    print(f"flow world seed {args.world_seed}: optimum expected yield {optimum:.3f}, goal {goal:.3f} "
          f"({args.target:.0%}); cap {args.cap} (random: {args.cap * 5})")
    print(f"{'strategy':32s} {'median':>7s} {'mean':>7s} {'censored':>9s}")
    for name, vals in rows:
        cap = args.cap * 5 if name == "random search" else args.cap
        print(f"{name:32s} {np.median(vals):7.1f} {np.mean(vals):7.1f} {sum(v > cap for v in vals):9d}")
    print(f"wall {time.time() - t0:.0f} s")
    print(json.dumps({"ours": float(np.median(ours)), "no_screening": float(np.median(bare)),
                      "random": float(np.median(rand)), "optimum": optimum, "goal": goal, "seeds": args.seeds,
                      "cap": args.cap}))


if __name__ == "__main__":
    main()
