"""The closed loop on the lab: screen, then keep the synthesis robots busy with fresh proposals.

The runner talks to the orchestrator only through an :class:`~ppu.transport.client.AsyncPPUClient`
(an :class:`~ppu.transport.lab.EmbeddedLab` over loopback ZMQ for the simulated lab), exactly as it
would to a remote lab. Per candidate, measurement order is cost-aware: synthesise, the cheap XRD
purity check, and the costly CO2 isotherm only when purity passes. A new candidate is proposed as
soon as a synthesis finishes (the robot is the bottleneck), with every candidate still in its
pipeline passed to the optimiser as pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppu.campaign.config import CampaignConfig
from ppu.campaign.optimizer import Decision, PoolOptimizer
from ppu.campaign.screening import publish_screening_models
from ppu.campaign.workflow import Step, run_workflow, wait_through_review
from ppu.config import LabConfig
from ppu.drivers.mof.capabilities import Candidate, TrainOutput
from ppu.errors import ConfigError
from ppu.models import Task, TaskState
from ppu.simulators.mof.world import World, WorldConfig, candidate_pool

log = logging.getLogger(__name__)

SYNTH, XRD, UPTAKE, PREDICT, PREDICT_PURITY, TRAIN = (
    "synthesize", "characterize.xrd", "measure.co2_uptake", "predict.co2_uptake", "predict.purity", "train.surrogate")
LEARNT = {"uptake": "co2_uptake_measured", "purity": "purity_measured"}  # property -> registry target


@dataclass
class Experiment:
    candidate_id: str
    proposed_at: float
    purity: float | None = None
    uptake: float | None = None
    status: str = "pending"
    tasks: list[str] = field(default_factory=list)
    cost: float = 0.0  # summed declared step costs


@dataclass
class CampaignResult:
    """What a campaign did, in the units the summary and the plots need."""

    config: CampaignConfig
    pool: list[Candidate]
    experiments: list[Experiment]
    completed: list[Experiment]  # in the order their pipelines finished
    best_curve: list[float]  # best measured feasible uptake after each finished experiment
    intervals: list[dict[str, Any]]  # {backend, capability, start, end} in lab seconds from t0
    wall_s: float
    lab_s: float
    screen: list[float] | None
    decisions_path: Path
    model_versions: list[str] = field(default_factory=list)
    optimizer: PoolOptimizer | None = None

    @property
    def best(self) -> float:
        return self.best_curve[-1] if self.best_curve else 0.0

    def true_curve(self, values: dict[str, float]) -> list[float]:
        """Best true value among candidates the lab confirmed pure, after each finished experiment."""
        return true_curve([(e.candidate_id, e.uptake is not None) for e in self.completed], values)


def true_curve(done: list[tuple[str, bool]], values: dict[str, float]) -> list[float]:
    best, out = 0.0, []
    for cid, confirmed in done:
        if confirmed:
            best = max(best, values.get(cid, 0.0))
        out.append(best)
    return out


def build_world(cfg: CampaignConfig) -> tuple[World, list[Candidate]]:
    wc = WorldConfig(kind=cfg.world.kind, seed=cfg.world.seed, csv_path=cfg.world.csv)
    world = World.from_config(wc)
    pool = candidate_pool(cfg.world.pool_size, cfg.world.pool_seed, elements=world.config.elements)
    return world, pool


def lab_config(cfg: CampaignConfig, run_dir: Path) -> LabConfig:
    """The simulated lab this campaign runs on: robots, one XRD, one sorption analyser, a twin, a trainer."""
    phys = {"time_scale": cfg.time_scale, "seed": cfg.seed, "lab": cfg.name, "run_dir": str(run_dir / "lab"),
            "world": {"kind": cfg.world.kind, "seed": cfg.world.seed, "csv_path": cfg.world.csv}}
    backends: list[dict[str, Any]] = [
        {"type": "synthesis_robot", "name": f"robot-{i + 1}", **phys} for i in range(cfg.parallel.synthesis_robots)]
    backends += [{"type": "xrd", "name": "xrd-1", **phys}, {"type": "gas_sorption", "name": "sorption-1", **phys}]
    if cfg.instruments == "epics":  # the same twins, reached over Channel Access under these prefixes
        for b in backends:
            prefix = b["name"].upper().replace("-", "") + ":"
            b.update({"simulated": False, "epics_prefix": prefix, "acquire_timeout_s": 600.0,
                      "connect_timeout_s": 120.0})
            if b["type"] != "synthesis_robot":
                b["transfer_prefix"] = prefix + "XFER:"
    registry = str(run_dir / "models")
    backends += [
        {"type": "torch", "name": "twin", "batch_size": 512, "max_wait_ms": 20, "device": "auto",
         "models": {PREDICT: {"registry": registry, "target": "co2_uptake"},
                    PREDICT_PURITY: {"registry": registry, "target": "purity"}}},
        {"type": "surrogate_trainer", "name": "trainer", "registry": registry},
    ]
    autonomy = {"default": "autonomous",
                "capabilities": {c: cfg.autonomy.value for c in (SYNTH, XRD, UPTAKE)}}
    return LabConfig.model_validate({"name": cfg.name, "run_dir": str(run_dir), "packs": ["mof"],
                                     "autonomy": autonomy, "backends": backends})


class CampaignLoop:
    review_poll_s = 30.0  # how often a wait checks whether its task went to a person for review
    """One campaign's loop; the ``do_*`` steps are what a Prefect flow wraps as tasks."""

    def __init__(self, client: Any, cfg: CampaignConfig, pool: list[Candidate], run_dir: Path,
                 on_progress: Callable[[int, float], None] | None):
        self.client = client
        self.cfg = cfg
        self.pool = pool
        self.by_id = {c.id: c for c in pool}
        self.run_dir = run_dir
        self.on_progress = on_progress
        self.decisions = (run_dir / "decisions.jsonl").open("w")
        self.experiments: list[Experiment] = []
        self.completed: list[Experiment] = []  # in the order their measurements came back
        self.best_curve: list[float] = []
        self.task_ids: list[str] = []
        self.learn_steps = 0
        self.can_learn = True  # a running lab without a trainer: decisions keep the optimiser's own fit
        self.model_versions: list[str] = []  # the uptake surrogate's versions the learn steps published
        self.adopting: set[asyncio.Task[None]] = set()
        self.t0 = time.time()
        self.opt: PoolOptimizer
        self.stopping = False  # set when the campaign is wound down: nothing new starts, what runs ends
        self.lab_in_use = asyncio.Lock()  # held by whoever still needs the lab (a wind-down): it closes after

    def lab_elapsed_h(self) -> float:
        return (time.time() - self.t0) * self.cfg.time_scale / 3600.0

    async def run_task(self, capability: str, inputs: dict[str, Any], on_review: Callable[[], None] | None = None,
                       **extra: Any) -> tuple[Task | None, dict[str, Any]]:
        """Submit one task and wait for it; (None, {}) when the campaign was wound down before it left (a
        step's task run may start after the wind-down began: nothing is submitted then)."""
        if self.stopping:
            return None, {}
        [tid] = await self.client.submit([{"capability": capability, "inputs": inputs, "campaign": self.cfg.name,
                                           **extra}])
        self.task_ids.append(tid)
        # on_review frees the interrupted task's instrument slot for the loop while a person decides
        task = await wait_through_review(self.client, tid, capability, self.review_poll_s, on_review)
        outputs: dict[str, Any] = {}
        if task.state is TaskState.succeeded:
            res = await self.client.result(tid)
            outputs = dict(res.outputs) if res is not None else {}
        return task, outputs

    async def screen(self, capability: str = PREDICT) -> tuple[list[float], str]:
        """The whole pool through the digital twin as columnar tasks (blocks), not one task per candidate."""
        from ppu.digital.torch_backend import Coding

        coding = Coding.of(capability)
        if coding.columns is None:
            raise ConfigError(f"the encoder of {capability} has no columnar form (encode.columns)",
                              hint="screening sends the pool as blocks: give the encoder .columns and .block")
        cols = coding.columns([{"candidate": c} for c in self.pool])
        out, results = await self.client.screen(capability, cols, campaign=self.cfg.name, timeout=600)
        means = np.asarray(out["mean"], dtype=float)
        version = next((str(r.outputs["model_version"]) for r in reversed(results)
                        if r.outputs.get("model_version")), "")
        bad = ~np.isfinite(means)
        fill = float(np.min(means[~bad])) if not bad.all() else 0.0
        return [fill if b else float(m) for m, b in zip(means, bad, strict=True)], version

    # ---- the steps (a flow overrides these to run them as Prefect tasks) -------------------------

    async def do_screen(self, capability: str) -> tuple[list[float], str]:
        return await self.screen(capability)

    async def do_propose(self, pending: list[str]) -> Decision:
        return await asyncio.to_thread(self.opt.propose, pending)  # a GP fit must not stall the loop

    async def do_step(self, step: str, capability: str, inputs: dict[str, Any],
                      on_review: Callable[[], None] | None = None,
                      attempts: int = 1) -> tuple[Task | None, dict[str, Any]]:
        """One declared workflow step as one task (``step`` names it for a Prefect task run)."""
        return await self.run_task(capability, inputs, on_review=on_review, max_attempts=attempts)

    async def do_learn(self) -> None:
        await self.learn()

    def record(self, d: Decision) -> None:
        row = d.as_dict() | {"at_wall_s": round(time.time() - self.t0, 3), "lab_h": round(self.lab_elapsed_h(), 3)}
        self.decisions.write(json.dumps(row) + "\n")
        self.decisions.flush()

    async def pipeline(self, exp: Experiment, synth_done: Callable[[], None]) -> None:
        """The declared workflow for one candidate (default: synthesise, XRD, the isotherm only for a
        pure sample). Physical tasks are never retried; the robot is handed back when its step ends."""
        assert self.cfg.workflow is not None

        async def run_step(step: Step, inputs: dict[str, Any], on_review: Callable[[], None] | None
                           ) -> tuple[str, dict[str, Any]]:
            if self.stopping:  # wound down: no next step is submitted
                return TaskState.cancelled.value, {}
            task, out = await self.do_step(step.name, step.capability, inputs, on_review, step.attempts)
            if task is None:  # wound down meanwhile: not submitted
                return TaskState.cancelled.value, {}
            exp.tasks.append(task.id)
            return task.state.value, out

        cand = self.by_id[exp.candidate_id].model_dump(mode="json")
        run = await run_workflow(self.cfg.workflow, cand, run_step, synth_done)
        purity, uptake = run.outputs.get("purity"), run.outputs.get("co2_uptake")
        exp.purity = float(purity) if purity is not None else 0.0
        exp.uptake = float(uptake) if uptake is not None else None
        exp.cost = run.cost
        exp.status = "measured" if exp.uptake is not None else next(
            (f"{name}: {state}" for name, state in run.states.items() if state != "succeeded"), "not measured")
        self.opt.observe(exp.candidate_id, exp.purity or 0.0, exp.uptake)
        self.completed.append(exp)
        best = self.opt.best()
        self.best_curve.append(best[1] if best else 0.0)
        if self.on_progress:
            self.on_progress(len(self.best_curve), self.best_curve[-1])
        n_up = sum(1 for e in self.experiments if e.uptake is not None)
        if exp.uptake is not None and n_up >= 3 and n_up % self.cfg.parallel.learn_every == 0 \
                and self.can_learn and self.learn_steps < self.cfg.budget.rounds and not self.stopping:
            await self.do_learn()

    async def learn(self) -> None:
        """Publish new surrogate versions of uptake and purity from the measured data (repeatable digital
        work), on the features the decision model reads; once a version is back, decisions read it."""
        self.learn_steps += 1
        submitted = []
        for prop, target in LEARNT.items():
            ids, values, extra = self.opt.training_set(prop)
            if len(values) < 3 or float(np.ptp(values)) < 1e-9:
                continue  # nothing a GP can learn yet
            inputs = {"target": target, "seed": self.cfg.seed, "values": values,
                      "candidates": [self.by_id[c].model_dump(mode="json") for c in ids],
                      "feature_bounds": self.opt.feature_bounds()}
            if self.opt.extra_feature_names():
                inputs |= {"extra_features": extra, "extra_feature_names": self.opt.extra_feature_names()}
            [tid] = await self.client.submit([{"capability": TRAIN, "inputs": inputs, "campaign": self.cfg.name}])
            submitted.append((prop, tid))
        for prop, tid in submitted:
            t = asyncio.create_task(self.adopt_when_trained(prop, tid))
            self.adopting.add(t)
            t.add_done_callback(self.adopting.discard)

    async def adopt_when_trained(self, prop: str, tid: str) -> None:
        """The optimiser reads the version this task publishes, from the first decision after it is back."""
        [task] = await self.client.wait([tid], timeout=600)
        res = await self.client.result(tid) if task.state is TaskState.succeeded else None
        if res is None:
            log.warning("learn step %s (%s) ended %s: decisions keep the model they read", tid, prop, task.state.value)
            return
        out = TrainOutput.model_validate(res.outputs)
        if out.kernel is None:
            return
        version = f"{LEARNT[prop]}/{out.version}"
        try:
            self.opt.adopt(prop, version, out.kernel)
        except ValueError as exc:  # a trainer on other features: keep deciding on the model we have
            log.error("not adopting %s: %s", version, exc)
            return
        if prop == "uptake":
            self.model_versions.append(out.version)

    async def run(self) -> None:
        b = self.cfg.budget
        in_flight: set[asyncio.Task[None]] = set()
        free = asyncio.Event()
        free.set()
        robots = self.cfg.parallel.synthesis_robots + self.cfg.parallel.queue_ahead
        synthesising = 0

        def done_synth() -> None:
            nonlocal synthesising
            synthesising -= 1
            free.set()

        while len(self.experiments) < b.max_syntheses and self.lab_elapsed_h() < b.instrument_hours:
            if self.stopping:
                break
            if synthesising >= robots:
                free.clear()
                with contextlib.suppress(TimeoutError):  # looks at `stopping` now and then
                    await asyncio.wait_for(free.wait(), 1.0)
                continue
            pending = [e.candidate_id for e in self.experiments if e.status == "pending"]
            try:
                d = await self.do_propose(pending)
            except LookupError:
                break
            self.record(d)
            exp = Experiment(candidate_id=d.candidate_id, proposed_at=time.time() - self.t0)
            self.experiments.append(exp)
            synthesising += 1
            t = asyncio.create_task(self.pipeline(exp, done_synth))
            in_flight.add(t)
            t.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)
        if self.adopting:  # the last versions published are recorded, and nothing outlives the client
            await asyncio.gather(*self.adopting)


