"""A campaign on a lab from its file alone: a declared problem, a declared workflow, a generator.

    name: my-campaign
    lab: labs/my-lab.yaml            # the lab it runs on (simulated: its packs point it at the run folder)
    world: {seed: 0}                 # the simulated world's settings, handed to the lab's packs
    problem:                         # gest-api VOCS (ppu.campaign.problem): the variables are the search space
      variables: {temperature_c: [40, 160], catalyst: {type: categorical, values: [A, B]}}
      objectives: {yield: MAXIMIZE}
    workflow:                        # per candidate (ppu.campaign.workflow): steps, wiring, gates, costs
      steps: [...]
      outputs: {yield: measure.product_yield}
    screening: {capability: predict.yield, inputs: {recipe: $candidate}, score: mean, uncertainty: std}
    budget: {experiments: 20}
    optimiser: {generator: botorch, n_init: 4, in_flight: 2}

The loop (:class:`LabLoop`) talks to the orchestrator only through a client: it screens ``size``
random points of the space on a digital twin (``screening``; the generator's initial design takes
the best of them), then keeps ``in_flight`` candidates in their workflows, asking the generator for
one point whenever one finishes, with the others passed as pending. Every candidate's workflow is
the declared one; a failure the workflow declares an outcome (``on_error``) is a result, any other
is left out of the data. An interrupted physical task waits for a person (never re-run by the loop).
Nothing here names a domain: what a lab file needs to run as a campaign's simulated lab, and the
truth a simulated campaign is scored on, come from the lab's packs (``Pack.campaign_lab``,
``Pack.campaign_truth``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from ppu.campaign.generators import GENERATORS, BoTorchGenerator, Generator, GeneratorSpec
from ppu.campaign.problem import Problem, as_number
from ppu.campaign.workflow import Step, Workflow, resolve_inputs, run_workflow, wait_through_review
from ppu.config import LabConfig, load_lab, load_yaml_model
from ppu.errors import ConfigError
from ppu.models import Autonomy, Strict, TaskState

log = logging.getLogger(__name__)
_WOUND_DOWN = {"error": "the campaign was wound down before this step"}  # a step that was not submitted


class Budget(Strict):
    experiments: int = Field(20, ge=1, le=100_000, description="candidates the campaign may run (physical "
                             "experiments: each one workflow)")


class Screening(Strict):
    """A digital twin scores random points of the space first; BoTorch's initial design takes the best of them
    (the random and Sobol baselines take no screen: it is skipped for them)."""

    capability: str = Field(min_length=1, description="the twin's capability, e.g. predict.yield")
    inputs: dict[str, Any] = Field(description="its inputs, as a workflow step's: $candidate, $candidate.NAME, "
                                   "literals")
    score: str = Field("mean", min_length=1, description="the twin's output that ranks the points (larger is "
                       "better for a maximised first objective, smaller for a minimised one)")
    uncertainty: str | None = Field(None, description="an output added to the score (optimistic: worth a look)")
    size: int = Field(256, ge=1, le=100_000, description="random points of the space the twin scores")


class LabCampaign(Strict):
    """A campaign whose problem declares its variables and that runs on a lab file (see the module doc)."""

    name: str = Field("campaign", pattern=r"^[A-Za-z0-9_.\-]+$", description="campaign name (task tag)")
    seed: int = Field(0, description="seeds the generator, the screen and the simulated instruments")
    time_scale: float = Field(20_000.0, gt=0, le=1e9, description="simulated lab time runs this much faster")
    autonomy: Autonomy = Field(Autonomy.autonomous, description="autonomy of the workflow's physical steps")
    lab: str = Field(description="the lab YAML the campaign runs on (path as given, or next to the campaign "
                     "file, or in the folder above it)")
    simulated: bool = Field(True, description="false: the lab is already running (an orchestrator at its "
                            "orchestrator.bind, or at `connect`); nothing reads a simulated truth")
    connect: str | None = Field(None, description="address of the running lab (simulated: false)")
    world: dict[str, Any] = Field(default_factory=dict, description="the simulated world's settings, handed "
                                  "to the lab's packs (simulated: true)")
    problem: Problem = Field(description="the declared problem (gest-api VOCS); its variables are the space")
    workflow: Workflow = Field(description="per candidate: steps, wiring, gates, costs; its outputs name every "
                               "objective and constraint")
    screening: Screening | None = Field(None, description="screen on a digital twin first (none: Sobol start)")
    budget: Budget = Field(default_factory=Budget)
    optimiser: GeneratorSpec = Field(default_factory=GeneratorSpec)

    @model_validator(mode="after")
    def _consistent(self) -> LabCampaign:
        if not self.problem.variables:
            raise ValueError("problem.variables: declare the search space (a campaign on a lab proposes points "
                             "of it)")
        needed = [*self.problem.objectives, *self.problem.constraints]
        missing = [o for o in needed if o not in self.workflow.outputs]
        if missing:
            raise ValueError(f"workflow.outputs lacks {missing}: every objective and constraint is read from a "
                             f"step (e.g. {missing[0]}: STEP.FIELD)")
        return self


def load_lab_campaign(path: str | Path) -> LabCampaign:
    return load_yaml_model(path, LabCampaign, "campaign config", "see campaigns/flowchem.yaml")


def is_lab_campaign(raw: Any) -> bool:
    """A campaign file for this loop names the lab it runs on (``lab:``); the others take theirs from ``world``."""
    return isinstance(raw, dict) and "lab" in raw


def lab_path(cfg: LabCampaign, campaign_file: Path | None) -> Path:
    path = Path(cfg.lab)
    tries = [path]
    if not path.is_absolute() and campaign_file is not None:
        here = campaign_file.resolve().parent
        tries += [here / path, here.parent / path]
    found = next((p for p in tries if p.is_file()), None)
    if found is None:
        raise ConfigError(f"lab file {cfg.lab} does not exist", field="lab",
                          hint="give the lab YAML's path (as given, next to the campaign file, or one folder up)")
    return found


def lab_config(cfg: LabCampaign, run_dir: Path, campaign_file: Path | None = None) -> LabConfig:
    """The lab file made this campaign's simulated lab: each of its packs with a ``campaign_lab`` hook points
    its backends at the run folder, the world, the time scale and the seed; the workflow's physical steps
    get the campaign's autonomy; the store is the run folder's."""
    from ppu import capabilities, packs
    from ppu.models import ActionClass

    lab = load_lab(lab_path(cfg, campaign_file))
    raw = lab.model_dump()
    reg = packs.active()
    settings = {"name": cfg.name, "seed": cfg.seed, "time_scale": cfg.time_scale, "run_dir": str(run_dir),
                "world": dict(cfg.world)}
    for name in lab.packs or reg.names:
        hook = reg.packs[name].campaign_lab if name in reg.packs else None
        if hook is not None:
            raw = packs.resolve(hook, "campaign lab hook")(raw, settings)
    once = [s.capability for s in cfg.workflow.steps if capabilities.get(s.capability).action is ActionClass.once]
    autonomy = dict(raw.get("autonomy") or {})
    autonomy["capabilities"] = {**(autonomy.get("capabilities") or {}), **{c: cfg.autonomy.value for c in once}}
    return LabConfig.model_validate({**raw, "name": cfg.name, "run_dir": str(run_dir), "store": None,
                                     "autonomy": autonomy})


def make_generator(cfg: LabCampaign) -> Generator:
    cls = GENERATORS[cfg.optimiser.generator]
    if cls is BoTorchGenerator:
        return BoTorchGenerator(cfg.problem, seed=cfg.seed, n_init=cfg.optimiser.n_init)
    return cls(cfg.problem, seed=cfg.seed)


def random_points(problem: Problem, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` uniformly random points of the declared space (labels and levels uniform too)."""
    rng = np.random.default_rng([seed, 4099])
    return [{**p} for p in problem.decode(rng.random((n, problem.width)))]


