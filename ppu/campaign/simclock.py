"""The same closed loop on a simulated clock, with no lab: for baselines and benchmarks.

Durations are the instruments' declared lab times (synthesis 4.5 h, XRD ~13 min, isotherm 2.5 h);
measurements are the world's truth plus the simulated lab's purity scatter. ``strategy``:
``ppu`` (digital screening + BO), ``physical_only`` (BO, no screening), ``random``. ``naive``
runs one candidate at a time, synthesise-then-measure, the loop PPU replaces.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ppu.campaign.config import CampaignConfig
from ppu.campaign.optimizer import PoolOptimizer
from ppu.campaign.screening import screen_locally
from ppu.drivers.mof.capabilities import CAPABILITIES, Candidate
from ppu.simulators.mof.world import World

# One owner per fact: the durations the capabilities declare (the backends' offers start from them too).
_DECLARED = {c.name: c.duration_s or 0.0 for c in CAPABILITIES}
SYNTH_S, XRD_S, UPTAKE_S = _DECLARED["synthesize"], _DECLARED["characterize.xrd"], _DECLARED["measure.co2_uptake"]
Strategy = Literal["ppu", "physical_only", "random"]


@dataclass
class SimRun:
    best_curve: list[float]  # best measured feasible uptake after each finished experiment
    done: list[tuple[str, bool]]  # (candidate id, confirmed pure and measured) in finishing order
    chosen: list[int]
    makespan_s: float
    busy: dict[str, float] = field(default_factory=dict)
    intervals: list[dict[str, object]] = field(default_factory=list)


class _Machines:
    """Instruments as 'free at' times; a task takes the earliest free unit of its kind."""

    def __init__(self, robots: int):
        self.free = {"robot": [0.0] * robots, "xrd": [0.0], "sorption": [0.0]}
        self.busy: dict[str, float] = {"robot": 0.0, "xrd": 0.0, "sorption": 0.0}
        self.intervals: list[dict[str, object]] = []

    def run(self, kind: str, ready: float, dur: float) -> float:
        units = self.free[kind]
        k = int(np.argmin(units))
        start = max(ready, units[k])
        units[k] = start + dur
        self.busy[kind] += dur
        self.intervals.append({"backend": f"{kind}-{k + 1}", "start": start, "end": start + dur})
        return start + dur


def simulate(cfg: CampaignConfig, world: World, pool: Sequence[Candidate], strategy: Strategy, *,
             seed: int = 0, naive: bool = False,
             screen: tuple[np.ndarray, np.ndarray] | None = None,
             stop_at: tuple[np.ndarray, float] | None = None) -> SimRun:
    """One campaign on the simulated clock. ``stop_at=(true values, threshold)``: stop proposing once
    a candidate confirmed pure reaches the threshold (for experiments-to-target benchmarks)."""
    rng = np.random.default_rng(seed)
    pmin = cfg.objective.purity_min
    truth = [world.properties(c) for c in pool]
    opt: PoolOptimizer | None = None
    if strategy != "random":
        if strategy == "ppu" and screen is None:
            screen = screen_locally(world, pool, cfg)
        use = screen if strategy == "ppu" else None
        opt = PoolOptimizer(pool, purity_min=pmin, seed=seed, n_init=cfg.parallel.n_init,
                            screen=None if use is None else use[0], screen_purity=None if use is None else use[1],
                            top_k=cfg.screening.top_k if strategy == "ppu" else None,
                            outside_weight=cfg.screening.outside_weight)
    order = list(rng.permutation(len(pool)))
    robots = 1 if naive else cfg.parallel.synthesis_robots
    m = _Machines(robots)
    events: list[tuple[float, int, int, float, float | None]] = []  # (robot free at, seq, idx, done, ...)
    pending: list[int] = []
    chosen: list[int] = []
    best, curve = 0.0, []
    now, seq, makespan = 0.0, 0, 0.0

    def launch(i: int, at: float) -> None:
        nonlocal seq, makespan
        t = truth[i]
        success = rng.random() < t.success_probability
        synth_end = m.run("robot", at, SYNTH_S)
        purity = float(np.clip(t.purity + rng.normal(0, 0.03), 0, 1)) if success else 0.0
        end, uptake = synth_end, None
        if success:
            end = m.run("xrd", synth_end, XRD_S)
            if purity >= pmin:
                end = m.run("sorption", end, UPTAKE_S)
                uptake = t.co2_uptake_mmol_g * (0.1 + 0.9 * purity) / (0.1 + 0.9 * t.purity)
        makespan = max(makespan, end)
        # naive: the next candidate waits for the whole pipeline; PPU: only for the robot
        heapq.heappush(events, (end if naive else synth_end, seq, i, purity, uptake))
        seq += 1
        heapq.heappush(results, (end, seq, i, purity, uptake))

    results: list[tuple[float, int, int, float, float | None]] = []
    done: list[tuple[str, bool]] = []
    ids = [c.id or f"cand-{k}" for k, c in enumerate(pool)]
    for _ in range(min(robots, cfg.budget.max_syntheses)):
        i = _pick(opt, order, chosen, pending)
        chosen.append(i)
        pending.append(i)
        launch(i, 0.0)
    def reached() -> bool:
        return stop_at is not None and any(ok and stop_at[0][ids.index(c)] >= stop_at[1] for c, ok in done)

    while len(chosen) < cfg.budget.max_syntheses and len(chosen) < len(pool) and not reached():
        now = heapq.heappop(events)[0]
        while results and results[0][0] <= now:  # everything measured by now is known to the optimiser
            _, _, j, pur, up = heapq.heappop(results)
            pending.remove(j)
            best = _observe(opt, pool, j, pur, up, pmin, best)
            curve.append(best)
            done.append((ids[j], up is not None))
        if reached():
            break
        i = _pick(opt, order, chosen, pending)
        chosen.append(i)
        pending.append(i)
        launch(i, now)
    while results:
        _, _, j, pur, up = heapq.heappop(results)
        best = _observe(opt, pool, j, pur, up, pmin, best)
        curve.append(best)
        done.append((ids[j], up is not None))
    return SimRun(best_curve=curve, done=done, chosen=chosen, makespan_s=makespan, busy=m.busy, intervals=m.intervals)


def _pick(opt: PoolOptimizer | None, order: list[int], chosen: list[int], pending: list[int]) -> int:
    if opt is None:
        return next(i for i in order if i not in chosen)
    return opt.propose([opt.ids[j] for j in pending]).index


def _observe(opt: PoolOptimizer | None, pool: Sequence[Candidate], j: int, purity: float, uptake: float | None,
             pmin: float, best: float) -> float:
    if opt is not None:
        opt.observe(opt.ids[j], purity, uptake)
    if uptake is not None and purity >= pmin:
        best = max(best, uptake)
    return best


def random_baseline(cfg: CampaignConfig, world: World, pool: Sequence[Candidate], seeds: int = 20) -> np.ndarray:
    """Best-so-far (true constrained value) of random search per experiment, mean of ``seeds`` runs."""
    from ppu.campaign.runner import true_curve
    from ppu.campaign.screening import constrained_values

    truth = constrained_values(world, pool, cfg.objective.purity_min)  # scored like the campaign itself
    vals = dict(zip([c.id or "" for c in pool], (float(v) for v in truth), strict=True))
    curves = [true_curve(simulate(cfg, world, pool, "random", seed=s).done, vals) for s in range(seeds)]
    n = min(len(c) for c in curves)
    return np.mean([c[:n] for c in curves], axis=0)
