"""The flow lab's closed loop: screen on the twin, then propose -> react -> HPLC -> learn.

The loop talks to the orchestrator only through a client (an ``EmbeddedLab`` over loopback ZMQ
for the simulated lab), exactly as it would to a remote lab: ``predict.yield`` tasks screen random
recipes on the digital twin, each experiment is a ``react.flow`` task and, on the fraction it
made, a ``measure.hplc`` task. Up to ``parallel.in_flight`` experiments are in their pipelines at
once (the HPLC of one fraction runs while the reactor makes the next), and every proposal is made
with the others still in flight passed to the optimiser as pending. A clogged run is a measured
outcome (no product: yield 0). A task interrupted by a device fault waits for a person (it is
never re-run by the loop); an experiment that person fails is left out of the data.

Output in the run folder: ``decisions.jsonl`` (one line per experiment: recipe, why, what came
back), ``summary.json``, ``best_so_far.png`` (best yield against experiments, with the random
baseline and the world's optimum) and ``yield_vs_parameters.png``.

Run it: ``python -m ppu.simulators.flowchem.campaign campaigns/flowchem.yaml --run-dir runs/flowchem``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ppu.campaign.workflow import Step, Workflow, run_workflow
from ppu.config import LabConfig, load_lab, load_yaml_model
from ppu.drivers.flowchem.models import FlowRecipe
from ppu.errors import ConfigError, PPUError
from ppu.models import Autonomy, Strict, TaskState
from ppu.protocol import WaitTimeout
from ppu.simulators.flowchem.instruments import FlowReactorModel, HPLCModel
from ppu.simulators.flowchem.optimizer import MixedBoxOptimizer, Proposal
from ppu.simulators.flowchem.pack import register
from ppu.simulators.flowchem.world import FlowWorld, FlowWorldConfig

log = logging.getLogger(__name__)
REACT, HPLC, PREDICT = "react.flow", "measure.hplc", "predict.yield"
PHYSICAL_TYPES = ("flow_reactor", "hplc")


class BudgetSpec(Strict):
    experiments: int = Field(16, ge=1, le=10_000, description="reactions the campaign may run")


class ParallelSpec(Strict):
    in_flight: int = Field(2, ge=1, le=64, description="experiments in their react -> HPLC pipelines at once")


class OptimiserSpec(Strict):
    strategy: Literal["qlognei", "random"] = Field("qlognei", description="BoTorch qLogNEI, or random search")
    n_init: int = Field(4, ge=1, le=100, description="experiments picked from the twin's screen before the GP")
    screen_size: int = Field(256, ge=0, le=100_000, description="random recipes scored on the twin first (0: none)")


def default_workflow() -> Workflow:
    """React, then the online HPLC on what came out; costs in lab hours (typical run, one injection)."""
    return Workflow.model_validate({
        "steps": [
            {"name": "react", "capability": REACT, "inputs": {"recipe": "$candidate"}, "cost": 0.5},
            {"name": "hplc", "capability": HPLC, "inputs": {"sample_id": "$react.sample_id"}, "cost": 0.2},
        ],
        "outputs": {"sample_id": "react.sample_id", "yield": "hplc.product_yield", "impurity": "hplc.impurity"}})


class FlowCampaignConfig(Strict):
    """A flow-chemistry campaign (``campaigns/flowchem.yaml``)."""

    pack: Literal["flowchem"] = Field("flowchem", description="the pack that runs this campaign file")
    name: str = Field("flowchem", pattern=r"^[A-Za-z0-9_.\-]+$", description="campaign name (task tag)")
    seed: int = Field(0, description="seeds the optimiser and the simulated instruments")
    time_scale: float = Field(1e5, gt=0, le=1e9, description="simulated lab time runs this much faster")
    autonomy: Autonomy = Field(Autonomy.autonomous, description="autonomy level for the physical backends")
    lab: str | None = Field(None, description="lab YAML to run on (default: one reactor, one HPLC, the twin)")
    world: FlowWorldConfig = Field(default_factory=FlowWorldConfig, description="the simulated kinetic world")
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    optimiser: OptimiserSpec = Field(default_factory=OptimiserSpec)
    workflow: Workflow = Field(default_factory=default_workflow, description="per experiment: steps, wiring, "
                               "gates, costs; the loop reads yield, impurity and sample_id from its outputs")

    @field_validator("workflow")
    @classmethod
    def _outputs(cls, wf: Workflow) -> Workflow:
        missing = [o for o in ("yield", "impurity") if o not in wf.outputs]
        if missing:
            raise ValueError(f"outputs lacks {missing}: the loop reads them (e.g. yield: hplc.product_yield)")
        return wf


def load_flow_campaign(path: str | Path) -> FlowCampaignConfig:
    return load_yaml_model(path, FlowCampaignConfig, "flow campaign config", "see campaigns/flowchem.yaml")


def lab_config(cfg: FlowCampaignConfig, run_dir: Path, base: Path | None = None) -> LabConfig:
    """The lab the campaign runs on, its physical backends pointed at the campaign's run folder and world."""
    if cfg.lab:
        path = Path(cfg.lab)
        if not path.is_absolute() and not path.exists() and base is not None:
            path = base / path
        raw = load_lab(path).model_dump()
    else:
        raw = {"name": cfg.name, "backends": [{"type": "flow_reactor", "name": "reactor-1"},
                                              {"type": "hplc", "name": "hplc-1"},
                                              {"type": "flow_twin", "name": "twin", "batch_size": 512}]}
    phys = {"time_scale": cfg.time_scale, "seed": cfg.seed, "lab": cfg.name, "run_dir": str(run_dir / "lab"),
            "world": cfg.world.model_dump(), "simulated": True}
    backends = [{**b, **phys} if b.get("type") in PHYSICAL_TYPES else b for b in raw["backends"]]
    autonomy = {"default": "autonomous", "capabilities": {REACT: cfg.autonomy.value, HPLC: cfg.autonomy.value}}
    return LabConfig.model_validate({**raw, "name": cfg.name, "run_dir": str(run_dir), "store": None,
                                     "packs": ["flowchem"], "autonomy": autonomy, "backends": backends})


