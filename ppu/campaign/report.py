"""``ppu campaign run CONFIG``: run a campaign with a progress bar, then a summary table and plots.

The run folder gets ``decisions.jsonl`` (every proposal and why), ``summary.json``, the lab's
store and documents, and three PNGs: best-so-far vs experiments against random search, a Gantt
chart of every device's busy time, and the surrogate's parity plot.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ppu.campaign.config import CampaignConfig, load_campaign
from ppu.campaign.runner import CampaignResult, build_world, run_campaign
from ppu.campaign.screening import constrained_values
from ppu.campaign.simclock import random_baseline


def utilisation(intervals: list[dict[str, Any]], prefix: str, units: int, span_s: float) -> float:
    busy = sum(iv["end"] - iv["start"] for iv in intervals if str(iv["backend"]).startswith(prefix))
    return float(min(1.0, busy / max(span_s * units, 1e-9)))


def summarise(result: CampaignResult) -> dict[str, Any]:
    cfg = result.config
    world, pool = build_world(cfg)
    values = constrained_values(world, pool, cfg.objective.purity_min)
    optimum = float(values.max())
    top1 = float(np.sort(values)[::-1][max(1, int(np.ceil(0.01 * len(values)))) - 1])
    base = random_baseline(cfg, world, pool, seeds=20)
    # Scored on the truth, the same way as the bar (optimum, top 1 %): a candidate counts with its true
    # uptake when the lab confirmed it pure AND its true purity passes. One the XRD passed by noise but
    # that is truly impure scores 0, so "best found" can never exceed the optimum.
    uptake = world.values(pool)
    curve = result.true_curve(dict(zip([c.id or "" for c in pool], (float(v) for v in values), strict=True)))
    n = len(curve)
    best_true = curve[-1] if curve else 0.0
    reached = next((k + 1 for k, b in enumerate(curve) if b >= top1 - 1e-9), None)
    return {
        "campaign": cfg.name, "purity_min": cfg.objective.purity_min, "best_found": best_true,
        "best_measured": result.best, "true_optimum": optimum,
        "fraction_of_optimum": best_true / optimum if optimum > 0 else None,
        "pool_median": float(np.median(uptake)), "top1pct_threshold": top1,
        "experiments_to_top1pct": reached,
        "physical_experiments": n, "random_search_best_at_same_n": float(base[min(n, len(base)) - 1]) if n else 0.0,
        "uptake_measurements": sum(1 for e in result.experiments if e.uptake is not None),
        "robot_utilisation": utilisation(result.intervals, "robot", cfg.parallel.synthesis_robots, result.lab_s),
        "wall_s": result.wall_s, "lab_h": result.lab_s / 3600.0, "time_scale": cfg.time_scale,
        "surrogate_versions": result.model_versions, "best_curve": curve,
        "random_curve": [float(x) for x in base],
    }


def plot_best(summary: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ppu = summary["best_curve"]
    rnd = summary["random_curve"]
    ax.plot(range(1, len(ppu) + 1), ppu, "o-", label="PPU (digital screen + BO)", color="tab:blue")
    ax.plot(range(1, len(rnd) + 1), rnd, "s--", label="random search (mean of 20)", color="tab:gray")
    ax.axhline(summary["true_optimum"], color="tab:green", ls=":", label="true optimum of the pool")
    ax.axhline(summary["top1pct_threshold"], color="tab:olive", ls="-.", lw=0.8, label="top 1 %")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("physical experiments (syntheses)")
    ax.set_ylabel(f"best true CO$_2$ uptake, purity ≥ {summary['purity_min']:g} (mmol/g)")
    ax.set_title(f"campaign {summary['campaign']}: best so far")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gantt(intervals: list[dict[str, Any]], path: Path) -> None:
    colours = {"synthesize": "tab:blue", "characterize.xrd": "tab:orange", "measure.co2_uptake": "tab:red",
               "predict.co2_uptake": "tab:purple", "train.surrogate": "tab:green"}
    names = sorted({iv["backend"] for iv in intervals})
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.5))
    for row, name in enumerate(names):
        for iv in (i for i in intervals if i["backend"] == name):
            ax.barh(row, (iv["end"] - iv["start"]) / 3600, left=iv["start"] / 3600, height=0.6,
                    color=colours.get(iv.get("capability", ""), "tab:gray"), edgecolor="black", lw=0.3)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("lab time (hours)")
    ax.set_title("device busy time (gaps are idle)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=5)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_parity(result: CampaignResult, path: Path) -> None:
    cfg = result.config
    world, pool = build_world(cfg)
    truth = world.values(pool)
    purity = world.values(pool, "purity")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    ax = axes[0]
    if result.screen is not None:
        ax.scatter(truth, result.screen, s=8, alpha=0.6, color="tab:purple")
        ax.set_title("digital twin (screening) vs truth, whole pool", fontsize=10)
    else:
        ax.set_title("no digital screening in this campaign", fontsize=10)
    opt = result.optimizer
    ax2 = axes[1]
    if opt is not None:
        gp_y, _ = opt.models()
        feas = [i for i in range(len(pool)) if purity[i] >= cfg.objective.purity_min]
        if gp_y is not None and feas:
            mean, std = opt.predict(gp_y, feas)
            measured = set(i for i, o in opt.obs.items() if o.uptake is not None)
            colour = ["tab:red" if i in measured else "tab:blue" for i in feas]
            ax2.errorbar(truth[feas], mean, yerr=std, fmt="none", ecolor="lightgray", zorder=1)
            ax2.scatter(truth[feas], mean, s=14, c=colour, zorder=2)
            ax2.set_title("campaign GP vs truth, pure candidates (red: measured)", fontsize=10)
        else:
            ax2.text(0.5, 0.5, "fewer than 3 pure samples measured:\nno campaign GP of the uptake yet",
                     ha="center", va="center", transform=ax2.transAxes)
    for a in axes:
        lo, hi = float(truth.min()), float(truth.max())
        a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        a.set_xlabel("true CO$_2$ uptake (mmol/g)")
        a.set_ylabel("predicted (mmol/g)")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise_lab(result: CampaignResult) -> dict[str, Any]:
    """A campaign on a running lab: what was measured; there is no truth to score against."""
    cfg = result.config
    return {
        "campaign": cfg.name, "lab": cfg.lab_config, "purity_min": cfg.objective.purity_min,
        "best_measured": result.best, "physical_experiments": len(result.completed),
        "uptake_measurements": sum(1 for e in result.experiments if e.uptake is not None),
        "statuses": [e.status for e in result.completed],
        "robot_utilisation": utilisation(result.intervals, "robot", cfg.parallel.synthesis_robots, result.lab_s),
        "wall_s": result.wall_s, "lab_h": result.lab_s / 3600.0, "time_scale": cfg.time_scale,
        "surrogate_versions": result.model_versions, "best_curve": result.best_curve,
    }


def write_report(result: CampaignResult, run_dir: Path) -> dict[str, Any]:
    if not result.config.simulated:  # a running lab: no world truth to score against, no random baseline
        summary = summarise_lab(result)
        plot_gantt(result.intervals, run_dir / "gantt.png")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
    summary = summarise(result)
    plot_best(summary, run_dir / "best_vs_experiments.png")
    plot_gantt(result.intervals, run_dir / "gantt.png")
    plot_parity(result, run_dir / "parity.png")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summary_table(summary: dict[str, Any]) -> Table:
    t = Table(title=f"campaign {summary['campaign']}")
    t.add_column("figure")
    t.add_column("value", justify="right")
    if "true_optimum" not in summary:  # a running lab: only what was measured
        t.add_row("lab", str(summary.get("lab")))
        t.add_row(f"best measured uptake (mmol/g, purity ≥ {summary['purity_min']:g})",
                  f"{summary['best_measured']:.3f}")
        t.add_row("physical experiments (syntheses)", str(summary["physical_experiments"]))
        t.add_row("  CO2 isotherms (purity passed)", str(summary["uptake_measurements"]))
        t.add_row("synthesis robot utilisation", f"{summary['robot_utilisation']:.0%}")
        t.add_row("wall time", f"{summary['wall_s']:.1f} s")
        return t
    t.add_row(f"best found: true uptake (mmol/g, purity ≥ {summary['purity_min']:g})", f"{summary['best_found']:.3f}")
    t.add_row("  as measured", f"{summary['best_measured']:.3f}")
    t.add_row("true optimum of the pool", f"{summary['true_optimum']:.3f}")
    frac = summary["fraction_of_optimum"]
    t.add_row("  fraction of optimum", f"{frac:.1%}" if frac is not None else "-")
    t.add_row("random search, same experiments (mean)", f"{summary['random_search_best_at_same_n']:.3f}")
    t.add_row("physical experiments (syntheses)", str(summary["physical_experiments"]))
    t.add_row("  CO2 isotherms (purity passed)", str(summary["uptake_measurements"]))
    reached = summary["experiments_to_top1pct"]
    t.add_row("experiments to reach the top 1 %", str(reached) if reached else "not reached")
    t.add_row("synthesis robot utilisation", f"{summary['robot_utilisation']:.0%}")
    t.add_row("wall time", f"{summary['wall_s']:.1f} s")
    t.add_row("lab time", f"{summary['lab_h']:.1f} h (time scale {summary['time_scale']:g})")
    return t


class LiveDashboard:
    """Starts the lab dashboard when the campaign's lab is up, prints its address, stops it at the end."""

    def __init__(self, console: Console, lab_name: str):
        self.console = console
        self.lab_name = lab_name
        self.thread: Any = None

    def __call__(self, address: str) -> None:
        from ppu.dashboard import DashboardThread

        try:
            self.thread = DashboardThread(address, lab_name=self.lab_name).start()
        except Exception as exc:  # a busy port or a missing extra must not stop the campaign
            self.console.log(f"dashboard not started: {exc}")
            return
        self.console.log(f"watch it live: {self.thread.url}/?token={self.thread.token}")

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None


