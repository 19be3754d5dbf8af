"""``ppu campaign run`` for a campaign on a lab (:mod:`ppu.campaign.declared`): progress, summary, plots.

The run folder gets ``decisions.jsonl`` (one line per experiment: the point, why it was proposed,
the model version, what was pending, the outcome and its tasks), ``summary.json``,
``best_vs_experiments.png`` and ``objective_vs_variables.png``, and the lab's store and documents.
On a simulated lab whose pack brings a truth (``Pack.campaign_truth``), the summary also scores the
campaign on it: the true expected value of each measured point, random search over the same space
with the same budget (median of 20 seeded runs), and the world's optimum. Only scoring reads it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ppu.campaign.declared import (
    LabCampaign,
    LabCampaignResult,
    LabLoop,
    lab_path,
    load_lab_campaign,
    random_points,
    run_lab_campaign,
)
from ppu.campaign.problem import CategoricalVariable


def truth_of(cfg: LabCampaign, campaign_file: Path | None) -> Any | None:
    """The simulated world's truth from the first of the lab's packs that brings one (None: none does,
    or the lab is a running one)."""
    if not cfg.simulated:
        return None
    from ppu import packs
    from ppu.config import load_lab

    lab = load_lab(lab_path(cfg, campaign_file))
    reg = packs.active()
    for name in lab.packs or reg.names:
        hook = reg.packs[name].campaign_truth if name in reg.packs else None
        if hook is not None:
            return packs.resolve(hook, "campaign truth hook")(dict(cfg.world))
    return None


def random_baseline(cfg: LabCampaign, truth: Any, n: int, *, runs: int = 20) -> list[float] | None:
    """Best true expected first objective after 1..n random points of the space: median of ``runs``."""
    obj = next(iter(cfg.problem.objectives))
    sign = cfg.problem.sign(obj)
    points = [p for r in range(runs) for p in random_points(cfg.problem, n, seed=1000 + r)]
    values = truth.expected(points, obj)
    if values is None:
        return None
    curves = np.maximum.accumulate(sign * np.asarray(values, dtype=float).reshape(runs, n), axis=1)
    return [float(sign * v) for v in np.median(curves, axis=0)]


def summarise(result: LabCampaignResult, truth: Any | None = None) -> dict[str, Any]:
    cfg = result.config
    obj = next(iter(cfg.problem.objectives))
    sign = cfg.problem.sign(obj)
    exps = result.experiments
    statuses: dict[str, int] = {}
    for e in exps:
        statuses[e.status] = statuses.get(e.status, 0) + 1
    scored = [(cfg.problem.score(e.outputs), e) for e in exps if e.status != "failed"]
    feasible = [(s, e) for s, e in scored if s is not None]
    best = max(feasible, key=lambda t: t[0])[1] if feasible else None
    out: dict[str, Any] = {
        "campaign": cfg.name, "generator": cfg.optimiser.generator, "objectives": dict(cfg.problem.objectives),
        "constraints": {c: v.model_dump() for c, v in cfg.problem.constraints.items()},
        "experiments": len(exps), "statuses": statuses, "screened": result.screened, "screened_as": result.screened_as,
        "best_measured": None if best is None else best.outputs.get(obj),
        "best_point": None if best is None else {k: v for k, v in best.point.items() if not k.startswith("_")},
        "best_curve": result.best_curve, "wall_s": result.wall_s, "cost": sum(e.cost for e in exps),
        "gp_proposals": sum(1 for e in exps if e.why.startswith("max ")),
    }
    if truth is None:
        return out
    points = [e.point for e in exps]
    true_values = truth.expected(points, obj) if points else np.zeros(0)
    if true_values is None:
        return out
    tv = sign * np.asarray(true_values, dtype=float)
    true_curve = [float(sign * v) for v in np.maximum.accumulate(tv)] if len(tv) else []
    out.update({"true_best_curve": true_curve, "best_true": true_curve[-1] if true_curve else None,
                "true_value_of_best_measured": None if best is None
                else float(truth.expected([best.point], obj)[0]),
                "random_baseline_curve": random_baseline(cfg, truth, max(len(exps), 1))})
    optimum = truth.optimum(obj)
    if optimum is not None:
        point, value = optimum
        out["true_optimum"] = {"value": float(value), "point": point}
        if out["best_true"] is not None and value:
            out["fraction_of_optimum"] = out["best_true"] / float(value)
    return out


def plot_best(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = next(iter(summary["objectives"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    curve = [np.nan if v is None else v for v in summary["best_curve"]]
    n = range(1, len(curve) + 1)
    ax.step(n, curve, where="post", label=f"best measured {obj}", color="tab:blue")
    if "true_best_curve" in summary:
        ax.step(n, summary["true_best_curve"], where="post", color="tab:blue", linestyle="--",
                label="true expected value of the points run")
    rb = summary.get("random_baseline_curve")
    if rb:
        ax.step(range(1, len(rb) + 1), rb, where="post", color="grey", label="random search (median of 20)")
    if "true_optimum" in summary:
        ax.axhline(summary["true_optimum"]["value"], color="black", linewidth=0.8, label="world optimum")
    ax.set_xlabel("experiments")
    ax.set_ylabel(f"{obj} ({summary['objectives'][obj].lower()})")
    ax.set_title(f"{summary['campaign']}: {summary['generator']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_vs_variables(result: LabCampaignResult, path: Path) -> None:
    """The first objective as measured against each numeric variable, coloured by the first categorical
    (crosses: an ``on_error`` outcome); later experiments drawn larger."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problem = result.config.problem
    obj = next(iter(problem.objectives))
    numeric = [n for n, v in problem.variables.items() if not isinstance(v, CategoricalVariable)]
    cat = next((n for n, v in problem.variables.items() if isinstance(v, CategoricalVariable)), None)
    labels = problem.variables[cat].values if cat else [None]  # type: ignore[union-attr]
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, max(len(numeric), 1), figsize=(3.2 * max(len(numeric), 1), 3.2), sharey=True,
                             squeeze=False)
    done = [e for e in result.experiments if e.status != "failed" and e.outputs.get(obj) is not None]
    for ax, name in zip(axes[0], numeric, strict=False):
        for k, lab in enumerate(labels):
            for outcome, marker in ((True, "o"), (False, "x")):
                pts = [e for e in done if (cat is None or e.point.get(cat) == lab)
                       and (e.status == "measured") == outcome]
                if pts:
                    ax.scatter([e.point[name] for e in pts], [e.outputs[obj] for e in pts], marker=marker,
                               s=[14 + 3 * e.index for e in pts], color=colours(k % 10), alpha=0.8,
                               label=(str(lab) if outcome else f"{lab} ({pts[0].status})") if lab is not None
                               else None)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"measured {obj}")
    if cat is not None:
        axes[0][-1].legend(fontsize=7, title=cat, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: LabCampaignResult, run_dir: Path, truth: Any | None = None) -> dict[str, Any]:
    summary = summarise(result, truth)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot_best(summary, run_dir / "best_vs_experiments.png")
    plot_vs_variables(result, run_dir / "objective_vs_variables.png")
    return summary