@dataclass
class Experiment:
    index: int
    recipe: FlowRecipe
    why: str
    status: str = "pending"  # measured, clogged, failed (waiting_for_review while a person decides)
    product_yield: float | None = None
    impurity: float | None = None
    sample_id: str | None = None
    tasks: list[str] = field(default_factory=list)
    error: str | None = None
    predicted: float | None = None

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "recipe": self.recipe.model_dump(mode="json")}


@dataclass
class FlowCampaignResult:
    config: FlowCampaignConfig
    experiments: list[Experiment]  # in the order they finished
    best_curve: list[float]
    wall_s: float

    def instrument_hours(self) -> float:
        """Lab time the instruments were busy, as their models reckon it (heating from 25 degC each run)."""
        reactor, hplc = FlowReactorModel(), HPLCModel()
        busy = sum(reactor.duration_s(e.recipe, 2.0) for e in self.experiments)
        busy += sum(hplc.duration_s(10.0) for e in self.experiments if e.sample_id)
        return busy / 3600.0


class FlowCampaignLoop:
    """One campaign's loop over a client (see the module docstring)."""

    review_poll_s = 30.0  # how often a wait checks whether its task went to a person for review

    def __init__(self, client: Any, cfg: FlowCampaignConfig, run_dir: Path,
                 on_progress: Callable[[int, float], None] | None = None,
                 on_review: Callable[[str, str], None] | None = None):
        self.client = client
        self.on_review = on_review
        self.cfg = cfg
        self.run_dir = run_dir
        self.on_progress = on_progress
        self.opt = MixedBoxOptimizer(seed=cfg.seed, n_init=cfg.optimiser.n_init, strategy=cfg.optimiser.strategy)
        self.done: list[Experiment] = []
        self.best_curve: list[float] = []
        self.pending: dict[int, FlowRecipe] = {}
        self._decisions = (run_dir / "decisions.jsonl").open("w")

    async def task(self, capability: str, inputs: dict[str, Any], exp: Experiment) -> tuple[str, dict[str, Any]]:
        """Submit one task and wait for it; returns (state, outputs or {'error': ...}).

        An interrupted physical task waits for a person (it is never re-run by the loop): the loop
        says so once, keeps the other pipelines going, and takes whatever the person decides
        (retry, fail, or a result entered by hand)."""
        [tid] = await self.client.submit([{"capability": capability, "inputs": inputs, "campaign": self.cfg.name}])
        exp.tasks.append(tid)
        told = False
        while True:
            try:
                [task] = await self.client.wait([tid], timeout=self.review_poll_s)
                break
            except WaitTimeout:
                if not told and (await self.client.task(tid)).state is TaskState.needs_review:
                    told = True
                    exp.status = "waiting_for_review"
                    if self.on_review is not None:
                        self.on_review(tid, capability)
                    log.warning("%s (%s) was interrupted and waits for a person: ppu review %s", tid, capability, tid)
        res = await self.client.result(tid)
        if task.state is TaskState.succeeded and res is not None:
            return "succeeded", res.outputs
        return task.state.value, {"error": task.error or (res.error if res else "no result")}

    async def screen(self) -> None:
        n = self.cfg.optimiser.screen_size
        if n == 0 or self.cfg.optimiser.strategy == "random":
            return
        recipes = self.opt.random_recipes(n)
        ids = await self.client.submit([{"capability": PREDICT, "inputs": {"recipe": r.model_dump(mode="json")},
                                         "campaign": self.cfg.name} for r in recipes])
        await self.client.wait(ids, timeout=600)
        scores = []
        for tid in ids:
            res = await self.client.result(tid)
            out = res.outputs if res is not None and res.outputs else {"mean": 0.0, "std": 0.0}
            scores.append(float(out["mean"]) + float(out["std"]))  # optimistic: worth a look
        self.opt.set_screen(recipes, scores)

    async def experiment(self, index: int, proposal: Proposal) -> Experiment:
        """The declared workflow for one recipe (default: react, then HPLC)."""
        exp = Experiment(index=index, recipe=proposal.recipe, why=proposal.why, predicted=proposal.mean)

        async def run_step(step: Step, inputs: dict[str, Any], on_review: Any) -> tuple[str, dict[str, Any]]:
            return await self.task(step.capability, inputs, exp)

        run = await run_workflow(self.cfg.workflow, proposal.recipe.model_dump(mode="json"), run_step)
        exp.sample_id = run.outputs.get("sample_id")
        if run.outputs.get("yield") is not None:
            exp.status, exp.product_yield, exp.impurity = "measured", run.outputs["yield"], run.outputs["impurity"]
        elif any("clogged" in e for e in run.errors.values()):
            exp.status, exp.product_yield, exp.impurity = "clogged", 0.0, 0.0  # a result: this recipe gives nothing
        if exp.status in ("pending", "waiting_for_review"):
            exp.status = "failed"
            exp.error = next(iter(run.errors.values()), None) or "; ".join(
                f"{k}: {v}" for k, v in run.states.items() if v != "succeeded")
        return exp

    def finish(self, exp: Experiment) -> None:
        self.pending.pop(exp.index, None)
        if exp.product_yield is not None:
            self.opt.observe(exp.recipe, exp.product_yield)
        self.done.append(exp)
        best = max([e.product_yield for e in self.done if e.product_yield is not None], default=0.0)
        self.best_curve.append(best)
        self._decisions.write(json.dumps(exp.record()) + "\n")
        self._decisions.flush()
        if self.on_progress:
            self.on_progress(len(self.done), best)

    async def run(self) -> None:
        await self.screen()
        running: set[asyncio.Task[Experiment]] = set()
        proposed = 0
        try:
            while proposed < self.cfg.budget.experiments or running:
                while proposed < self.cfg.budget.experiments and len(running) < self.cfg.parallel.in_flight:
                    prop = await asyncio.to_thread(self.opt.propose, list(self.pending.values()))
                    self.pending[proposed] = prop.recipe
                    running.add(asyncio.create_task(self.experiment(proposed, prop)))
                    proposed += 1
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    self.finish(t.result())
        finally:
            for t in running:
                t.cancel()
            self._decisions.close()