async def _closed_loop(loop: CampaignLoop, client: Any, pool: list[Any], screen: list[float] | None,
                       screen_purity: list[float] | None, version: str, on_stage: Callable[[str], None] | None,
                       stage: str) -> tuple[float, list[dict[str, Any]]]:
    """The optimiser over the (screened) pool, then the loop until its budget; returns the loop's wall
    time and the instruments' busy intervals. Shared by the simulated lab and a running one."""
    cfg = loop.cfg
    loop.opt = PoolOptimizer(pool, purity_min=cfg.objective.purity_min, seed=cfg.seed, n_init=cfg.parallel.n_init,
                             screen=screen, screen_purity=screen_purity,
                             top_k=cfg.screening.top_k if screen else None, screen_version=version,
                             outside_weight=cfg.screening.outside_weight)
    if on_stage:
        on_stage(stage)
    loop.t0 = time.time()
    try:
        await loop.run()
    finally:
        loop.decisions.close()
    wall = time.time() - loop.t0
    return wall, await _intervals(client, loop.task_ids, loop.t0, cfg.time_scale)


async def _intervals(client: Any, task_ids: list[str], t0: float, time_scale: float) -> list[dict[str, Any]]:
    out = []
    for tid in task_ids:
        res = await client.result(tid)
        if res is None or res.started_at is None or res.finished_at is None or res.provenance is None:
            continue
        task = await client.task(tid)
        out.append({"backend": res.provenance.backend, "capability": task.capability,
                    "start": (res.started_at - t0) * time_scale, "end": (res.finished_at - t0) * time_scale})
    return out