def run_lab_campaign_cli(config_path: str | Path, run_dir: str | Path, console: Any | None = None) -> dict[str, Any]:
    """Run the campaign in ``config_path`` into ``run_dir`` (emptied first) with a progress bar and a summary."""
    out = Path(run_dir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return asyncio.run(run_lab_campaign_report(config_path, out, console))


async def run_lab_campaign_report(config_path: str | Path, out: Path, console: Any | None = None, *,
                                  loop_class: type[LabLoop] = LabLoop,
                                  on_lab: Callable[[Any, LabLoop], None] | None = None) -> dict[str, Any]:
    """The campaign in ``config_path`` run into the folder ``out`` with a progress bar; its report and
    printed summary. ``loop_class``: e.g. a Prefect flow's loop, whose steps are task runs."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = console or Console()
    path = Path(config_path)
    cfg = load_lab_campaign(path)
    obj = next(iter(cfg.problem.objectives))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("best " + obj + " {task.fields[best]}"), TimeElapsedColumn(), console=console) as bar:
        job = bar.add_task("experiments", total=cfg.budget.experiments, best="-")
        result = await run_lab_campaign(
            cfg, out, campaign_file=path, loop_class=loop_class, on_lab=on_lab,
            on_progress=lambda n, b: bar.update(job, completed=n, best="-" if b is None else f"{b:.3g}"),
            on_review=lambda tid, cap: console.log(
                f"[yellow]{tid} ({cap}) was interrupted and waits for a person[/]: ppu review {tid} "
                "--decision retry|fail|result (the campaign goes on meanwhile)"))
    summary = write_report(result, out, truth_of(cfg, path))
    table = Table(title=f"campaign {cfg.name}")
    table.add_column("figure")
    table.add_column("value", justify="right")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    outcomes = ", ".join(f"{k} {v}" for k, v in summary["statuses"].items())
    rows = [("experiments", f"{summary['experiments']} ({outcomes})"),
            ("screened on the twin", str(summary["screened"])),
            (f"best measured {obj}", fmt(summary["best_measured"]))]
    if "true_best_curve" in summary:
        rows += [("its true expected value", fmt(summary["true_value_of_best_measured"])),
                 ("best true value among the points run", fmt(summary["best_true"])),
                 ("random search, same budget (median of 20)", fmt((summary["random_baseline_curve"] or [None])[-1]))]
    if "true_optimum" in summary:
        rows.append(("world optimum", fmt(summary["true_optimum"]["value"])))
    rows.append(("wall time (s)", f"{summary['wall_s']:.1f}"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if summary["best_point"]:
        console.print(f"best point: {summary['best_point']}")
    console.print(f"run folder: {out}  (decisions.jsonl, summary.json, best_vs_experiments.png, "
                  "objective_vs_variables.png)")
    return summary


def runner_for(config_path: str | Path) -> Any | None:
    """How ``ppu campaign run`` and the Prefect flow run a campaign file that declares its variables
    and names its lab (:func:`run_lab_campaign_cli`); None for any other campaign file (the default
    loop on a world, or a replay), whose own loader says what is wrong with it."""
    import yaml

    from ppu.campaign.declared import is_lab_campaign
    from ppu.errors import ConfigError

    path = Path(config_path)
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"campaign file {path} cannot be read: {exc}", hint="pass a campaign YAML file") from None
    return run_lab_campaign_cli if is_lab_campaign(raw) else None