async def run_flow_campaign(cfg: FlowCampaignConfig, run_dir: Path, *, base: Path | None = None,
                            on_progress: Callable[[int, float], None] | None = None,
                            on_review: Callable[[str, str], None] | None = None,
                            on_lab: Callable[[Any, FlowCampaignLoop], None] | None = None) -> FlowCampaignResult:
    """Run one campaign on the simulated flow lab (an EmbeddedLab); the run folder gets the store and logs."""
    from ppu.transport.lab import EmbeddedLab

    register()
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    async with EmbeddedLab(lab_config(cfg, run_dir, base), timeout=30.0) as client:
        loop = FlowCampaignLoop(client, cfg, run_dir, on_progress, on_review)
        if on_lab is not None:
            on_lab(client, loop)  # e.g. a person (or a test) who answers reviews through the same lab
        await loop.run()
    return FlowCampaignResult(config=cfg, experiments=loop.done, best_curve=loop.best_curve,
                              wall_s=time.time() - t0)


def random_baseline(world: FlowWorld, n: int, *, runs: int = 20, seed: int = 1000) -> np.ndarray:
    """Best true expected yield after 1..n random experiments: median over ``runs`` seeded runs."""
    curves = []
    for r in range(runs):
        recipes = MixedBoxOptimizer(seed=seed + r, strategy="random").random_recipes(n)
        curves.append(np.maximum.accumulate(world.expected_yield_batch(recipes)))
    return np.median(np.array(curves), axis=0)


