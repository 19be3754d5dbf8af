"""The flow lab's digital twin: a cheap kinetic model at lower fidelity, served as ``predict.yield``.

What the twin knows is the *literature* chemistry: the ligand table as published
(:data:`~ppu.simulators.flowchem.world.LIGAND_TABLE`), not the seeded variation of this lab's
world, which is what the lab measures. Its uncertainty is an ensemble of kinetic models whose
pre-factors (x exp(N(0, 0.25))) and activation energies (+ N(0, 2 kJ/mol)) are perturbed, each
integrated with a first-order, positivity-preserving semi-implicit scheme (Patankar-Euler) on a
coarse grid of 48 steps: unconditionally stable, vectorised over candidates and members, and a
few per cent off the exact solution. The prediction is the ensemble's mean and standard deviation.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import numpy as np
from pydantic import Field

from ppu import capabilities
from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.drivers.flowchem.coding import checked, recipe_columns
from ppu.drivers.flowchem.models import LIGANDS, FlowRecipe
from ppu.errors import ValidationFailed
from ppu.models import BackendKind, CapabilityOffer, Result
from ppu.simulators.flowchem.world import LIGAND_TABLE, R_KJ, T_REF_K, FlowWorldConfig, patankar

PREDICT_YIELD = "predict.yield"
TWIN_VERSION = "flowchem-kinetic-twin-1"


class KineticTwin:
    """An ensemble of perturbed kinetic models (see the module docstring)."""

    def __init__(self, *, members: int = 16, steps: int = 48, seed: int = 0, chemistry: FlowWorldConfig | None = None):
        self.chem = chemistry or FlowWorldConfig()
        self.steps = steps
        rng = np.random.default_rng(seed)
        self.k1_f = np.exp(rng.normal(0, 0.25, members))
        self.k2_f = np.exp(rng.normal(0, 0.25, members))
        self.dea1 = rng.normal(0, 2.0, members)
        self.dea2 = rng.normal(0, 2.0, members)

    def _constants(self, ligand: np.ndarray, temperature_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.chem
        t_k = temperature_c + 273.15
        inv = (1.0 / t_k - 1.0 / T_REF_K)[None, :]
        act = 1.0 / (1.0 + np.exp((temperature_c - _TABLE["t_decomp_c"][ligand]) / 8.0))[None, :]
        ea1 = c.ea1_kj + _TABLE["dea1"][ligand][None, :] + self.dea1[:, None]
        ea2 = c.ea2_kj + _TABLE["dea2"][ligand][None, :] + self.dea2[:, None]
        k1 = c.k1_ref * _TABLE["k1_factor"][ligand][None, :] * self.k1_f[:, None] * np.exp(-ea1 / R_KJ * inv)
        k2 = c.k2_ref * _TABLE["k2_factor"][ligand][None, :] * self.k2_f[:, None] * np.exp(-ea2 / R_KJ * inv)
        return k1 * act, k2 * act

    def outlet_columns(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(yield, impurity) arrays of shape (members, rows) for a block's columns (ligand as an index)."""
        k1, k2 = self._constants(cols["ligand"], cols["temperature_c"])
        a0 = cols["concentration_m"][None, :]
        b0 = a0 * cols["equivalents_b"][None, :]
        tau = cols["residence_time_min"][None, :]
        p, s = patankar(k1, k2, a0, b0, tau, self.steps)
        return np.clip(p / a0, 0, 1), np.clip(s / a0, 0, 1)

    def outlet(self, recipes: list[FlowRecipe]) -> tuple[np.ndarray, np.ndarray]:
        """(yield, impurity) arrays of shape (members, candidates)."""
        return self.outlet_columns(recipe_columns([{"recipe": r} for r in recipes]))

    def predict_columns(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ensemble's mean and std of the yield, and its mean impurity, per row of a block."""
        y, imp = self.outlet_columns(cols)
        return {"mean": y.mean(axis=0), "std": y.std(axis=0), "impurity": imp.mean(axis=0)}

    def predict(self, recipes: list[FlowRecipe]) -> list[dict[str, float]]:
        out = self.predict_columns(recipe_columns([{"recipe": r} for r in recipes]))
        return [{"mean": float(m), "std": float(s), "impurity": float(i)}
                for m, s, i in zip(out["mean"], out["std"], out["impurity"], strict=True)]


# the literature ligand table as arrays, indexed like LIGANDS (the columns' ligand index)
_TABLE = {k: np.array([getattr(LIGAND_TABLE[name], k) for name in LIGANDS], dtype=np.float64)
          for k in ("t_decomp_c", "dea1", "dea2", "k1_factor", "k2_factor")}


class TwinConfig(BackendConfig):
    members: int = Field(16, ge=2, le=1024, description="ensemble size (uncertainty)")
    block_rows: int = Field(4096, ge=1, le=1_000_000, description="rows of a columnar task integrated at once "
                            "(progress is reported after each part)")
    steps: int = Field(48, ge=4, le=10_000, description="integration steps per residence time")
    seed: int = Field(0, description="seeds the ensemble's perturbations")


class FlowTwinBackend(Backend):
    """A digital backend serving ``predict.yield`` from :class:`KineticTwin`, in batches."""

    kind = BackendKind.digital
    columnar = True
    Config: ClassVar[type[BackendConfig]] = TwinConfig

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        assert isinstance(config, TwinConfig)
        self.cfg = config
        self.twin = KineticTwin(members=config.members, steps=config.steps, seed=config.seed)

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name=PREDICT_YIELD, fidelity=0.6, duration_s=0.01, cost=0.0)]

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        started = time.time()
        good: list[tuple[int, FlowRecipe]] = []
        out: list[Result | None] = [None] * len(batch)
        for i, r in enumerate(batch):
            if r.block is not None and r.capability == PREDICT_YIELD:
                out[i] = await self._run_block(r, progress, started)
                continue
            try:
                if r.capability != PREDICT_YIELD:
                    raise ValidationFailed(f"backend {self.name} serves {PREDICT_YIELD}, not {r.capability}",
                                           field="capability")
                inputs = capabilities.validate_inputs(r.capability, r.inputs)
                good.append((i, FlowRecipe.model_validate(inputs["recipe"])))
            except ValidationFailed as exc:
                out[i] = self.fail(batch[i], str(exc), started, retryable=False)
        if good:
            preds = await asyncio.to_thread(self.twin.predict, [rec for _, rec in good])
            for (i, _), pred in zip(good, preds, strict=True):
                out[i] = self.ok(batch[i], {**pred, "model_version": TWIN_VERSION}, started,
                                 model_name="kinetic-twin", model_version=TWIN_VERSION)
        return [r for r in out if r is not None]

    async def _run_block(self, run: TaskRun, progress: ProgressFn, started: float) -> Result:
        """A columnar task: its rows in parts of ``block_rows`` (progress after each), answered with columns."""
        try:
            cols = checked(run.columns())
        except (ValidationFailed, ValueError) as exc:
            return self.fail(run, f"cannot read the block: {exc}", started, retryable=False)
        n = len(cols["ligand"])
        parts: list[dict[str, np.ndarray]] = []
        step = self.cfg.block_rows
        for lo in range(0, n, step):
            part = {k: v[lo:lo + step] for k, v in cols.items()}
            parts.append(await asyncio.to_thread(self.twin.predict_columns, part))
            done = min(n, lo + step)
            r = progress(run.task_id, done / n, f"{done}/{n} rows")
            if asyncio.iscoroutine(r):
                await r
        res = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in ("mean", "std", "impurity")}
        summary = {"rows": n, "columns": list(res), "non_finite_rows": int((~np.isfinite(res["mean"])).sum()),
                   "model_version": TWIN_VERSION}
        return self.ok(run, summary, started, model_name="kinetic-twin",
                       model_version=TWIN_VERSION).with_columns(res)


__all__ = ["PREDICT_YIELD", "FlowTwinBackend", "KineticTwin", "TwinConfig"]