async def run_campaign(cfg: CampaignConfig, run_dir: Path, *,
                       on_progress: Callable[[int, float], None] | None = None,
                       on_stage: Callable[[str], None] | None = None,
                       on_lab: Callable[[str], None] | None = None,
                       loop_class: type[CampaignLoop] | None = None) -> CampaignResult:
    """Run one campaign on the simulated lab (an EmbeddedLab); the run folder gets the store and logs."""
    from ppu.transport.lab import EmbeddedLab
    from ppu.transport.serve import ioc_process

    if not cfg.simulated:
        return await run_on_lab(cfg, run_dir, on_progress=on_progress, on_stage=on_stage, loop_class=loop_class)
    run_dir.mkdir(parents=True, exist_ok=True)
    world, pool = build_world(cfg)
    if on_stage:
        on_stage("training the screening model on prior data")
    screen_version = publish_screening_models(run_dir / "models", world, pool, cfg) if cfg.screening.enabled else ""
    lab = lab_config(cfg, run_dir)
    t_wall = time.time()
    embedded = EmbeddedLab(lab, timeout=30.0)
    async with contextlib.AsyncExitStack() as stack:
        if cfg.instruments == "epics":
            if on_stage:
                on_stage("serving the instruments as EPICS IOCs (ppu ioc)")
            await stack.enter_async_context(ioc_process(lab, run_dir))
        client = await stack.enter_async_context(embedded)
        if on_lab:
            on_lab(embedded.address)  # e.g. a dashboard that watches this lab through its own client
        loop = (loop_class or CampaignLoop)(client, cfg, pool, run_dir, on_progress)
        screen: list[float] | None = None
        screen_purity: list[float] | None = None
        if cfg.screening.enabled:
            if on_stage:
                on_stage(f"screening {len(pool)} candidates on the digital twin")
            screen, served = await loop.do_screen(PREDICT)
            screen_purity, _ = await loop.do_screen(PREDICT_PURITY)
            screen_version = served or screen_version
        wall, intervals = await _closed_loop(loop, client, pool, screen, screen_purity, screen_version, on_stage,
                                             "closed loop: propose, synthesise, characterise, learn")
        async with loop.lab_in_use:
            pass
    lab_s = max([iv["end"] for iv in intervals], default=wall * cfg.time_scale)
    return CampaignResult(config=cfg, pool=pool, experiments=loop.experiments, completed=loop.completed,
                          best_curve=loop.best_curve, intervals=intervals, wall_s=time.time() - t_wall,
                          lab_s=lab_s, screen=screen,
                          decisions_path=run_dir / "decisions.jsonl", model_versions=loop.model_versions,
                          optimizer=loop.opt)


