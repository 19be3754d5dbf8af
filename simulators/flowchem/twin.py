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
from ppu.drivers.flowchem.models import FlowRecipe
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

    def _constants(self, recipes: list[FlowRecipe]) -> tuple[np.ndarray, np.ndarray]:
        c = self.chem
        t_k = np.array([r.temperature_c for r in recipes]) + 273.15
        lig = [LIGAND_TABLE[r.ligand] for r in recipes]
        inv = (1.0 / t_k - 1.0 / T_REF_K)[None, :]
        act = 1.0 / (1.0 + np.exp((t_k - 273.15 - np.array([e.t_decomp_c for e in lig])) / 8.0))[None, :]
        ea1 = c.ea1_kj + np.array([e.dea1 for e in lig])[None, :] + self.dea1[:, None]
        ea2 = c.ea2_kj + np.array([e.dea2 for e in lig])[None, :] + self.dea2[:, None]
        k1 = c.k1_ref * np.array([e.k1_factor for e in lig])[None, :] * self.k1_f[:, None] * np.exp(-ea1 / R_KJ * inv)
        k2 = c.k2_ref * np.array([e.k2_factor for e in lig])[None, :] * self.k2_f[:, None] * np.exp(-ea2 / R_KJ * inv)
        return k1 * act, k2 * act

    def outlet(self, recipes: list[FlowRecipe]) -> tuple[np.ndarray, np.ndarray]:
        """(yield, impurity) arrays of shape (members, candidates)."""
        k1, k2 = self._constants(recipes)
        a0 = np.array([r.concentration_m for r in recipes])[None, :]
        b0 = a0 * np.array([r.equivalents_b for r in recipes])[None, :]
        tau = np.array([r.residence_time_min for r in recipes])[None, :]
        p, s = patankar(k1, k2, a0, b0, tau, self.steps)
        return np.clip(p / a0, 0, 1), np.clip(s / a0, 0, 1)

    def predict(self, recipes: list[FlowRecipe]) -> list[dict[str, float]]:
        y, imp = self.outlet(recipes)
        return [{"mean": float(y[:, i].mean()), "std": float(y[:, i].std()), "impurity": float(imp[:, i].mean())}
                for i in range(len(recipes))]


class TwinConfig(BackendConfig):
    members: int = Field(16, ge=2, le=1024, description="ensemble size (uncertainty)")
    steps: int = Field(48, ge=4, le=10_000, description="integration steps per residence time")
    seed: int = Field(0, description="seeds the ensemble's perturbations")


class FlowTwinBackend(Backend):
    """A digital backend serving ``predict.yield`` from :class:`KineticTwin`, in batches."""

    kind = BackendKind.digital
    Config: ClassVar[type[BackendConfig]] = TwinConfig

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        assert isinstance(config, TwinConfig)
        self.twin = KineticTwin(members=config.members, steps=config.steps, seed=config.seed)

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name=PREDICT_YIELD, fidelity=0.6, duration_s=0.01, cost=0.0)]

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        started = time.time()
        good: list[tuple[int, FlowRecipe]] = []
        out: list[Result | None] = [None] * len(batch)
        for i, r in enumerate(batch):
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


__all__ = ["PREDICT_YIELD", "FlowTwinBackend", "KineticTwin", "TwinConfig"]
