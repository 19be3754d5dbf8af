"""Campaign efficiency: physical experiments to reach a world's top 1 % (issue 6, DESIGN.md figures).

Per world, on a simulated clock and the same pool: ours (digital-twin screening + constrained BO
with pending points), random search, and ours without digital screening (BO on physical results
only). "Reached" = a candidate whose true purity-constrained uptake is in the pool's top 1 % has
been synthesised, confirmed pure by XRD and measured. A BO run that has not reached it within
``--cap`` experiments counts as cap + 1 (censored; the table says how many were), which can only
flatter the baseline that misses. Each seed changes the optimiser, the instruments' noise and the
twin's prior data; random search is run ``--random-runs`` times (it is cheap).

    python benchmarks/campaign.py [--world sweet-spots --world mof74 | --world my-world.yaml] [--seeds 5]

A world YAML holds a campaign's ``world:`` fields, e.g. ``{kind: mof74, pool_size: 300}``, or is a
*replay world* (``ppu.campaign.replay``: ``csv`` + ``problem``, any column names; or a replay
campaign file, ``world: {replay: ...}`` + ``problem``): the pool is the table's own rows and a
measurement returns the recorded value. For a replay world the strategies are
ours (BoTorch over the pool), random (simulated, with the exact expectation (N+1)/(k+1) beside it)
and Sobol; "reached" = measured one of the top k candidates (``top_fraction``, default 1 %), and
the table gives median and IQR over seeds. A replay with a ``twin:`` column adds "no_twin" (the
same BoTorch with the twin off). A replay with ``fidelities:`` (a twin, cheap checks, the full
measurement, each with a cost) runs ours as the multi-fidelity generator and compares it with
"twin_full" (the same generator with only the digital levels and the full one, when there are cheap
physical levels) and "no_twin" (BoTorch on the full measurement alone): physical experiments (cheap
checks count as experiments), full measurements and total cost (digital answers included) up to
the first full measurement of a top-k candidate.

Last line: one JSON object keyed by world name, each with ``ours``, ``random``, ``no_screening``
(MOF worlds) or ``ours``, ``random``, ``random_exact``, ``sobol`` and their ``*_iqr`` (replay
worlds): median experiments, and ``seeds``; a multi-fidelity world adds ``no_twin``, ``twin_full``
and, per strategy, ``<key>_cost``, ``<key>_full`` (medians) and their ``_iqr``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ppu.campaign.config import CampaignConfig, WorldSpec
from ppu.campaign.loop import make_generator, run_replay
from ppu.campaign.replay import ReplayWorld, expected_random, load_replay
from ppu.campaign.runner import build_world
from ppu.campaign.screening import constrained_values, screen_locally
from ppu.campaign.simclock import simulate
from ppu.config import parse_model
from ppu.errors import ConfigError, PPUError
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


def world_spec(name: str) -> tuple[str, WorldSpec | ReplayWorld]:
    if name in SHIPPED:
        return name, WorldSpec.model_validate(SHIPPED[name])
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"--world {name!r}: not a shipped world ({', '.join(SHIPPED)}) nor a YAML file",
                          field="--world")
    raw = yaml.safe_load(path.read_text()) or {}
    if isinstance(raw, dict) and isinstance(raw.get("world"), dict) and "replay" in raw["world"]:
        return path.stem, replay_campaign_world(path)  # a replay campaign file: its world and problem
    if isinstance(raw, dict) and "problem" in raw:
        return path.stem, load_replay(path)
    return path.stem, parse_model(raw, WorldSpec, str(path), "world")


def replay_campaign_world(path: Path) -> ReplayWorld:
    from ppu.campaign.config import load_campaign
    from ppu.campaign.replay import ReplaySpec

    cfg = load_campaign(path)
    assert cfg.world.replay is not None and cfg.problem is not None
    spec = ReplaySpec(**cfg.world.replay.model_dump(), problem=cfg.problem.model_dump(mode="json"))
    return ReplayWorld(spec, base=path.parent)


def _iqr(v: list[float]) -> float:
    q1, q3 = np.percentile(v, [25, 75])
    return float(q3 - q1)


def bench_replay(name: str, world: ReplayWorld, seeds: int, cap: int, random_runs: int,
                 in_flight: int = 1) -> dict[str, Any]:
    top, threshold = world.top()
    n, k = len(world.pool), len(top)
    exact = expected_random(n, k)
    strategies = [("ours", "botorch"), ("random", "random"), ("sobol", "sobol")]
    if world.twin_column is not None or world.fidelities:  # the same optimiser with the twin off
        strategies.insert(1, ("no_twin", "botorch"))
    if world.fidelities:
        return bench_fidelities(name, world, seeds, cap, random_runs, in_flight, strategies)
    rows: dict[str, list[float]] = {key: [] for key, _ in strategies}
    censored = dict.fromkeys(rows, 0)
    t0 = time.time()
    for key, gen_name in strategies:
        runs = random_runs if key == "random" else seeds
        budget = min(cap, n) if gen_name == "botorch" else n  # the baselines may go through the whole pool
        for s in range(runs):
            gen = make_generator(gen_name, world, seed=s, twin=key != "no_twin")
            got = run_replay(world, gen, budget=budget, seed=s, in_flight=in_flight, stop=top).experiments_to(top)
            if got is None:
                censored[key] += 1
                got = budget + 1
            rows[key].append(float(got))
        print(f"  {name}: {key:8s} {runs:4d} runs, done at {time.time() - t0:6.1f} s", flush=True)
    obj = world.rank_by
    print(f"\nreplay world {name!r}: {len(world.rows)} rows, pool N = {n} distinct candidates, "
          f"top k = {k} ({obj} {world.problem.objectives[obj]}, threshold {world.problem.sign(obj) * threshold:g}"
          f"{', constrained' if world.problem.constraints else ''}), replicates: {world.spec.replicates}")
    print(f"{'strategy':10s}{'runs':>6s}{'median':>8s}{'IQR':>8s}{'mean':>8s}{'censored':>10s}   expected")
    for key, v in rows.items():
        expect = f"exact (N+1)/(k+1) = {exact:.1f}" if key == "random" else ""
        print(f"{key:10s}{len(v):6d}{np.median(v):8.1f}{_iqr(v):8.1f}{np.mean(v):8.1f}{censored[key]:10d}   {expect}")
    ours, rnd, sob = (float(np.median(rows[key])) for key in ("ours", "random", "sobol"))
    extra: dict[str, Any] = {}
    if "no_twin" in rows:
        no_twin = float(np.median(rows["no_twin"]))
        cost = world.spec.twin.cost * n if world.spec.twin else 0.0
        print(f"ours / random = {ours / rnd:.2f}, ours / exact random = {ours / exact:.2f} (target <= 0.33); "
              f"no_twin / ours = {no_twin / ours:.2f} (the twin {world.twin_column!r} screened all {n} candidates "
              f"for {cost:g} cost units)\n")
        extra = {"no_twin": no_twin, "no_twin_iqr": _iqr(rows["no_twin"]), "censored_no_twin": censored["no_twin"],
                 "twin_cost": cost}
    else:
        print(f"ours / random = {ours / rnd:.2f}, ours / exact random = {ours / exact:.2f} (target <= 0.33); "
              f"the table declares no twin (twin: {{column: ...}}), so no 'without the twin' row\n")
    return extra | {"ours": ours, "random": rnd, "random_exact": exact, "sobol": sob, "ours_iqr": _iqr(rows["ours"]),
            "random_iqr": _iqr(rows["random"]), "sobol_iqr": _iqr(rows["sobol"]), "pool": n, "top_k": k,
            "seeds": seeds, "random_runs": random_runs, "cap": cap, "censored_ours": censored["ours"],
            "censored_sobol": censored["sobol"]}


def bench_fidelities(name: str, world: ReplayWorld, seeds: int, cap: int, random_runs: int, in_flight: int,
                     strategies: list[tuple[str, str]]) -> dict[str, Any]:
    """Ours (multi-fidelity) against the same optimiser without its cheap levels: experiments, cost."""
    top, threshold = world.top()
    n, k = len(world.pool), len(top)
    exact = expected_random(n, k)
    levels = world.fidelities
    costs = {f.name: f.cost for f in levels}
    full = next(f for f in levels if f.column is None)
    if any(f.physical and f.column is not None for f in levels):  # the cheap physical checks off
        strategies.insert(2, ("twin_full", "botorch"))
    keep = {"twin_full": [f for f in levels if not f.physical or f.column is None]}
    figures: dict[str, dict[str, list[float]]] = {key: {"phys": [], "full": [], "cost": []} for key, _ in strategies}
    censored = dict.fromkeys(figures, 0)
    t0 = time.time()
    for key, gen_name in strategies:
        runs = random_runs if key == "random" else seeds
        budget = min(cap, n) if gen_name == "botorch" else n
        for s in range(runs):
            kw: dict[str, Any] = {"levels": keep[key]} if key in keep else {}
            gen = make_generator(gen_name, world, seed=s, twin=key != "no_twin", **kw)
            run = run_replay(world, gen, budget=budget, seed=s, in_flight=in_flight, stop=top)
            got = run.experiments_to(top)
            if got is None:
                censored[key] += 1
                phys, n_full, cost = budget + 1.0, float("nan"), float("nan")
            else:
                phys = float(got)
                n_full = float(sum(1 for r in run.results[:got] if run.is_full(r)))
                cost = run.cost_to(top, costs | {None: full.cost}) if run.full_level else got * full.cost  # type: ignore[operator]
            figures[key]["phys"].append(phys)
            figures[key]["full"].append(n_full)
            figures[key]["cost"].append(float(cost))  # type: ignore[arg-type]
        print(f"  {name}: {key:9s} {runs:4d} runs, done at {time.time() - t0:6.1f} s", flush=True)
    obj = world.rank_by
    print(f"\nmulti-fidelity replay world {name!r}: pool N = {n}, top k = {k} ({obj} {world.problem.objectives[obj]}, "
          f"threshold {world.problem.sign(obj) * threshold:g}); levels: "
          + ", ".join(f"{f.name} ({'digital' if not f.physical else 'physical'}, cost {f.cost:g})" for f in levels))
    print(f"{'strategy':10s}{'runs':>6s}{'phys med':>10s}{'IQR':>7s}{'full med':>10s}{'cost med':>10s}{'IQR':>7s}"
          f"{'censored':>10s}   (phys: physical experiments to a full measurement of a top-k candidate)")
    out: dict[str, Any] = {}
    for key, f in figures.items():
        ph, fu, co = f["phys"], [v for v in f["full"] if v == v], [v for v in f["cost"] if v == v]
        med_full = float(np.median(fu)) if fu else float("nan")
        med_cost = float(np.median(co)) if co else float("nan")
        expect = f"   random exact (N+1)/(k+1) = {exact:.1f}" if key == "random" else ""
        print(f"{key:10s}{len(ph):6d}{np.median(ph):10.1f}{_iqr(ph):7.1f}{med_full:10.1f}{med_cost:10.2f}"
              f"{_iqr(co) if co else float('nan'):7.2f}{censored[key]:10d}{expect}")
        out |= {key: float(np.median(ph)), f"{key}_iqr": _iqr(ph), f"{key}_full": med_full, f"{key}_cost": med_cost,
                f"{key}_cost_iqr": _iqr(co) if co else None, f"censored_{key}": censored[key]}
    ours, no_twin = out["ours"], out["no_twin"]
    ratio_cost = out["no_twin_cost"] / out["ours_cost"]
    verdict = ("met" if ours < no_twin else "NOT met") if seeds >= 5 else f"not judged on {seeds} seed(s)"
    print(f"no_twin / ours: physical experiments {no_twin / ours:.2f}, cost {ratio_cost:.2f}"
          f" (done when: ours < no_twin in physical experiments, median of >= 5 seeds: {verdict})\n")
    return out | {"random_exact": exact, "pool": n, "top_k": k, "seeds": seeds, "random_runs": random_runs,
                  "cap": cap, "levels": {f.name: f.cost for f in levels}}


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
    ap.add_argument("--in-flight", type=int, default=1, help="replay worlds: experiments running at once")
    args = ap.parse_args()
    out = {}
    try:
        for name in args.world or list(SHIPPED):
            label, spec = world_spec(name)
            if isinstance(spec, ReplayWorld):
                out[label] = bench_replay(label, spec, args.seeds, args.cap, args.random_runs, args.in_flight)
            else:
                out[label] = bench_world(label, spec, args.seeds, args.cap, args.random_runs)
    except PPUError as exc:  # a config error names its field; no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
