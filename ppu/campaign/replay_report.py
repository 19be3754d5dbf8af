"""``ppu campaign run`` for a replay campaign: the generic loop on a table, then a summary and plots.

The run folder gets ``decisions.jsonl`` (every suggestion: why, model version, pending),
``results.jsonl`` (every measurement as the table recorded it), ``summary.json`` and plots: best so
far against the exact random expectation (one objective), or the Pareto front and the hypervolume
after each experiment (several). Scoring reads the replicates' means; nothing is clipped, so a
minimised objective with negative values is reported as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ppu.campaign.generators import hypervolume, pareto_front
from ppu.campaign.loop import LoopRun, make_generator, run_replay
from ppu.campaign.problem import as_number
from ppu.campaign.replay import ReplayWorld, expected_random


def signed_outcomes(world: ReplayWorld, outputs: list[dict[str, Any]]) -> np.ndarray:
    """Rows of signed objectives (larger is better); NaN where infeasible or not measured."""
    objs = list(world.problem.objectives)
    out = np.full((len(outputs), len(objs)), np.nan)
    for r, o in enumerate(outputs):
        if not world.problem.feasible(o):
            continue
        for j, name in enumerate(objs):
            y = as_number(o.get(name))
            if y is not None:
                out[r, j] = world.problem.sign(name) * y
    return out


def hypervolume_curve(world: ReplayWorld, run: LoopRun) -> tuple[list[float], float, list[float]]:
    """Hypervolume of the true (replicate-mean) outcomes of the candidates measured so far, after each
    experiment; the pool's own hypervolume; the reference point (the pool's feasible nadir)."""
    pool = signed_outcomes(world, [world.truth(i) for i in range(len(world.pool))])
    ok = pool[~np.isnan(pool).any(axis=1)]
    lo, hi = ok.min(axis=0), ok.max(axis=0)
    ref = (lo - 0.05 * np.maximum(hi - lo, 1e-9)).tolist()
    measured = signed_outcomes(world, [world.truth(r["_id"]) for r in run.results])
    curve = []
    for k in range(1, len(measured) + 1):
        m = measured[:k]
        curve.append(hypervolume(m[~np.isnan(m).any(axis=1)], ref))
    return curve, hypervolume(ok, ref), ref


def summarise_replay(name: str, world: ReplayWorld, run: LoopRun, generator: str) -> dict[str, Any]:
    top, threshold = world.top()
    n, k = len(world.pool), len(top)
    obj = world.rank_by
    sign = world.problem.sign(obj)
    scores = world.scores()
    measured_scores = [world.problem.score(r, obj) for r in run.results]  # as measured
    # a candidate counts as found once its full measurement is in (a cheap check does not find it)
    true_scores = [float(scores[r["_id"]]) if run.is_full(r) else -np.inf for r in run.results]
    best_true = max(true_scores, default=-np.inf)
    best_meas = max([s for s in measured_scores if s is not None], default=None)
    reached = run.experiments_to(top)
    summary: dict[str, Any] = {
        "campaign": name, "generator": generator, "objectives": dict(world.problem.objectives),
        "constraints": {c: v.model_dump() for c, v in world.problem.constraints.items()},
        "rank_by": obj, "pool": n, "rows": len(world.rows), "replicates": world.spec.replicates,
        "experiments": len(run.results),
        "best_found": None if not np.isfinite(best_true) else sign * best_true,
        "best_measured": None if best_meas is None else sign * best_meas,
        "pool_best": sign * float(scores.max()), "top_k": k, "top_threshold": sign * threshold,
        "experiments_to_top": reached, "random_expected_to_top": expected_random(n, k),
        "best_curve": [None if not np.isfinite(v) else sign * v for v in np.maximum.accumulate(true_scores)]
        if true_scores else [],
    }
    if world.fidelities:
        costs = {f.name: f.cost for f in world.fidelities}
        summary.update({
            "fidelities": costs, "digital_answers": len(run.digital),
            "experiments_per_level": {f.name: sum(1 for r in run.results if r.get("_fidelity") == f.name)
                                      for f in world.fidelities if f.physical},
            "cost": float(sum(costs[r["_fidelity"]] for r in (*run.results, *run.digital))),
            "cost_to_top": run.cost_to(top, costs)})
    if len(world.problem.objectives) > 1:
        curve, pool_hv, ref = hypervolume_curve(world, run)
        summary.update({"hypervolume_per_experiment": curve, "pool_hypervolume": pool_hv,
                        "hypervolume_fraction": curve[-1] / pool_hv if curve and pool_hv > 0 else None,
                        "hypervolume_reference_signed": ref})
    return summary


def plot_replay(world: ReplayWorld, run: LoopRun, summary: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if len(world.problem.objectives) == 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = np.arange(1, len(summary["best_curve"]) + 1)
        ax.step(xs, [np.nan if v is None else v for v in summary["best_curve"]], where="post", label="best so far")
        ax.axhline(summary["top_threshold"], color="k", ls="--", lw=0.8, label=f"top {summary['top_k']} threshold")
        ax.axvline(summary["random_expected_to_top"], color="grey", ls=":", label="random: expected experiments")
        ax.set_xlabel("experiments")
        ax.set_ylabel(f"{summary['rank_by']} ({world.problem.objectives[summary['rank_by']].lower()})")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "best_vs_experiments.png", dpi=110)
        plt.close(fig)
        return ["best_vs_experiments.png"]
    objs = list(world.problem.objectives)[:2]
    signs = np.array([world.problem.sign(o) for o in objs])
    pool = signed_outcomes(world, [world.truth(i) for i in range(len(world.pool))])[:, :2]
    meas = signed_outcomes(world, [world.truth(r["_id"]) for r in run.results])[:, :2]
    fig, ax = plt.subplots(figsize=(6, 5))
    ok = ~np.isnan(pool).any(axis=1)
    shown = pool[ok] * signs
    ax.scatter(shown[:, 0], shown[:, 1], s=10, c="0.75", label="pool (feasible)")
    mk = ~np.isnan(meas).any(axis=1)
    if mk.any():
        m = meas[mk]
        ms = m * signs
        ax.scatter(ms[:, 0], ms[:, 1], s=24, c=np.arange(len(m)), cmap="viridis", label="measured (colour: order)")
        front = m[pareto_front(m)]
        front = front[np.argsort(front[:, 0])] * signs
        ax.plot(*front.T, "r-o", ms=4, label="measured Pareto front")
    pf = pool[ok][pareto_front(pool[ok])]
    pf = pf[np.argsort(pf[:, 0])] * signs
    ax.plot(*pf.T, "k--", lw=0.8, label="pool Pareto front")
    ax.set_xlabel(f"{objs[0]} ({world.problem.objectives[objs[0]].lower()})")
    ax.set_ylabel(f"{objs[1]} ({world.problem.objectives[objs[1]].lower()})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    hv = summary["hypervolume_per_experiment"]
    ax.plot(np.arange(1, len(hv) + 1), hv, "-o", ms=3, label="measured candidates")
    ax.axhline(summary["pool_hypervolume"], color="k", ls="--", lw=0.8, label="whole pool")
    ax.set_xlabel("experiments")
    ax.set_ylabel("hypervolume")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "hypervolume.png", dpi=110)
    plt.close(fig)
    files += ["pareto.png", "hypervolume.png"]
    return files


def run_replay_campaign(name: str, world: ReplayWorld, out: Path, *, generator: str = "botorch", seed: int = 0,
                        budget: int = 24, in_flight: int = 1, n_init: int = 4) -> tuple[dict[str, Any], list[str]]:
    """Run, write decisions/results/summary/plots into ``out``; returns the summary and the plot files."""
    gen = make_generator(generator, world, seed=seed, n_init=n_init)
    run = run_replay(world, gen, budget=budget, seed=seed, in_flight=in_flight)
    with (out / "decisions.jsonl").open("w") as fh:
        for d in run.decisions:
            fh.write(json.dumps(d) + "\n")
    with (out / "results.jsonl").open("w") as fh:
        for r in run.results:
            fh.write(json.dumps(r, default=str) + "\n")
    summary = summarise_replay(name, world, run, generator)
    files = plot_replay(world, run, summary, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary, files