def summarise(result: FlowCampaignResult, *, optimum: bool = True) -> dict[str, Any]:
    """Figures of a finished campaign, scored against the world's truth (the only sanctioned reader)."""
    world = FlowWorld(result.config.world)
    exps = result.experiments
    true = [world.expected_yield(e.recipe) for e in exps]
    true_best = list(np.maximum.accumulate(true)) if true else []
    measured = [e for e in exps if e.status == "measured"]
    best = max(measured, key=lambda e: e.product_yield or 0.0) if measured else None
    out: dict[str, Any] = {
        "campaign": result.config.name, "strategy": result.config.optimiser.strategy, "experiments": len(exps),
        "measured": len(measured), "clogged": sum(e.status == "clogged" for e in exps),
        "failed": sum(e.status == "failed" for e in exps),
        "best_measured_yield": best.product_yield if best else None,
        "best_recipe": best.recipe.model_dump(mode="json") if best else None,
        "best_true_yield": float(true_best[-1]) if true_best else None,
        "best_curve": result.best_curve, "true_best_curve": [float(v) for v in true_best],
        "random_baseline_curve": [float(v) for v in random_baseline(world, max(len(exps), 1))],
        "wall_s": result.wall_s, "instrument_hours": result.instrument_hours(),
    }
    if optimum:
        recipe, value = world.true_optimum()
        out["true_optimum"] = {"yield": value, "recipe": recipe.model_dump(mode="json")}
    return out


def write_report(result: FlowCampaignResult, run_dir: Path, *, optimum: bool = True) -> dict[str, Any]:
    from ppu.simulators.flowchem.plots import plot_best, plot_yield_vs_parameters

    summary = summarise(result, optimum=optimum)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_best(summary, run_dir / "best_so_far.png")
    plot_yield_vs_parameters(result.experiments, run_dir / "yield_vs_parameters.png")
    return summary


def run_flow_campaign_cli(config_path: str | Path, run_dir: str | Path, console: Any | None = None) -> dict[str, Any]:
    """Run the campaign in ``config_path`` into ``run_dir`` (emptied first) with a progress bar and a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = console or Console()
    cfg = load_flow_campaign(config_path)
    out = Path(run_dir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    base = Path(config_path).resolve().parent.parent
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("best yield {task.fields[best]:.3f}"), TimeElapsedColumn(), console=console) as bar:
        job = bar.add_task("experiments", total=cfg.budget.experiments, best=0.0)
        result = asyncio.run(run_flow_campaign(
            cfg, out, base=base, on_progress=lambda n, b: bar.update(job, completed=n, best=b),
            on_review=lambda tid, cap: console.log(
                f"[yellow]{tid} ({cap}) was interrupted and waits for a person[/]: ppu review {tid} "
                "--decision retry|fail|result (the campaign goes on meanwhile)")))
    summary = write_report(result, out)
    table = Table(title=f"campaign {cfg.name}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    opt = summary.get("true_optimum", {}).get("yield")
    rows = [("experiments (measured / clogged)", f"{summary['experiments']} ({summary['measured']} / "
             f"{summary['clogged']})"),
            ("best measured yield", f"{summary['best_measured_yield'] or 0:.3f}"),
            ("its true expected yield", f"{summary['best_true_yield'] or 0:.3f}"),
            ("random search, same budget (median)", f"{summary['random_baseline_curve'][-1]:.3f}"),
            ("world optimum", f"{opt:.3f}" if opt is not None else "-"),
            ("instrument hours (lab) / wall time (s)",
             f"{summary['instrument_hours']:.1f} / {summary['wall_s']:.1f}")]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if summary["best_recipe"]:
        console.print(f"best recipe: {summary['best_recipe']}")
    console.print(f"plots and decisions in {out}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppu.simulators.flowchem.campaign",
                                     description="Run a flow-chemistry closed-loop campaign on the simulated lab.")
    parser.add_argument("config", type=Path, help="campaign YAML, e.g. campaigns/flowchem.yaml")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/flowchem"), help="run folder (emptied first)")
    args = parser.parse_args(argv)
    try:
        run_flow_campaign_cli(args.config, args.run_dir)
    except (ConfigError, PPUError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