def run_replay_cli(cfg: CampaignConfig, config_path: Path, out: Path, console: Console) -> dict[str, Any]:
    """A replay campaign: the generic loop on the table's rows (no lab to start: the table answers)."""
    from ppu.campaign.replay import ReplaySpec, ReplayWorld
    from ppu.campaign.replay_report import run_replay_campaign

    assert cfg.world.replay is not None and cfg.problem is not None
    problem = cfg.problem.model_dump(mode="json")
    spec = ReplaySpec(**cfg.world.replay.model_dump(), problem=problem)
    world = ReplayWorld(spec, base=config_path.parent)
    console.log(f"replay world {world.path.name}: {len(world.rows)} rows, {len(world.pool)} candidates; "
                f"{cfg.optimiser.generator} proposes")
    summary, files = run_replay_campaign(cfg.name, world, out, generator=cfg.optimiser.generator, seed=cfg.seed,
                                         budget=cfg.budget.max_syntheses, in_flight=cfg.optimiser.in_flight,
                                         n_init=cfg.optimiser.n_init)
    t = Table(title=f"campaign {cfg.name} (replay of {world.path.name})")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for key in ("generator", "pool", "experiments", "best_found", "pool_best", "top_k", "experiments_to_top",
                "random_expected_to_top", "pool_hypervolume", "hypervolume_fraction", "cost", "cost_to_top"):
        if key in summary:
            v = summary[key]
            t.add_row(key.replace("_", " "), f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(t)
    console.print(f"run folder: {out}  (decisions.jsonl, results.jsonl, summary.json, {', '.join(files)})")
    return summary


def run_campaign_cli(config_path: str | Path, run_dir: str | Path, console: Console | None = None,
                     *, config: CampaignConfig | None = None, prefect: bool = False,
                     dashboard: bool = False) -> dict[str, Any]:
    """Run the campaign in ``config_path`` into ``run_dir`` (emptied first); returns the summary dict.

    ``prefect``: run it as the ``closed_loop`` Prefect flow (local ephemeral mode, its home under
    the run folder), with the same progress bar and summary.
    """
    console = console or Console()
    cfg = config or load_campaign(config_path)
    out = Path(run_dir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if cfg.world.replay is not None:
        return run_replay_cli(cfg, Path(config_path), out, console)
    if prefect:
        # Prefect reads its settings when first imported: point its home at the run folder first.
        os.environ["PPU_RUN_DIR"] = str(out)
        from ppu.flows.campaign import run_with_progress

        return run_with_progress(config_path, out, console, dashboard=dashboard)
    live = LiveDashboard(console, cfg.name) if dashboard else None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("best {task.fields[best]:.2f}"), TimeElapsedColumn(), console=console) as bar:
        job = bar.add_task("syntheses", total=cfg.budget.max_syntheses, best=0.0)
        try:
            result = asyncio.run(run_campaign(
                cfg, out, on_progress=lambda n, best: bar.update(job, completed=n, best=best),
                on_stage=lambda s: console.log(s), on_lab=live))
        finally:
            if live is not None:
                live.stop()
    summary = write_report(result, out)
    console.print(summary_table(summary))
    console.print(f"run folder: {out}  (decisions.jsonl, summary.json, best_vs_experiments.png, gantt.png, "
                  "parity.png)")
    return summary
