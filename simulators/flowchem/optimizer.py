"""Bayesian optimisation over a mixed space: a box of continuous process parameters x a categorical.

A point is the four continuous parameters of :data:`~ppu.drivers.flowchem.models.PROCESS_BOX`,
scaled to [0, 1], plus the ligand one-hot encoded. A GP (BoTorch ``SingleTaskGP``, Matern 5/2 with
one length scale per input, standardised outcome) learns measured yield; proposals maximise
q-log noisy expected improvement (qLogNEI), with the points still being measured passed as
pending so that asynchronous proposals do not pile onto one spot. The categorical is handled the
way BoTorch's ``optimize_acqf_mixed`` does it: the continuous part is optimised once per ligand
(the one-hot fixed) and the best of those wins.

Before the GP has ``n_init`` points, proposals come from a screen: candidates scored by the
digital twin (mean + std, an optimistic prior), taken greedily with a minimum spacing so the first
experiments do not all land on one spot. ``strategy="random"`` proposes uniformly at random (the
baseline a campaign is measured against).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ppu.campaign.generators import one_torch_thread
from ppu.drivers.flowchem.models import LIGANDS, PROCESS_BOX, FlowRecipe
from ppu.simulators.flowchem.world import recipe_from

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.exceptions.warnings import OptimizationWarning
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf_mixed
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from gpytorch.utils.warnings import NumericalWarning

LO = np.array([b[0] for b in PROCESS_BOX.values()])
HI = np.array([b[1] for b in PROCESS_BOX.values()])
N_CONT = len(PROCESS_BOX)


def encode(recipe: FlowRecipe) -> np.ndarray:
    u = (np.array(recipe.vector()) - LO) / (HI - LO)
    onehot = np.eye(len(LIGANDS))[LIGANDS.index(recipe.ligand)]
    return np.concatenate([np.clip(u, 0, 1), onehot])


def decode(x: np.ndarray) -> FlowRecipe:
    ligand = LIGANDS[int(np.argmax(x[N_CONT:]))]
    return recipe_from(ligand, LO + np.clip(x[:N_CONT], 0, 1) * (HI - LO))


@contextlib.contextmanager
def _quiet_one_thread() -> Iterator[None]:
    with one_torch_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizationWarning)
        warnings.simplefilter("ignore", NumericalWarning)
        yield


@dataclass
class Proposal:
    recipe: FlowRecipe
    why: str
    acquisition: float | None = None
    mean: float | None = None
    std: float | None = None


class MixedBoxOptimizer:
    """See the module docstring. ``observe`` what came back, ``propose`` the next point."""

    def __init__(self, *, seed: int = 0, n_init: int = 4, strategy: str = "qlognei",
                 raw_samples: int = 64, restarts: int = 2):
        if strategy not in ("qlognei", "random"):
            raise ValueError(f"unknown strategy {strategy!r}; use 'qlognei' or 'random'")
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.n_init = n_init
        self.strategy = strategy
        self.raw_samples = raw_samples
        self.restarts = restarts
        self.x: list[np.ndarray] = []
        self.y: list[float] = []
        self.screen: list[tuple[FlowRecipe, float]] = []

    def random_recipes(self, n: int) -> list[FlowRecipe]:
        return [recipe_from(LIGANDS[int(self.rng.integers(len(LIGANDS)))], LO + self.rng.random(N_CONT) * (HI - LO))
                for _ in range(n)]

    def set_screen(self, recipes: Sequence[FlowRecipe], scores: Sequence[float]) -> None:
        """The twin's scores of candidate recipes: the first proposals are picked from them."""
        self.screen = sorted(zip(recipes, scores, strict=True), key=lambda t: -t[1])

    def observe(self, recipe: FlowRecipe, value: float) -> None:
        self.x.append(encode(recipe))
        self.y.append(float(value))

    def propose(self, pending: Sequence[FlowRecipe] = ()) -> Proposal:
        if self.strategy == "random":
            return Proposal(self.random_recipes(1)[0], "random")
        if len(self.y) + len(pending) < self.n_init or len(self.y) < 2:
            return self._from_screen(pending)
        if float(np.ptp(self.y)) == 0.0:  # every result alike (e.g. all clogged): a GP learns nothing from it
            proposal = self._from_screen(pending)
            return dataclasses.replace(proposal, why=f"{proposal.why}; all {len(self.y)} results equal, no GP yet")
        return self._from_gp(pending)

    def _from_screen(self, pending: Sequence[FlowRecipe]) -> Proposal:
        taken = [*self.x, *(encode(r) for r in pending)]
        for recipe, score in self.screen:
            x = encode(recipe)
            if all(np.linalg.norm(x - t) > 0.35 for t in taken):
                return Proposal(recipe, "twin screen (optimistic)", mean=score)
        return Proposal(self.random_recipes(1)[0], "random (screen used up)")

    def _from_gp(self, pending: Sequence[FlowRecipe]) -> Proposal:
        x = torch.tensor(np.array(self.x), dtype=torch.float64)
        y = torch.tensor(self.y, dtype=torch.float64).unsqueeze(-1)
        with _quiet_one_thread():
            torch.manual_seed(self.seed + len(self.y))
            gp = SingleTaskGP(x, y, outcome_transform=Standardize(m=1))
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
            x_pending = torch.tensor(np.array([encode(r) for r in pending]), dtype=torch.float64) if pending else None
            acq = qLogNoisyExpectedImprovement(gp, X_baseline=x, X_pending=x_pending, prune_baseline=True)
            bounds = torch.tensor([[0.0] * x.shape[1], [1.0] * x.shape[1]], dtype=torch.float64)
            fixed = [{N_CONT + j: float(j == k) for j in range(len(LIGANDS))} for k in range(len(LIGANDS))]
            cand, value = optimize_acqf_mixed(acq, bounds=bounds, q=1, num_restarts=self.restarts,
                                              raw_samples=self.raw_samples, fixed_features_list=fixed,
                                              options={"maxiter": 60})
            with torch.no_grad():
                post = gp.posterior(cand)
                mean, std = float(post.mean.squeeze()), float(post.variance.clamp_min(0).sqrt().squeeze())
        acq_value = None if value is None else float(value.item())
        return Proposal(decode(cand.squeeze(0).numpy()), "GP qLogNEI", acquisition=acq_value, mean=mean, std=std)
