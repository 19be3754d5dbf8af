"""A multi-fidelity generator: one model over every level, each suggestion a (candidate, level) pair.

    gen = MultiFidelityGenerator(problem, levels=world.fidelities, pool=world.points(), seed=0)
    [p] = gen.suggest(1)      # {"x": .., "_id": 17, "_fidelity": "quick_check"}
    gen.ingest([{**p, "quick_check_au": 0.62}])   # a cheaper level answers in its column

Levels (``ppu.campaign.replay.FidelitySpec``): each a column that estimates the one objective in the
same sense (a digital twin's prediction, a cheap physical check) or the objective itself (no column:
the full measurement), with a cost. Three rules, in order:

1. **Bulk digital levels.** A digital level (``physical: false``) whose answers for the whole pool
   cost at most one full measurement is queried for every candidate first (cheaper than one
   experiment, so its value per cost beats any single physical query). Known everywhere, its value
   is then an input of the model (a learnt prior, as the MOF loop's screening feature), not a task.
2. **Initial design.** Until every level has ``n_init`` values, the next query is at the cheapest
   level short of them, on the candidate the next cheaper level ranks best (the twin's best guesses).
3. **Value per cost.** One ``MultiTaskGP`` (BoTorch's ICM model: a kernel over the inputs and the
   bulk levels' values, times a learnt positive task covariance; a constant mean and a noise level
   per level) learns the other levels jointly. Why this model: on tens of points it learns one
   correlation per pair of levels, needs no assumption that the levels are ordered or on one scale
   (each has its own mean, variance and noise), and its posterior gives the joint law of two levels
   at a candidate, which the rule needs; the twin's hundreds of answers enter as a feature, which
   keeps every fit at tens of points (as a task they made each fit 20x slower and, on a few full
   measurements, let the learnt correlation collapse). With the full level alone left as a task,
   the model is a ``SingleTaskGP`` on the same features. The rule (``rule = "lookahead"``): a full
   measurement of x is worth its expected improvement EI(x) (analytic, on the best full value, a
   pending full measurement believed at its posterior mean), per full cost; a cheaper level's answer
   at x is worth what the next full measurement is then expected to gain, E[max(EI'(x), EI of the
   best other candidate)] with EI' after the answer (its correlation with the full level from the
   model's joint posterior, its noise included), per the cost of the look *and* the full
   measurement that must follow it. ``rule = "augmented_ei"`` is Huang et al.'s augmented EI
   (Struct. Multidisc. Optim. 32, 369, 2006): EI x corr x (1 - noise / sqrt(var + noise^2)) / cost;
   on the shipped example the two rules were within a few experiments of each other (3 seeds). Both
   read a cheaper level's correlation with the full one at the credibility of the n candidates measured
   at both, n / (n + ``pair_prior``): on two such pairs the learnt task covariance calls the shipped
   scratch check 0.99 correlated (it is about 0.8), and the rule then checked a dozen candidates for
   every full measurement (16 experiments to the top 1 %, median of 5 seeds; 6 with the credibility). A
   pair already measured or pending is never suggested again; a candidate measured (or pending) at
   full is done.

No IO and no clock (STYLE.md §2). ``last_why`` and ``model_version`` say what each suggestion read.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ppu.campaign.generators import Generator, _import_botorch, one_torch_thread
from ppu.campaign.problem import Problem, as_number
from ppu.campaign.replay import FidelitySpec

_MAXITER = 60


class MultiFidelityGenerator(Generator):
    """See the module docstring. ``levels``: the declared fidelities (exactly one without a column)."""

    name = "multifidelity"
    rule = "lookahead"  # or "augmented_ei" (Huang et al.'s rule for every level)
    pair_prior = 4.0  # credibility of a learnt correlation: n paired candidates count n / (n + pair_prior)

    def __init__(self, vocs: Problem, *, levels: Sequence[FidelitySpec], pool: Sequence[dict[str, Any]],
                 seed: int = 0, n_init: int = 2, mc_samples: int = 128):
        super().__init__(vocs, pool=pool, seed=seed)
        if len(vocs.objectives) != 1 or vocs.constraints:
            raise ValueError("multi-fidelity optimises one objective without constraints")
        full = [i for i, f in enumerate(levels) if f.column is None]
        if len(full) != 1:
            raise ValueError("exactly one level is the full measurement (no column)")
        _import_botorch()
        assert self.pool is not None
        self.levels = list(levels)
        self.full = full[0]
        full_cost = self.levels[self.full].cost
        # digital levels cheap enough to answer for the whole pool: model inputs; the rest: tasks
        self.bulk = [i for i, f in enumerate(self.levels) if not f.physical and f.cost * len(self.pool) <= full_cost]
        self.tasks = [i for i in range(len(self.levels)) if i not in self.bulk]
        self.objective = next(iter(vocs.objectives))
        self.sign = vocs.sign(self.objective)
        self.n_init = n_init
        self.mc_samples = mc_samples
        self.fits = 0
        self.last_why = ""
        self.last_level = ""
        self._warm: dict[str, Any] | None = None
        self.obs: list[tuple[int | None, dict[str, Any], int, float]] = []  # pid, result, level, signed value
        self.measured: set[tuple[int, int]] = set()  # (pool index, level) answered
        self.pending_pairs: dict[tuple[int, int], dict[str, Any]] = {}
        self.values: dict[tuple[int, int], float] = {}  # (pool index, level) -> signed value

    @property
    def model_version(self) -> str:
        counts = "-".join(f"{self.levels[i].name}{sum(1 for o in self.obs if o[2] == i)}" for i in self.tasks)
        return f"mf-mtgp-{self.fits:03d}-{counts}"

    def level_index(self, name: str) -> int:
        for i, f in enumerate(self.levels):
            if f.name == name:
                return i
        raise ValueError(f"unknown fidelity level {name!r} (levels: {[f.name for f in self.levels]})")

    # ---- the interface ------------------------------------------------------------------------

    def suggest(self, num_points: int | None = None) -> list[dict[str, Any]]:
        out = []
        for _ in range(1 if num_points is None else num_points):
            pid, lvl = self._choose()
            assert self.pool is not None
            point = {**self.vocs.constants, **self.pool[pid], "_id": pid, "_fidelity": self.levels[lvl].name}
            self.given[pid] = point
            self.pending[pid] = point
            self.pending_pairs[(pid, lvl)] = point
            self.last_level = self.levels[lvl].name
            out.append(dict(point))
        return out

    def ingest(self, results: list[dict[str, Any]]) -> None:
        for r in results:
            pid = r.get("_id")
            lvl = self.level_index(str(r["_fidelity"])) if r.get("_fidelity") is not None else self.full
            if pid is not None:
                if (pid, lvl) not in self.pending_pairs and (pid, lvl) not in self.measured:
                    raise ValueError(f"_id {pid!r} at {self.levels[lvl].name!r} was never suggested by this "
                                     "generator")
                self.pending_pairs.pop((pid, lvl), None)
                if not any(p == pid for p, _ in self.pending_pairs):
                    self.pending.pop(pid, None)
                self.measured.add((pid, lvl))
            self.data.append(dict(r))
            self.data_ids.append(pid)
            column = self.levels[lvl].column or self.objective
            y = as_number(r.get(column))
            if y is None or not math.isfinite(y):
                continue  # not measured: nothing to learn, the pair still counts as answered
            self.obs.append((pid, dict(r), lvl, self.sign * float(y)))
            if pid is not None:
                self.values[(pid, lvl)] = self.sign * float(y)

    def _pick_pool(self, left: list[int]) -> int:
        raise NotImplementedError("the multi-fidelity generator picks (candidate, level) pairs in suggest()")

    def _pick_box(self) -> np.ndarray:
        raise NotImplementedError("the multi-fidelity generator needs a candidate pool")

    # ---- choosing -----------------------------------------------------------------------------

    def _done(self) -> set[int]:
        """Candidates measured or pending at the full level: nothing more to ask about them."""
        return {p for p, lvl in (*self.measured, *self.pending_pairs) if lvl == self.full}

    def _open(self, lvl: int) -> list[int]:
        assert self.pool is not None
        done = self._done() if lvl not in self.bulk else set()
        return [i for i in range(len(self.pool))
                if i not in done and (i, lvl) not in self.measured and (i, lvl) not in self.pending_pairs]

    def _choose(self) -> tuple[int, int]:
        if not self._open(self.full):
            raise ValueError("every candidate of the pool has been measured at the full level")
        for lvl in self.bulk:
            left = self._open(lvl)
            if left:
                f = self.levels[lvl]
                total = f.cost * len(self.pool or [])
                self.last_why = (f"bulk digital level {f.name!r}: the whole pool costs {total:g} <= one full "
                                 f"measurement; {len(left)} candidates left")
                return left[0], lvl
        if any(any((i, b) in self.pending_pairs for i in range(len(self.pool or []))) for b in self.bulk):
            raise ValueError("ingest the bulk digital answers before asking for more")
        for lvl in sorted(self.tasks, key=lambda i: self.levels[i].cost):
            have = sum(1 for o in self.obs if o[2] == lvl) + sum(1 for _, g in self.pending_pairs if g == lvl)
            left = self._open(lvl)
            if have < self.n_init and left:
                return self._initial(lvl, left), lvl
        # in flight, the initial design may all be pending: no model before each level has a value back
        waiting = [lvl for lvl in self.tasks if not any(o[2] == lvl for o in self.obs) and self._open(lvl)]
        if waiting:
            lvl = min(waiting, key=lambda i: self.levels[i].cost)
            return self._initial(lvl, self._open(lvl)), lvl
        with one_torch_thread():
            return self._by_value_per_cost()

    def _initial(self, lvl: int, left: list[int]) -> int:
        """The candidate the most expensive cheaper level ranks best (no data below it: random)."""
        cost = self.levels[lvl].cost
        cheaper = sorted((g for g in range(len(self.levels)) if self.levels[g].cost < cost),
                         key=lambda g: -self.levels[g].cost)
        for g in cheaper:
            ranked = [i for i in left if (i, g) in self.values]
            if ranked:
                best = max(ranked, key=lambda i: self.values[(i, g)])
                self.last_why = (f"initial design ({self.levels[lvl].name} has < {self.n_init} values): best "
                                 f"{self.levels[g].name} among {len(ranked)} candidates")
                return best
        self.last_why = f"initial design ({self.levels[lvl].name} has < {self.n_init} values): random candidate"
        return int(self.rng.choice(left))

    # ---- the model ----------------------------------------------------------------------------

    def _features(self, pids: Sequence[int | None], results: Sequence[dict[str, Any]]) -> np.ndarray:
        """Encoded variables, then each bulk level's value scaled to [0, 1] over the pool."""
        x = self.vocs.encode(list(results))
        cols = []
        for b in self.bulk:
            known = np.array([v for (i, g), v in self.values.items() if g == b])
            lo, span = float(known.min()), max(float(np.ptp(known)), 1e-12)
            column = self.levels[b].column
            col = []
            for pid, r in zip(pids, results, strict=True):
                v = self.values.get((pid, b)) if pid is not None else None
                if v is None:
                    raw = as_number(r.get(column or ""))
                    v = self.sign * raw if raw is not None else float(known.mean())  # prior row without it
                col.append((v - lo) / span)
            cols.append(col)
        return np.concatenate([x, np.array(cols).T], axis=1) if cols else x

    def _pairs(self, lvl: int) -> int:
        """Candidates with a value at ``lvl`` and at the full level (prior rows matched by their variables)."""
        names = list(self.vocs.variables)

        def at(g: int) -> set[tuple[Any, ...]]:
            return {tuple(r.get(v) for v in names) for _, r, lv, _ in self.obs if lv == g}

        return len(at(lvl) & at(self.full))

    def _fit(self) -> Any:
        import torch
        from botorch.exceptions.warnings import OptimizationWarning
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import MultiTaskGP, SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        rows = [o for o in self.obs if o[2] in self.tasks]
        x = torch.tensor(self._features([o[0] for o in rows], [o[1] for o in rows]), dtype=torch.float64)
        y = torch.tensor([o[3] for o in rows], dtype=torch.float64).unsqueeze(-1)
        torch.manual_seed(self.seed + self.fits)  # the task covariance starts from a random draw
        if len(self.tasks) == 1:
            gp: Any = SingleTaskGP(x, y, outcome_transform=Standardize(m=1))
        else:
            t = torch.tensor([self.tasks.index(o[2]) for o in rows], dtype=torch.float64).unsqueeze(-1)
            # One Standardize over all levels, not one per level: the full level has a handful of values,
            # all near the best (they were chosen), and standardising them alone would call them average.
            # Offsets and scales between levels are what the per-level means and task covariance learn.
            gp = MultiTaskGP(torch.cat([x, t], dim=-1), y, task_feature=-1,
                             output_tasks=[self.tasks.index(self.full)], all_tasks=list(range(len(self.tasks))))
        if self._warm is not None:
            for part in ("mean_module", "covar_module", "likelihood"):
                try:
                    getattr(gp, part).load_state_dict(self._warm[part])
                except (RuntimeError, KeyError):
                    pass  # a shape changed: start that part afresh
        torch.manual_seed(self.seed + self.fits)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizationWarning)  # a non-converged fit still ranks
            warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp),
                             optimizer_kwargs={"options": {"maxiter": _MAXITER}})
        self._warm = {p: getattr(gp, p).state_dict() for p in ("mean_module", "covar_module", "likelihood")}
        self.fits += 1
        return gp

    def _by_value_per_cost(self) -> tuple[int, int]:
        import torch
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.sampling.normal import SobolQMCNormalSampler
        from gpytorch.utils.warnings import NumericalWarning

        assert self.pool is not None
        gp = self._fit()
        cands = sorted({i for lvl in self.tasks for i in self._open(lvl)})
        full_rows = [o for o in self.obs if o[2] == self.full]
        pend = [p for p, lvl in self.pending_pairs if lvl == self.full]
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples]), seed=self.seed + self.fits)
        base = torch.tensor(self._features([o[0] for o in full_rows], [o[1] for o in full_rows]), dtype=torch.float64)
        x_pend = (torch.tensor(self._features(pend, [self.pool[p] for p in pend]), dtype=torch.float64)
                  if pend else None)
        acq = qLogNoisyExpectedImprovement(gp, X_baseline=base, sampler=sampler, X_pending=x_pend,
                                           prune_baseline=False, cache_root=False)
        xc = torch.tensor(self._features(cands, [self.pool[i] for i in cands]), dtype=torch.float64)
        n = len(cands)
        multi = len(self.tasks) > 1

        def with_task(lvl: int) -> Any:
            return torch.cat([xc, torch.full((n, 1), float(self.tasks.index(lvl)), dtype=torch.float64)], dim=-1)

        best: tuple[float, int, int, float, float] | None = None
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericalWarning)  # jitter notices: the posterior is still right
            warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)  # torch,
            # about the task kernel's interpolation matrix that linear_operator builds; not ours, harmless
            log_ei = acq(xc.unsqueeze(1)).numpy().astype(float)
            pf = gp.posterior((with_task(self.full) if multi else xc).unsqueeze(1))
            post_full = (pf.mean.reshape(n).numpy(), pf.variance.clamp_min(1e-18).sqrt().reshape(n).numpy())
            f_best = max(o[3] for o in full_rows)
            if x_pend is not None:  # kriging believer: a pending full measurement returns its posterior mean
                task = torch.full((len(pend), 1), float(self.tasks.index(self.full)), dtype=torch.float64)
                at_pend = torch.cat([x_pend, task], dim=-1) if multi else x_pend
                pm = gp.posterior(at_pend.unsqueeze(1)).mean.reshape(-1)
                f_best = max(f_best, float(pm.max()))
            ei_now = _ei(post_full[0], post_full[1], f_best)
            if self.rule == "lookahead":  # one scale for every level: analytic EI on the believed incumbent
                log_ei = np.log(np.maximum(ei_now, 1e-300))
            full_cost = self.levels[self.full].cost
            for lvl in self.tasks:
                open_ = set(self._open(lvl))
                if not open_:
                    continue
                if lvl == self.full:
                    at = (with_task(lvl) if multi else xc).unsqueeze(1)
                    var = gp.posterior(at).variance.reshape(n).numpy()
                    noisy = gp.posterior(at, observation_noise=True).variance.reshape(n).numpy()
                    corr = np.ones(n)
                else:
                    both = torch.stack([with_task(self.full), with_task(lvl)], dim=1)  # n x 2 x (d+1)
                    cov = gp.posterior(both).distribution.covariance_matrix.numpy()
                    noisy = gp.posterior(both, observation_noise=True).variance[:, 1, 0].numpy()
                    var = cov[:, 1, 1]
                    corr = cov[:, 0, 1] / np.sqrt(np.maximum(cov[:, 0, 0] * cov[:, 1, 1], 1e-300))
                if lvl != self.full:
                    # The correlation is learnt from the candidates measured at both levels; on a few such
                    # pairs the task covariance calls almost any check perfect (0.99 on two pairs, where the
                    # shipped check's truth is ~0.8), and the rule then checks everything. It counts with
                    # the credibility of n pairs, n / (n + pair_prior): a check earns trust as pairs come in.
                    n_pairs = self._pairs(lvl)
                    trust = n_pairs / (n_pairs + self.pair_prior)
                    corr = corr * trust
                if self.rule == "lookahead" and lvl != self.full:
                    # what the answer at this level is worth: how much it raises the best EI of the
                    # next full measurement (over this candidate and the best other one), in expectation
                    m_full, s_full = post_full
                    rho = trust * cov[:, 0, 1] / np.sqrt(np.maximum(cov[:, 0, 0] * noisy, 1e-300))
                    ei_other = _second_best(ei_now)
                    now = np.maximum(ei_now, ei_other)
                    value = now + _preposterior_gain(m_full, s_full, np.clip(rho, 0.0, 1.0), f_best, ei_other)
                    # the look is followed by a full measurement: value per cost of that path
                    score = np.log(np.maximum(value, 1e-300)) - math.log(self.levels[lvl].cost + full_cost)
                elif self.rule == "lookahead":  # the full measurement: its expected improvement per cost
                    score = log_ei - math.log(full_cost)
                else:
                    noise = np.sqrt(np.maximum(noisy - var, 0.0))
                    a2 = 1.0 - noise / np.sqrt(np.maximum(var + noise ** 2, 1e-300))
                    score = (log_ei + np.log(np.clip(corr, 1e-12, 1.0)) + np.log(np.clip(a2, 1e-12, 1.0))
                             - math.log(self.levels[lvl].cost))
                for j, i in enumerate(cands):
                    if i in open_ and (best is None or score[j] > best[0]):
                        best = (float(score[j]), i, lvl, float(corr[j]), float(log_ei[j]))
        assert best is not None
        _, i, lvl, corr_j, lei = best
        rule = "lookahead value" if self.rule == "lookahead" else "augmented EI"
        self.last_why = (f"max {rule} per cost over {n} candidates x {len(self.tasks)} levels: "
                         f"{self.levels[lvl].name} (cost {self.levels[lvl].cost:g}, corr with full {corr_j:.2f}, "
                         f"log EI {lei:.2f}), {len(self.pending_pairs)} pending")
        return i, lvl


