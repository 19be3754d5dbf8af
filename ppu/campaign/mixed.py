"""Maximising an acquisition over a declared space when there is no pool: the continuous box, and the
mixed continuous/categorical/discrete case the way BoTorch's ``optimize_acqf_mixed`` does it.

The generators model points in the problem's unit cube (:meth:`Problem.encode`): a continuous or
integer variable is one column, a discrete one a column at its scaled values, a categorical one a
one-hot block (or its scaled descriptors). Labels and levels are not points of a continuum, so the
acquisition is not optimised across them: every combination of the categorical labels (and of the
integer and discrete levels, while the combinations stay few) becomes one ``fixed_features`` dict,
the continuous columns are optimised by L-BFGS from ``raw_samples`` starts for each, and the best
combination wins (``optimize_acqf_mixed``). When the levels would make too many combinations, the
integer and discrete columns are relaxed to the interval between their lowest and highest level
and the optimum snapped to the nearest level; when the labels alone are too many, a seeded random
subset of their combinations is searched. Each case says so in the ``why`` it returns. Mixture
groups (fractions summing to a total) are equality constraints in both cases.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppu.campaign.problem import CategoricalVariable, ContinuousVariable, DiscreteVariable, IntegerVariable, Problem

MAX_COMBINATIONS = 32  # fixed-feature combinations searched per proposal (each is one L-BFGS run)


@dataclass
class Level:
    """One variable that takes a few fixed values: the encoded columns it owns and each value's encoding."""

    name: str
    columns: list[int]
    rows: list[list[float]]  # one encoded row (len(columns)) per value
    categorical: bool


def levels(problem: Problem) -> list[Level]:
    """Every categorical, integer and discrete variable with the encoding of each of its values."""
    base: dict[str, Any] = {n: _first(v) for n, v in problem.variables.items()}
    out: list[Level] = []
    j = 0
    for name, v in problem.variables.items():
        w = _width(v)
        if isinstance(v, CategoricalVariable):
            vals: list[Any] = list(v.values)
        elif isinstance(v, IntegerVariable):
            vals = list(range(v.domain[0], v.domain[1] + 1))
        elif isinstance(v, DiscreteVariable):
            vals = list(v.values)
        else:
            j += w
            continue
        enc = problem.encode([{**base, name: x} for x in vals])[:, j:j + w]
        out.append(Level(name, list(range(j, j + w)), enc.tolist(), isinstance(v, CategoricalVariable)))
        j += w
    return out


def _width(v: Any) -> int:
    if isinstance(v, CategoricalVariable):
        return len(next(iter(v.descriptors.values()))) if v.descriptors else len(v.values)
    return 1


def _first(v: Any) -> Any:
    if isinstance(v, CategoricalVariable | DiscreteVariable):
        return v.values[0]
    return v.domain[0]


def combinations(problem: Problem, rng: np.random.Generator, cap: int = MAX_COMBINATIONS
                 ) -> tuple[list[dict[int, float]], list[Level], str]:
    """The ``fixed_features_list`` to search, the levels left relaxed (searched as an interval, then
    snapped), and a note on how the combinations were chosen."""
    lv = levels(problem)
    cats = [lev for lev in lv if lev.categorical]
    nums = [lev for lev in lv if not lev.categorical]
    n_all = int(np.prod([len(lev.rows) for lev in lv])) if lv else 1
    n_cat = int(np.prod([len(lev.rows) for lev in cats])) if cats else 1
    if n_all <= cap:
        fixed, relaxed, note = lv, [], f"{n_all} fixed combination(s)"
    elif n_cat <= cap:
        fixed, relaxed = cats, nums
        note = (f"{n_cat} label combination(s); {', '.join(lev.name for lev in nums)} relaxed to an interval "
                "and snapped to the nearest level")
    else:
        fixed, relaxed = cats, nums
        note = f"{cap} of {n_cat} label combinations (seeded random subset)"
    if not fixed:
        return [], relaxed, note
    if n_cat > cap and fixed is cats:
        picks = [tuple(int(rng.integers(len(lev.rows))) for lev in cats) for _ in range(cap)]
        picks = list(dict.fromkeys(picks))
    else:
        picks = list(itertools.product(*(range(len(lev.rows)) for lev in fixed)))
    out = []
    for pick in picks:
        ff: dict[int, float] = {}
        for lev, k in zip(fixed, pick, strict=True):
            ff.update({c: float(x) for c, x in zip(lev.columns, lev.rows[k], strict=True)})
        out.append(ff)
    return out, relaxed, note


def optimise_box(acq: Any, problem: Problem, *, seed: int = 0, num_restarts: int = 4, raw_samples: int = 128,
                 maxiter: int = 60, cap: int = MAX_COMBINATIONS) -> tuple[np.ndarray, str]:
    """The encoded point (a row of the unit cube, already snapped to valid values) that maximises
    ``acq`` over the declared space, and how it was searched. A continuous box gets 6 restarts from
    256 raw samples; a mixed space ``num_restarts`` from ``raw_samples`` per combination, halved past
    four combinations (the combinations themselves are the wider search), ``maxiter`` L-BFGS steps."""
    from ppu.campaign.generators import _import_botorch

    _import_botorch()  # its import-time deprecation notice muted, as for every GP of the campaign layer
    import torch
    from botorch.optim import optimize_acqf, optimize_acqf_mixed

    d = problem.width
    bounds = torch.stack([torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)])
    eq = [(torch.tensor(i), torch.tensor(c, dtype=torch.float64), float(r))
          for i, c, r in problem.mixture_constraints()] or None
    mix = " with the mixture sums" if eq else ""
    torch.manual_seed(seed)
    options: dict[str, bool | float | int | str] = {"maxiter": maxiter}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # restarts that stop early still return
        if all(isinstance(v, ContinuousVariable) for v in problem.variables.values()):
            best, _ = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=6, raw_samples=256,
                                    equality_constraints=eq)
            return best.detach().numpy()[0], f"over the continuous box{mix}"
        fixed, relaxed, note = combinations(problem, np.random.default_rng(seed), cap)
        for lev in relaxed:  # the interval between the lowest and the highest level, nothing beyond
            for c in lev.columns:
                bounds[0, c] = min(r[0] for r in lev.rows)
                bounds[1, c] = max(r[0] for r in lev.rows)
        if len(fixed) == 0:
            how = "optimize_acqf"
            best, _ = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=num_restarts, raw_samples=raw_samples,
                                    equality_constraints=eq, options=options)
        elif len(fixed[0]) == d:  # nothing continuous left: score every combination
            how = "every combination scored"
            xs = torch.tensor([[ff[c] for c in range(d)] for ff in fixed], dtype=torch.float64).unsqueeze(1)
            with torch.no_grad():
                best = xs[int(torch.argmax(acq(xs)))]
        else:
            how = "optimize_acqf_mixed"
            wide = len(fixed) > 4
            best, _ = optimize_acqf_mixed(acq, bounds=bounds, q=1, num_restarts=max(1, num_restarts // (1 + wide)),
                                          raw_samples=max(16, raw_samples // (1 + wide)), fixed_features_list=fixed,
                                          equality_constraints=eq, options=options)
    u = best.detach().numpy().reshape(1, d)
    snapped = problem.encode(problem.decode(u))  # integers rounded, levels and labels snapped
    return snapped[0], f"over the mixed space: {how}, {note}{mix}"
