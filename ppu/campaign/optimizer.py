"""Bayesian optimisation over a discrete candidate pool, with pending points and a purity constraint.

No IO and no clock (STYLE.md §2): the runner feeds observations in and asks for one candidate at a
time, whenever a synthesis slot frees up. Candidates proposed but not yet measured are passed to
the acquisition as ``X_pending``, so the next proposal accounts for them instead of repeating them.

- objective GP: ``SingleTaskGP`` (``Normalize`` over the pool's bounds, ``Standardize``) on the
  measured CO2 uptake; acquisition ``qLogNoisyExpectedImprovement`` with ``X_pending``;
- constraint GP: the same on measured XRD purity; the acquisition is weighted by the probability
  that purity >= ``purity_min`` (log EI + log P(feasible));
- screening (cheap, low fidelity): the digital twin's prediction of every pool candidate becomes
  an extra input feature; the initial design picks from the top-k screened candidates, and once
  the GP proposes, candidates outside that shortlist compete at ``outside_weight`` (0.1) times
  their acquisition, so a twin that misranks the best candidates costs experiments, not the result.

Every proposal is a :class:`Decision` (candidate, acquisition value, predicted mean/std, model
version, why), which the runner writes to ``decisions.jsonl``.

The learn step's surrogates are the models decisions read: the runner publishes each version
through the lab's trainer (``train.surrogate``, on the same features: the pool's and the twin's
columns) and hands its hyperparameters to :meth:`PoolOptimizer.adopt`; from then on the GP of that
property has the published kernel, conditioned on every measurement so far (exact posterior, no
refit here), and each decision names the version (``co2_uptake_measured/v0002+n14``). Before the
first version is back, the optimiser fits its own (``bo-gp-NNN``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ppu.campaign.generators import one_torch_thread
from ppu.drivers.mof.capabilities import Candidate, GPKernel
from ppu.drivers.mof.featurize import featurize

with warnings.catch_warnings():
    # linear_operator (under gpytorch) applies torch.jit.script at import time, which torch >= 2.10
    # marks deprecated; not ours to fix and harmless. Only that message is muted, only at import.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.exceptions.warnings import OptimizationWarning
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.input import Normalize
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from gpytorch.utils.warnings import NumericalWarning

_MIN_GP = 3
_MAXITER = 60  # L-BFGS steps per refit; warm-started, so enough on tens of points




@dataclass
class Decision:
    candidate_id: str
    index: int
    acquisition: float | None
    mean: float | None
    std: float | None
    p_feasible: float | None
    screen_mean: float | None
    model_version: str
    why: str
    n_observed: int
    pending: list[str] = field(default_factory=list)
    surrogates: dict[str, str] = field(default_factory=dict)  # property -> published version the decision read
    # the level the proposal goes to: here always the lab's whole workflow; the twin's screen is the low
    # fidelity it read (screen_mean, and "+screen-vNNNN" in model_version)
    fidelity: str = "lab"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Observation:
    purity: float
    uptake: float | None  # None: not measured (purity failed the check first)


class PoolOptimizer:
    """See the module docstring. ``screen``: pool index -> screened mean (None: no screening)."""

    def __init__(self, pool: Sequence[Candidate], *, purity_min: float = 0.9, seed: int = 0, n_init: int = 3,
                 screen: Sequence[float] | np.ndarray | None = None,
                 screen_purity: Sequence[float] | np.ndarray | None = None,
                 top_k: int | None = None, screen_version: str = "", outside_weight: float = 0.1):
        if not pool:
            raise ValueError("the candidate pool is empty")
        self.pool = list(pool)
        self.ids = [c.id or f"cand-{i}" for i, c in enumerate(self.pool)]
        self.index = {cid: i for i, cid in enumerate(self.ids)}
        self.purity_min = purity_min
        self.n_init = n_init
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        x = featurize(self.pool)
        self.screen = None if screen is None else np.asarray(screen, dtype=float)
        self.screen_purity = None if screen_purity is None else np.asarray(screen_purity, dtype=float)
        for col in (self.screen, self.screen_purity):  # the twin's predictions as prior features
            if col is not None:
                x = torch.cat([x, torch.as_tensor(col, dtype=torch.float64).unsqueeze(-1)], dim=-1)
        self.x_all = x
        keep = (x.max(0).values - x.min(0).values) > 1e-9  # constant columns carry nothing
        self.x = x[:, keep]
        self.bounds = torch.stack([self.x.min(0).values, self.x.max(0).values])
        self.eligible = np.ones(len(self.pool), dtype=bool)
        if self.screen is not None and top_k is not None and top_k < len(self.pool):
            self.eligible[:] = False
            self.eligible[np.argsort(-self.screen_score())[:top_k]] = True
        self.screen_version = screen_version
        # Once the GP proposes, a candidate outside the screened shortlist competes with its
        # acquisition times outside_weight (0: a hard shortlist, the rest only when it is used up).
        self.outside_log_weight: float | None = (
            math.log(outside_weight) if self.screen is not None and outside_weight > 0 else None)
        self.keep = keep
        self.obs: dict[int, Observation] = {}
        self.published: dict[str, tuple[str, GPKernel]] = {}  # "y" / "c" -> (version, kernel)
        self.fits = 0
        self._warm: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._fitted_at: dict[str, int] = {}  # data size at each model's last hyperparameter fit

    def screen_score(self) -> np.ndarray:
        """Screened uptake, weighted by how likely the twin thinks purity passes (soft, not a cut)."""
        assert self.screen is not None
        if self.screen_purity is None:
            return self.screen
        feas = 1.0 / (1.0 + np.exp(-(self.screen_purity - self.purity_min) / 0.05))
        return self.screen * feas

    # ---- data ---------------------------------------------------------------------------------

    def observe(self, candidate_id: str, purity: float, uptake: float | None) -> None:
        self.obs[self.index[candidate_id]] = Observation(purity, uptake)

    def best(self) -> tuple[str, float] | None:
        """Best measured uptake among samples that passed the purity check."""
        ok = [(o.uptake, i) for i, o in self.obs.items() if o.uptake is not None and o.purity >= self.purity_min]
        if not ok:
            return None
        v, i = max(ok)
        return self.ids[i], float(v)

    @property
    def model_version(self) -> str:
        pub = self.published.get("y")
        base = f"{pub[0]}+n{len(self.obs)}" if pub else f"bo-gp-{self.fits:03d}-n{len(self.obs)}"
        return f"{base}+screen-{self.screen_version}" if self.screen_version else base

    def surrogates(self) -> dict[str, str]:
        return {("uptake" if key == "y" else "purity"): ver for key, (ver, _) in self.published.items()}

    def training_set(self, prop: str) -> tuple[list[str], list[float], list[list[float]]]:
        """What a published surrogate of ``prop`` ("uptake" or "purity") is trained on: candidate ids,
        values, and per candidate the twin's columns the decision model reads beside the features."""
        if prop == "uptake":
            rows = [(i, o.uptake) for i, o in self.obs.items() if o.uptake is not None]
        else:
            rows = [(i, o.purity) for i, o in self.obs.items()]
        extra = [[float(col[i]) for col in (self.screen, self.screen_purity) if col is not None] for i, _ in rows]
        return [self.ids[i] for i, _ in rows], [float(v) for _, v in rows if v is not None], extra

    def feature_bounds(self) -> list[list[float]]:
        """The pool's range of every feature (the twin's columns included): the box the decision GP
        scales from, so a published surrogate is fitted in the same space."""
        return [self.x_all.min(0).values.tolist(), self.x_all.max(0).values.tolist()]

    def extra_feature_names(self) -> list[str]:
        return [n for n, col in (("twin_co2_uptake", self.screen), ("twin_purity", self.screen_purity))
                if col is not None]

    def adopt(self, prop: str, version: str, kernel: GPKernel) -> None:
        """Decisions read the published surrogate of ``prop`` from now on (see the module docstring)."""
        key = "y" if prop == "uptake" else "c"
        n_all = int(self.keep.numel())
        if len(kernel.lengthscale) != n_all:
            raise ValueError(f"the published {prop} surrogate {version} has {len(kernel.lengthscale)} features; "
                             f"the decision model reads {n_all}")
        self.published[key] = (version, kernel)

    # ---- models -------------------------------------------------------------------------------

    def _fit(self, key: str, idx: list[int], y: list[float]) -> SingleTaskGP | None:
        if len(idx) < _MIN_GP or float(np.ptp(y)) < 1e-9:
            return None
        train_x = self.x[idx]
        train_y = torch.tensor(y, dtype=torch.float64).unsqueeze(-1)
        gp = SingleTaskGP(train_x, train_y, input_transform=Normalize(d=self.x.shape[-1], bounds=self.bounds),
                          outcome_transform=Standardize(m=1))
        if key in self.published:
            self._load(gp, self.published[key][1])
            gp.eval()
            return gp
        warm = self._warm.get(key)
        if warm is not None:  # start from the last fit's hyperparameters: a few L-BFGS steps then suffice
            gp.covar_module.load_state_dict(warm[0])
            gp.likelihood.load_state_dict(warm[1])
            if len(idx) < self._fitted_at.get(key, 0) + max(2, self._fitted_at.get(key, 0) // 4):
                # Refit schedule: hyperparameters move little from one point to the next, so between
                # refits the GP is conditioned on all data with the last ones (exact posterior, no
                # L-BFGS). That halves proposal time, which at a demo's time scale is lab hours.
                gp.eval()
                return gp
        torch.manual_seed(self.seed + self.fits)
        with warnings.catch_warnings():
            # L-BFGS stopping early on a handful of points still leaves a usable fit (the GP is
            # refitted at every proposal), so a non-converged fit is not an error here.
            warnings.simplefilter("ignore", OptimizationWarning)
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp),
                             optimizer_kwargs={"options": {"maxiter": _MAXITER}})
        self._warm[key] = (gp.covar_module.state_dict(), gp.likelihood.state_dict())
        self._fitted_at[key] = len(idx)
        self.fits += 1
        return gp

    def _load(self, gp: SingleTaskGP, kernel: GPKernel) -> None:
        """The published kernel, its lengthscales rescaled from feature units to this pool's unit cube;
        a feature the publisher saw constant gets a lengthscale far beyond the cube (it cannot matter)."""
        span = (self.bounds[1] - self.bounds[0]).clamp_min(1e-12)
        ls_all = [math.inf if v is None else float(v) for v in kernel.lengthscale]
        ls = torch.tensor([ls_all[j] for j in torch.nonzero(self.keep).reshape(-1).tolist()], dtype=torch.float64)
        ls = torch.where(torch.isfinite(ls), ls / span, torch.full_like(ls, 1e3)).clamp(1e-3, 1e3)
        kern = gp.covar_module
        if hasattr(kern, "outputscale"):
            kern.outputscale = torch.tensor(kernel.outputscale, dtype=torch.float64)
            kern = kern.base_kernel
        kern.lengthscale = ls.reshape(1, -1)
        gp.likelihood.noise = torch.tensor([max(kernel.noise, 1e-6)], dtype=torch.float64)
        gp.mean_module.constant = torch.tensor(kernel.constant, dtype=torch.float64)

    def models(self) -> tuple[SingleTaskGP | None, SingleTaskGP | None]:
        up = [(i, o.uptake) for i, o in self.obs.items() if o.uptake is not None]
        gp_y = self._fit("y", [i for i, _ in up], [float(v) for _, v in up if v is not None])
        pur = list(self.obs.items())
        gp_c = self._fit("c", [i for i, _ in pur], [o.purity for _, o in pur])
        return gp_y, gp_c

    def predict(self, gp: SingleTaskGP, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad(), warnings.catch_warnings():
            # gpytorch adds jitter when a covariance is numerically not p.d. and says so; the
            # posterior with jitter is what we want, so that notice is not an error.
            warnings.simplefilter("ignore", NumericalWarning)
            post = gp.posterior(self.x[list(idx)])
            return (post.mean.squeeze(-1).numpy().astype(float),
                    post.variance.clamp_min(0).sqrt().squeeze(-1).numpy().astype(float))

    # ---- proposing ----------------------------------------------------------------------------

    def candidates_left(self, pending: Sequence[str], whole_pool: bool = False) -> list[int]:
        busy = set(self.obs) | {self.index[p] for p in pending}
        left = [i for i in range(len(self.pool)) if (whole_pool or self.eligible[i]) and i not in busy]
        if not left:  # the screened shortlist is used up: open the rest of the pool
            left = [i for i in range(len(self.pool)) if i not in busy]
        return left

    def propose(self, pending: Sequence[str] = ()) -> Decision:
        with one_torch_thread():
            return self._propose(pending)

    def _propose(self, pending: Sequence[str]) -> Decision:
        left = self.candidates_left(pending)
        if not left:
            raise LookupError("every candidate of the pool has been proposed")
        scr = self.screen
        if len(self.obs) < self.n_init:
            return self._initial(left, pending)
        gp_y, gp_c = self.models()
        if gp_y is None:
            return self._feasibility_first(gp_c, left, pending)
        if self.outside_log_weight is not None:
            # Soft shortlist: once the GP speaks, the whole pool competes, and a candidate the
            # twin did not shortlist pays a fixed log penalty. A twin that misranks the best
            # candidates then costs some experiments, not the campaign.
            left = self.candidates_left(pending, whole_pool=True)
        base = [i for i, o in self.obs.items() if o.uptake is not None]
        x_pending = self.x[[self.index[p] for p in pending]] if pending else None
        acq = qLogNoisyExpectedImprovement(gp_y, X_baseline=self.x[base], X_pending=x_pending, prune_baseline=False,
                                           cache_root=False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericalWarning)  # jitter notices, as in predict()
            log_ei = acq(self.x[left].unsqueeze(1)).numpy().astype(float)
        log_pf = np.zeros(len(left))
        if gp_c is not None:
            m, s = self.predict(gp_c, left)
            z = (m - self.purity_min) / np.maximum(s, 1e-9)
            log_pf = np.log(np.clip(0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2))), 1e-12, 1.0))
        score = log_ei + log_pf
        if self.outside_log_weight is not None:
            score = score + np.where(self.eligible[left], 0.0, self.outside_log_weight)
        j = int(np.argmax(score))
        i = left[j]
        mean, std = self.predict(gp_y, [i])
        return Decision(
            candidate_id=self.ids[i], index=i, acquisition=float(score[j]), mean=float(mean[0]), std=float(std[0]),
            p_feasible=float(math.exp(log_pf[j])), screen_mean=None if scr is None else float(scr[i]),
            model_version=self.model_version, n_observed=len(self.obs), pending=list(pending),
            surrogates=self.surrogates(),
            why=(f"max log qNEI x P(purity>={self.purity_min})"
                 + (" x shortlist weight" if self.outside_log_weight is not None else "")
                 + f" over {len(left)} candidates, {len(pending)} pending"))

    def _feasibility_first(self, gp_c: SingleTaskGP | None, left: list[int], pending: Sequence[str]) -> Decision:
        """Too few pure samples to model the objective yet: go where purity is most likely to pass."""
        if gp_c is None:
            return self._initial(left, pending)
        m, s = self.predict(gp_c, left)
        z = (m - self.purity_min) / np.maximum(s, 1e-9)
        tie = 0.0 if self.screen is None else 0.1 * self.screen[left] / max(float(np.std(self.screen)), 1e-9)
        score = z + tie
        j = int(np.argmax(score))
        i = left[j]
        return Decision(candidate_id=self.ids[i], index=i, acquisition=float(score[j]), mean=None, std=None,
                        p_feasible=float(0.5 * (1 + math.erf(z[j] / math.sqrt(2)))),
                        screen_mean=None if self.screen is None else float(self.screen[i]),
                        model_version=self.model_version, n_observed=len(self.obs), pending=list(pending),
                        surrogates=self.surrogates(),
                        why="fewer than 3 pure samples measured: maximise the purity GP's z-score"
                            + (" (+ screen tie-break)" if self.screen is not None else ""))

    def _initial(self, left: list[int], pending: Sequence[str]) -> Decision:
        if self.screen is not None:
            score = self.screen_score()
            i = max(left, key=lambda k: float(score[k]))
            why = "initial design: best screened candidate (uptake x twin P(pure)) not yet proposed"
        else:
            i = int(self.rng.choice(left))
            why = "initial design: random candidate (no screening)"
        return Decision(candidate_id=self.ids[i], index=i, acquisition=None, mean=None, std=None, p_feasible=None,
                        screen_mean=None if self.screen is None else float(self.screen[i]),
                        model_version=self.model_version, why=why, n_observed=len(self.obs),
                        surrogates=self.surrogates(), pending=list(pending))