def _ei(m: np.ndarray, s: np.ndarray, best: float) -> np.ndarray:
    from scipy.stats import norm

    z = (m - best) / np.maximum(s, 1e-12)
    return np.asarray(np.maximum(s, 1e-12) * (z * norm.cdf(z) + norm.pdf(z)))


def _second_best(ei: np.ndarray) -> np.ndarray:
    """For each candidate, the best EI among the others."""
    if len(ei) < 2:
        return np.zeros_like(ei)
    order = np.argsort(ei)
    out = np.full_like(ei, ei[order[-1]])
    out[order[-1]] = ei[order[-2]]
    return out


def _preposterior_gain(m: np.ndarray, s: np.ndarray, rho: np.ndarray, best: float, other: np.ndarray) -> np.ndarray:
    """E[max(EI after the cheap answer, other)] - max(EI now, other), the answer drawn from its predictive:
    the full level's mean moves by s*rho*z (z standard normal) and its std shrinks to s*sqrt(1-rho^2)."""
    z, w = np.polynomial.hermite_e.hermegauss(24)
    w = w / w.sum()
    s_after = s * np.sqrt(np.maximum(1.0 - rho ** 2, 0.0))
    after = np.zeros_like(m)
    for zk, wk in zip(z, w, strict=True):
        after += wk * np.maximum(_ei(m + s * rho * zk, s_after, best), other)
    return np.asarray(np.maximum(after - np.maximum(_ei(m, s, best), other), 0.0))