@dataclass
class Experiment:
    index: int
    point: dict[str, Any]
    why: str
    model_version: str
    pending: list[int]
    status: str = "pending"  # measured, an on_error outcome (e.g. clogged), failed
    outputs: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    error: str | None = None
    cost: float = 0.0
    finished_at_s: float | None = None


class LabLoop:
    """One campaign's loop over a client (see the module docstring). The ``do_*`` methods are its steps,
    which a Prefect flow overrides to run each as a task run; ``stopping`` winds it down: nothing new is
    proposed or submitted, what runs ends."""

    review_poll_s = 30.0  # how often a wait checks whether its task went to a person for review

    def __init__(self, client: Any, cfg: LabCampaign, run_dir: Path, *,
                 on_progress: Callable[[int, float | None], None] | None = None,
                 on_review: Callable[[str, str], None] | None = None):
        self.client = client
        self.cfg = cfg
        self.run_dir = run_dir
        self.on_progress = on_progress
        self.on_review = on_review
        self.gen = make_generator(cfg)
        self.done: list[Experiment] = []  # in the order they finished
        self.best_curve: list[float | None] = []  # best feasible first objective after each, as measured
        self.screened = 0
        self.screened_as = ""  # "columnar" (blocks of rows) or "tasks" (one a row)
        self.t0 = time.time()
        self.stopping = False
        self.lab_in_use = asyncio.Lock()  # held by whoever still needs the lab (a wind-down): it closes after
        self._decisions = (run_dir / "decisions.jsonl").open("w")

    # ---- the steps (a flow overrides these to run them as Prefect tasks) -------------------------

    async def do_screen(self) -> None:
        await self.screen()

    async def do_propose(self) -> dict[str, Any]:
        [point] = await asyncio.to_thread(self.gen.suggest, 1)  # a GP fit must not stall the loop
        return dict(point)

    async def do_step(self, step: str, capability: str, inputs: dict[str, Any],
                      tasks: list[str]) -> tuple[str, dict[str, Any]]:
        """One declared workflow step as one task (``step`` names it for a Prefect task run)."""
        return await self.task(capability, inputs, tasks)

    async def task(self, capability: str, inputs: dict[str, Any], tasks: list[str]) -> tuple[str, dict[str, Any]]:
        """Submit one task and wait for it: (state, outputs) or (state, {'error': ...}). An interrupted
        physical task waits for a person; the loop says so once and takes what the person decides. Wound down
        before it left (a step's task run may start after the wind-down began), nothing is submitted."""
        if self.stopping:
            return TaskState.cancelled.value, dict(_WOUND_DOWN)
        [tid] = await self.client.submit([{"capability": capability, "inputs": inputs, "campaign": self.cfg.name}])
        tasks.append(tid)
        on_review = self.on_review
        task = await wait_through_review(self.client, tid, capability, self.review_poll_s,
                                         None if on_review is None else lambda: on_review(tid, capability))
        res = await self.client.result(tid)
        if task.state is TaskState.succeeded and res is not None:
            return "succeeded", dict(res.outputs)
        return task.state.value, {"error": task.error or (res.error if res else None) or task.state.value}

    async def screen(self) -> None:
        """Score random points on the twin: as columnar tasks (blocks of rows, results as columns) when its
        capability's encoder has a columnar form, else one task each (the twin's backend batches them)."""
        sc = self.cfg.screening
        if sc is None or not isinstance(self.gen, BoTorchGenerator):
            return
        points = random_points(self.cfg.problem, sc.size, self.cfg.seed)
        inputs = [resolve_inputs(sc.inputs, _candidate(p), {}) for p in points]
        coding = _columnar(sc.capability)
        rows: list[dict[str, Any] | None]
        if coding is not None:
            out, _ = await self.client.screen(sc.capability, coding(inputs), campaign=self.cfg.name, timeout=600)
            if sc.score not in out:
                raise ConfigError(f"the screen on {sc.capability} gave no {sc.score!r} column (it gave {sorted(out)})",
                                  field="screening.score", hint="name an output the twin returns")
            rows = [{k: float(v[i]) for k, v in out.items() if np.ndim(v) == 1} for i in range(len(points))]
            self.screened_as = "columnar"
        else:
            ids = await self.client.submit([{"capability": sc.capability, "campaign": self.cfg.name, "inputs": i}
                                            for i in inputs])
            await self.client.wait(ids, timeout=600)
            rows = []
            for tid in ids:
                res = await self.client.result(tid)
                rows.append(dict(res.outputs) if res is not None and res.outputs else None)
            self.screened_as = "tasks"
        sign = self.cfg.problem.sign(next(iter(self.cfg.problem.objectives)))
        kept, scores = [], []
        for p, row in zip(points, rows, strict=True):
            y = as_number(row.get(sc.score)) if row is not None else None
            if y is None or not np.isfinite(y):
                continue
            spread = as_number(row.get(sc.uncertainty)) if sc.uncertainty and row is not None else None
            kept.append(p)
            scores.append(sign * y + (spread or 0.0))
        if not kept:
            raise ConfigError(f"the screen on {sc.capability} gave no {sc.score!r} output", field="screening.score",
                              hint="name an output the twin returns")
        self.screened = len(kept)
        self.gen.warm_start(kept, scores)

    async def experiment(self, exp: Experiment) -> Experiment:
        async def run_step(step: Step, inputs: dict[str, Any], on_review: Any) -> tuple[str, dict[str, Any]]:
            if self.stopping:  # wound down: no next step is submitted
                return TaskState.cancelled.value, dict(_WOUND_DOWN)
            return await self.do_step(step.name, step.capability, inputs, exp.tasks)

        run = await run_workflow(self.cfg.workflow, _candidate(exp.point), run_step)
        exp.outputs, exp.cost = run.outputs, run.cost
        objectives = list(self.cfg.problem.objectives)
        if run.outcome is not None:
            exp.status = run.outcome
        elif all(as_number(run.outputs.get(o)) is not None for o in objectives):
            exp.status = "measured"
        else:
            exp.status = "failed"
            exp.error = next(iter(run.errors.values()), None) or "; ".join(
                f"{k}: {v}" for k, v in run.states.items() if v != "succeeded")
        exp.finished_at_s = round(time.time() - self.t0, 3)
        return exp

    def finish(self, exp: Experiment) -> None:
        result = {**exp.point, **{k: v for k, v in exp.outputs.items() if exp.status != "failed"}}
        self.gen.ingest([result])  # a failed one is no longer pending; it carries no outputs
        self.done.append(exp)
        scores = [self.cfg.problem.score(e.outputs) for e in self.done if e.status != "failed"]
        best = max((s for s in scores if s is not None), default=None)
        obj = next(iter(self.cfg.problem.objectives))
        self.best_curve.append(None if best is None else self.cfg.problem.sign(obj) * best)
        self._decisions.write(json.dumps(asdict(exp), default=str) + "\n")
        self._decisions.flush()
        if self.on_progress:
            self.on_progress(len(self.done), self.best_curve[-1])

    async def run(self) -> None:
        await self.do_screen()
        running: set[asyncio.Task[Experiment]] = set()
        proposed = 0
        n = self.cfg.budget.experiments
        try:
            while (proposed < n and not self.stopping) or running:
                while proposed < n and len(running) < self.cfg.optimiser.in_flight and not self.stopping:
                    pending = sorted(self.gen.pending)
                    point = await self.do_propose()
                    exp = Experiment(index=proposed, point=point,
                                     why=getattr(self.gen, "last_why", "") or self.gen.name,
                                     model_version=getattr(self.gen, "model_version", self.gen.name), pending=pending)
                    running.add(asyncio.create_task(self.experiment(exp)))
                    proposed += 1
                if not running:  # wound down before anything ran
                    break
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for t in sorted(finished, key=lambda t: t.result().index):
                    self.finish(t.result())
        finally:
            for t in running:
                t.cancel()
            self._decisions.close()
            self.gen.finalize()