async def run_on_lab(cfg: CampaignConfig, run_dir: Path, *,
                     on_progress: Callable[[int, float], None] | None = None,
                     on_stage: Callable[[str], None] | None = None,
                     loop_class: type[CampaignLoop] | None = None) -> CampaignResult:
    """The same loop on a lab that is already running (an orchestrator and workers, anywhere), through
    its client. Nothing here reads a simulated truth: the pool comes from ``world``'s grid only, the
    twin is whatever the lab serves (screening is skipped when it serves none)."""
    import os

    from ppu.config import load_lab
    from ppu.transport.client import AsyncPPUClient
    from ppu.transport.security import peer_keys
    from ppu.transport.serve import nobody_listens

    assert cfg.lab_config is not None and cfg.workflow is not None
    lab = load_lab(cfg.lab_config)
    address = cfg.connect or lab.orchestrator.bind
    if nobody_listens(address):
        raise ConfigError(f"no orchestrator answers at {address}", field="connect" if cfg.connect else "lab_config",
                          hint=f"start the lab first: ppu orchestrator -c {cfg.lab_config}; "
                               f"ppu worker -c {cfg.lab_config} (on each instrument PC)")
    run_dir.mkdir(parents=True, exist_ok=True)
    _, pool = build_world(cfg)
    curve = peer_keys(lab.security, os.environ.get("PPU_KEY", "client")) if lab.security.curve else None
    t_wall = time.time()
    async with AsyncPPUClient(address, timeout=30.0, curve=curve, actor=os.environ.get("USER")) as client:
        offered = {c for b in (await client.status())["backends"] for c in b.get("capabilities", [])}
        for k, step in enumerate(cfg.workflow.steps):
            if step.capability not in offered:
                raise ConfigError(f"no backend of the lab at {address} offers {step.capability!r}",
                                  field=f"workflow.steps.{k}.capability",
                                  hint="start the worker that hosts it, or change the workflow")
        loop = (loop_class or CampaignLoop)(client, cfg, pool, run_dir, on_progress)
        loop.can_learn = TRAIN in offered
        screen: list[float] | None = None
        screen_purity: list[float] | None = None
        version = ""
        if cfg.screening.enabled and PREDICT in offered:
            if on_stage:
                on_stage(f"screening {len(pool)} candidates on the lab's digital twin")
            screen, version = await loop.do_screen(PREDICT)
            if PREDICT_PURITY in offered:
                screen_purity, _ = await loop.do_screen(PREDICT_PURITY)
        elif on_stage:
            on_stage("no screening: the lab serves no digital twin" if cfg.screening.enabled else "no screening")
        wall, intervals = await _closed_loop(loop, client, pool, screen, screen_purity, version, on_stage,
                                             f"closed loop on the lab at {address}")
    lab_s = max([iv["end"] for iv in intervals], default=wall * cfg.time_scale)
    return CampaignResult(config=cfg, pool=pool, experiments=loop.experiments, completed=loop.completed,
                          best_curve=loop.best_curve, intervals=intervals, wall_s=time.time() - t_wall, lab_s=lab_s,
                          screen=screen, decisions_path=run_dir / "decisions.jsonl",
                          model_versions=loop.model_versions, optimizer=loop.opt)
