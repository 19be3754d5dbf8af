"""The digital twin's knowledge: a screening model trained on a prior, low-fidelity data set.

A real lab starts a campaign with something: literature values, an earlier campaign, a physics
code. ``screening.prior_csv`` declares it: a table of earlier measurements, and then the twin
learns from that table only. Without one (the simulated lab's default) the prior is
``prior_points`` pool candidates with their true uptake plus noise of ``prior_noise``: a stand-in
for literature values, cheap and roughly right, never exact. It is
published to the model registry as a GP surrogate (``train.surrogate``'s format), which a
``torch`` backend serves as ``predict.co2_uptake``: the campaign then screens the whole pool
through the orchestrator like any other digital work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from ppu.campaign.config import CampaignConfig
from ppu.drivers.mof.capabilities import Candidate, TrainInput
from ppu.errors import ConfigError
from ppu.simulators.mof.world import World

TARGETS = {"co2_uptake": "co2_uptake_mmol_g", "purity": "purity"}
_PURITY_NOISE = 0.05  # prior purity data: XRD-grade, but from other furnaces


def prior_data(world: World, pool: Sequence[Candidate], cfg: CampaignConfig,
               target: str = "co2_uptake") -> tuple[list[Candidate], list[float]]:
    if cfg.screening.prior_csv:
        return prior_from_csv(cfg.screening.prior_csv, TARGETS[target])
    rng = np.random.default_rng(cfg.seed + 7919)
    n = min(cfg.screening.prior_points, len(pool))
    idx = np.sort(rng.choice(len(pool), size=n, replace=False))
    chosen = [pool[i] for i in idx]
    truth = world.values(chosen, TARGETS[target])
    noise = cfg.screening.prior_noise if target == "co2_uptake" else _PURITY_NOISE
    noisy = truth + np.random.default_rng([cfg.seed, len(target)]).normal(0.0, noise, size=n)
    return chosen, [float(v) for v in noisy]


def prior_from_csv(path: str | Path, column: str) -> tuple[list[Candidate], list[float]]:
    """Candidates and their recorded ``column`` from a table of earlier measurements (rows lacking it are left out)."""
    import csv
    import re

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prior data {p} does not exist", field="screening.prior_csv",
                          hint="give the path of a CSV of earlier measurements")
    with p.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = list(rows[0]) if rows else []
    elements = [c for c in cols if re.fullmatch(r"[A-Z][a-z]?", c)]
    if column not in cols or not elements:
        raise ConfigError(f"prior data {p.name} needs element columns (fractions) and {column!r}; it has {cols}",
                          field="screening.prior_csv")
    cands, values = [], []
    for n, r in enumerate(rows):
        if (r.get(column) or "").strip() == "":
            continue
        try:
            comp = {e: float(r[e]) for e in elements if float(r[e] or 0) > 0}
            c = Candidate(composition=comp, anneal_temperature_c=float(r.get("anneal_temperature_c") or 400.0),
                          anneal_time_h=float(r.get("anneal_time_h") or 4.0))
            values.append(float(r[column]))
        except ValidationError as exc:
            e = exc.errors()[0]
            raise ConfigError(f"prior data {p.name} row {n + 2}: {'.'.join(map(str, e['loc']))}: {e['msg']}",
                              field="screening.prior_csv") from None
        except ValueError as exc:
            raise ConfigError(f"prior data {p.name} row {n + 2}: {exc}", field="screening.prior_csv") from None
        cands.append(c)
    if len(cands) < 3:
        raise ConfigError(f"prior data {p.name} has {len(cands)} rows with {column!r}; the twin needs at least 3",
                          field="screening.prior_csv")
    return cands, values


def publish_screening_models(registry: Path, world: World, pool: Sequence[Candidate], cfg: CampaignConfig) -> str:
    """Train the twin (uptake and purity) on the prior data and publish it; returns the uptake version."""
    from ppu.drivers.mof.trainer import train_surrogate

    out = ""
    for target in TARGETS:
        cands, values = prior_data(world, pool, cfg, target)
        ver, _, _ = train_surrogate(registry, TrainInput(target=target, candidates=cands, values=values, seed=cfg.seed))
        out = out or ver.version
    return out


def screen_locally(world: World, pool: Sequence[Candidate], cfg: CampaignConfig) -> tuple[np.ndarray, np.ndarray]:
    """The same screening models, evaluated in-process (simulated-clock benchmarks only): uptake, purity."""
    from ppu.digital.surrogate import fit_gp
    from ppu.drivers.mof.featurize import featurize

    outs = []
    for target in TARGETS:
        cands, values = prior_data(world, pool, cfg, target)
        fit = fit_gp(featurize(cands), torch.tensor(values, dtype=torch.float64), seed=cfg.seed)
        with torch.no_grad():
            outs.append(fit.predictor(featurize(pool)).numpy()[:, 0].astype(float))
    return outs[0], outs[1]


def constrained_values(world: World, pool: Sequence[Candidate], purity_min: float) -> np.ndarray:
    """The campaign's true objective per candidate: uptake where purity passes, else 0 (scoring only)."""
    up = world.values(pool, "co2_uptake_mmol_g")
    pur = world.values(pool, "purity")
    return np.where(pur >= purity_min, up, 0.0)
