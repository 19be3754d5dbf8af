"""BoTorch over mixed spaces without a pool (issue 15, item 3): optimize_acqf_mixed over the labels and
levels, the continuous box for the rest, the pool when there is one; a low-fidelity warm start."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from ppu.campaign.generators import BoTorchGenerator
from ppu.campaign.mixed import combinations, levels
from ppu.campaign.problem import Problem

BONUS = {"a": 0.0, "b": 4.0, "c": 0.4}  # any b point beats every other label


def _toy(descriptors: bool = False, **extra: Any) -> Problem:
    cat: dict[str, Any] = {"type": "categorical", "values": ["a", "b", "c"]}
    if descriptors:
        cat["descriptors"] = {"a": [0.0, 1.0], "b": [1.0, 0.0], "c": [0.5, 0.5]}
    return Problem.model_validate({
        "variables": {"kind": cat, "x": [0, 1], "n": {"type": "integer", "domain": [1, 5]},
                      "d": {"type": "discrete", "values": [0.5, 1]}, **extra},
        "objectives": {"f": "MAXIMIZE"}})


def _f(p: dict[str, Any]) -> float:
    """Label b is clearly best; within it x = 0.7, n = 4, d = 1."""
    return BONUS[p["kind"]] - 4 * (p["x"] - 0.7) ** 2 - 0.1 * (p["n"] - 4) ** 2 - 0.3 * abs(p["d"] - 1)


def _run(gen: BoTorchGenerator, p: Problem, k: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(k):
        [x] = gen.suggest(1)
        assert p.check_point(x) is None, x  # inside the declared space: labels, levels, integers, bounds
        gen.ingest([{**x, "f": _f(x)}])
        out.append(x)
    return out


@pytest.mark.parametrize("descriptors", [False, True])
def test_without_a_pool_the_gp_picks_the_clearly_better_label(descriptors: bool) -> None:
    p = _toy(descriptors)
    gen = BoTorchGenerator(p, seed=3, n_init=6)
    init = _run(gen, p, 6)
    assert "initial design" in gen.last_why and "b" in {x["kind"] for x in init}
    later = _run(gen, p, 3)
    assert "optimize_acqf_mixed" in gen.last_why and "30 fixed combination(s)" in gen.last_why
    assert [x["kind"] for x in later] == ["b"] * 3
    best = max(later, key=_f)
    assert _f(best) > 3.4  # the optimum is 4.0 (x = 0.7, n = 4, d = 1); a random b point averages ~3.1
    assert isinstance(best["n"], int) and best["d"] in (0.5, 1.0)


def test_every_label_and_level_is_one_fixed_feature_combination() -> None:
    p = _toy()
    lv = {lev.name: lev for lev in levels(p)}
    assert lv["kind"].columns == [0, 1, 2] and lv["kind"].rows[1] == [0.0, 1.0, 0.0]
    assert lv["n"].rows == [[0.0], [0.25], [0.5], [0.75], [1.0]]
    fixed, relaxed, _ = combinations(p, np.random.default_rng(0))
    assert len(fixed) == 3 * 5 * 2 and not relaxed
    assert all(set(ff) == {0, 1, 2, 4, 5} for ff in fixed)  # column 3 (x) stays free


def test_many_levels_are_relaxed_to_their_interval_and_snapped() -> None:
    p = Problem.model_validate({"variables": {"kind": ["a", "b", "c"], "x": [0, 1],
                                              "n": {"type": "integer", "domain": [0, 100]}},
                                "objectives": {"f": "MAXIMIZE"}})
    fixed, relaxed, note = combinations(p, np.random.default_rng(0))
    assert len(fixed) == 3 and [lev.name for lev in relaxed] == ["n"] and "snapped" in note
    gen = BoTorchGenerator(p, seed=0, n_init=4)
    for _ in range(6):
        [x] = gen.suggest(1)
        assert p.check_point(x) is None and isinstance(x["n"], int), x
        gen.ingest([{**x, "f": BONUS[x["kind"]] - ((x["n"] - 30) / 50) ** 2 - (x["x"] - 0.5) ** 2}])
    assert "relaxed" in gen.last_why


def test_mixture_sums_hold_with_a_categorical_beside_them() -> None:
    p = Problem.model_validate({
        "variables": {"kind": ["a", "b", "c"], "u": [0.1, 0.8], "v": [0.1, 0.8], "w": [0.0, 0.5]},
        "mixtures": {"blend": {"components": ["u", "v", "w"]}},
        "objectives": {"f": "MAXIMIZE"}})
    gen = BoTorchGenerator(p, seed=1, n_init=4)
    for _ in range(7):
        [x] = gen.suggest(1)
        assert p.check_point(x) is None, x
        assert abs(x["u"] + x["v"] + x["w"] - 1.0) < 1e-3 and 0.0 <= x["w"] <= 0.5
        gen.ingest([{**x, "f": BONUS[x["kind"]] + x["u"] - x["w"]}])
    assert "optimize_acqf_mixed" in gen.last_why and "mixture sums" in gen.last_why


def test_with_a_pool_the_acquisition_is_maximised_over_the_pool() -> None:
    p = _toy()
    rng = np.random.default_rng(0)
    pool = [{"kind": k, "x": float(rng.random()), "n": int(rng.integers(1, 6)), "d": float(rng.choice([0.5, 1]))}
            for k in ("a", "b", "c") for _ in range(30)]
    gen = BoTorchGenerator(p, pool=pool, seed=0, n_init=6)
    for _ in range(10):
        [x] = gen.suggest(1)
        assert {k: x[k] for k in pool[0]} in pool
        gen.ingest([{**x, "f": _f(x)}])
    assert "over 81 pool candidates" in gen.last_why  # 90 less the 9 suggested before
    assert max(_f(r) for r in gen.data) > 0.9 * max(_f(q) for q in pool)


def test_a_warm_start_takes_the_best_screened_points_spaced_apart() -> None:
    p = _toy()
    gen = BoTorchGenerator(p, seed=0, n_init=3)
    good = {"kind": "b", "x": 0.7, "n": 4, "d": 1.0}
    near = {**good, "x": 0.72}  # too close to the first: skipped
    other = {"kind": "c", "x": 0.2, "n": 2, "d": 0.5}
    gen.warm_start([other, near, good], [0.5, 0.9, 1.0])
    first, second = gen.suggest(2)
    assert {k: first[k] for k in good} == pytest.approx(good)
    assert {k: second[k] for k in other} == pytest.approx(other)
    assert "initial design: Sobol point" in (gen.suggest(1), gen.last_why)[1]  # the screen is used up
    with pytest.raises(ValueError, match="outside the declared space"):
        gen.warm_start([{**good, "x": 1.5}], [1.0])


def test_while_every_result_is_alike_no_gp_is_fitted() -> None:
    """All-equal values (every run so far clogged: yield 0) give a GP nothing to learn and make BoTorch warn."""
    p = _toy()
    gen = BoTorchGenerator(p, seed=1, n_init=2)
    for x in gen.suggest(4):
        gen.ingest([{**x, "f": 0.0}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen.suggest(1)
    assert "all 4 results alike, no GP yet" in gen.last_why and gen.fits == 0
    [x] = list(gen.pending.values())
    gen.ingest([{**x, "f": 0.4}])  # one that differs: the GP proposes again
    gen.suggest(1)
    assert gen.fits == 1 and "qLogNEI" in gen.last_why


def test_too_many_label_combinations_search_a_seeded_subset() -> None:
    p = Problem.model_validate({"variables": {"u": ["a", "b", "c"], "v": ["x", "y", "z"], "t": [0, 1]},
                                "objectives": {"f": "MAXIMIZE"}})
    fixed, relaxed, note = combinations(p, np.random.default_rng(0), cap=5)
    again, _, _ = combinations(p, np.random.default_rng(0), cap=5)
    assert 1 <= len(fixed) <= 5 and fixed == again and not relaxed and "of 9 label combinations" in note
    assert all(sum(ff[c] for c in range(3)) == 1 and sum(ff[c] for c in range(3, 6)) == 1 for ff in fixed)


def test_a_space_of_labels_and_levels_only_scores_every_combination() -> None:
    import torch

    from ppu.campaign.mixed import optimise_box

    p = Problem.model_validate({"variables": {"kind": ["a", "b", "c"], "n": {"type": "integer", "domain": [1, 3]}},
                                "objectives": {"f": "MAXIMIZE"}})
    target = torch.tensor(p.encode([{"kind": "c", "n": 2}])[0])
    calls: list[int] = []

    def acq(x: torch.Tensor) -> torch.Tensor:  # peaks at (c, 2): the enumeration must find it
        calls.append(len(x))
        return -((x.squeeze(1) - target) ** 2).sum(-1)

    u, how = optimise_box(acq, p)
    assert p.decode(u[None]) == [{"kind": "c", "n": 2}] and calls == [9]
    assert how == "over the mixed space: every combination scored, 9 fixed combination(s)"