def _columnar(capability: str) -> Callable[[list[dict[str, Any]]], dict[str, Any]] | None:
    """The capability's inputs -> block columns, when its encoder has that form (None: one task a row)."""
    from ppu import capabilities
    from ppu.digital.coding import Coding

    if not capabilities.get(capability).encoder:
        return None
    return Coding.of(capability).columns


def _candidate(point: dict[str, Any]) -> dict[str, Any]:
    """The point as a capability reads it: its variables and constants, without the generator's ``_id``."""
    return {k: v for k, v in point.items() if not k.startswith("_")}


@dataclass
class LabCampaignResult:
    config: LabCampaign
    experiments: list[Experiment]  # in the order they finished
    best_curve: list[float | None]
    screened: int
    wall_s: float
    screened_as: str = ""  # "columnar" (blocks of rows), "tasks" (one a row) or "" (no screen)


async def run_lab_campaign(cfg: LabCampaign, run_dir: Path, *, campaign_file: Path | None = None,
                           on_progress: Callable[[int, float | None], None] | None = None,
                           on_review: Callable[[str, str], None] | None = None,
                           on_lab: Callable[[Any, LabLoop], None] | None = None,
                           loop_class: type[LabLoop] = LabLoop) -> LabCampaignResult:
    """Run the campaign on its simulated lab (an EmbeddedLab in this process), or on a running one
    (``simulated: false``) through its client; the run folder gets decisions, the store and the logs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    async with lab_client(cfg, run_dir, campaign_file) as client:
        loop = loop_class(client, cfg, run_dir, on_progress=on_progress, on_review=on_review)
        if on_lab is not None:
            on_lab(client, loop)  # e.g. a person (or a test) who answers reviews through the same lab
        await loop.run()
        async with loop.lab_in_use:  # a wind-down that still needs the lab ends first
            pass
    return LabCampaignResult(config=cfg, experiments=loop.done, best_curve=loop.best_curve, screened=loop.screened,
                             screened_as=loop.screened_as, wall_s=time.time() - t0)


def lab_client(cfg: LabCampaign, run_dir: Path, campaign_file: Path | None) -> Any:
    if cfg.simulated:
        from ppu.transport.lab import EmbeddedLab

        return EmbeddedLab(lab_config(cfg, run_dir, campaign_file), timeout=30.0)
    import os

    from ppu.transport.client import AsyncPPUClient
    from ppu.transport.security import peer_keys
    from ppu.transport.serve import nobody_listens

    lab = load_lab(lab_path(cfg, campaign_file))
    address = cfg.connect or lab.orchestrator.bind
    if nobody_listens(address):
        raise ConfigError(f"no orchestrator answers at {address}", field="connect" if cfg.connect else "lab",
                          hint=f"start the lab first: ppu orchestrator -c {cfg.lab}; ppu worker -c {cfg.lab}")
    curve = peer_keys(lab.security, os.environ.get("PPU_KEY", "client")) if lab.security.curve else None
    return AsyncPPUClient(address, timeout=30.0, curve=curve, actor=os.environ.get("USER"))
