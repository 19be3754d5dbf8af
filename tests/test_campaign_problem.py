"""Declared problems (gest-api VOCS) and the generators behind suggest/ingest (issue 15, items 1 and 3)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from ppu.campaign.config import CampaignConfig, load_campaign
from ppu.campaign.generators import BoTorchGenerator, RandomGenerator, SobolGenerator, hypervolume, pareto_front
from ppu.campaign.problem import Problem
from ppu.campaign.replay import ReplaySpec, ReplayWorld
from ppu.campaign.replay_report import run_replay_campaign
from ppu.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

MIXED = {
    "variables": {
        "temperature_c": [30, 120],
        "residence_min": {"type": "continuous", "domain": [0.5, 20], "log": True},
        "stages": {"type": "IntegerVariable", "domain": [1, 4]},
        "loading": {"type": "discrete", "values": [5, 0.5, 2, 1]},
        "ligand": {"type": "categorical", "values": ["L1", "L2", "L3"]},
        "base": {"type": "categorical", "values": ["a", "b"], "descriptors": {"a": [1.0, 0.0], "b": [3.0, 2.0]}},
    },
    "objectives": {"yield": "maximize", "cost": "MINIMIZE"},
    "constraints": {"selectivity": ["GREATER_THAN", 0.9], "temp_out": ["BOUNDS", [10, 80]]},
    "constants": {"pressure_bar": 5},
    "observables": ["side_product"],
}


def test_a_vocs_problem_reads_in_its_shorthands_and_gest_api_names() -> None:
    p = Problem.model_validate(MIXED)
    assert [v.type for v in p.variables.values()] == ["continuous", "continuous", "integer", "discrete",
                                                      "categorical", "categorical"]
    assert p.variables["loading"].values == [0.5, 1, 2, 5]  # type: ignore[union-attr]
    assert p.objectives == {"yield": "MAXIMIZE", "cost": "MINIMIZE"}
    assert p.sign("yield") == 1 and p.sign("cost") == -1
    assert p.outputs == ["yield", "cost", "selectivity", "temp_out", "side_product"]
    # gest-api's dict forms read too
    q = Problem.model_validate({"variables": {"x": {"type": "ContinuousVariable", "domain": [0, 1]}},
                                "objectives": {"f": {"type": "MinimizeObjective"}},
                                "constraints": {"c": {"type": "LessThanConstraint", "value": 2}}})
    assert q.objectives == {"f": "MINIMIZE"} and q.constraints["c"].kind == "LESS_THAN"


def test_feasibility_and_score_follow_the_declared_senses() -> None:
    p = Problem.model_validate(MIXED)
    ok = {"yield": 0.5, "cost": -3.0, "selectivity": 0.95, "temp_out": 40}
    assert p.feasible(ok) and p.score(ok, "cost") == 3.0  # minimised: signed, never clipped
    assert not p.feasible({**ok, "selectivity": 0.8}) and p.score({**ok, "selectivity": 0.8}) is None
    assert not p.feasible({**ok, "temp_out": 81}) and not p.feasible({**ok, "temp_out": None})


def test_encoding_is_the_unit_cube_and_decodes_to_valid_points() -> None:
    p = Problem.model_validate(MIXED)
    assert p.width == 1 + 1 + 1 + 1 + 3 + 2
    u = np.random.default_rng(0).random((64, p.width))
    points = p.decode(u)
    assert all(p.check_point(x) is None for x in points)
    assert all(x["pressure_bar"] == 5 for x in points)  # constants travel with every point
    enc = p.encode(points)
    assert enc.min() >= 0 and enc.max() <= 1
    again = p.decode(enc)  # decoding is stable on its own encodings
    assert [{k: v for k, v in x.items() if k != "residence_min"} for x in again] == \
        [{k: v for k, v in x.items() if k != "residence_min"} for x in points]
    assert np.allclose([x["residence_min"] for x in again], [x["residence_min"] for x in points])
    # log scale: the geometric middle of [0.5, 20] sits at 0.5 in the cube
    mid = {**points[0], "residence_min": math.sqrt(0.5 * 20)}
    assert p.encode([mid])[0, 1] == pytest.approx(0.5)


@pytest.mark.parametrize(("bad", "where"), [
    ({"variables": {"x": [1, 0]}}, "variables.x"),
    ({"variables": {"x": {"type": "continuous", "domain": [0, 1], "log": True}}}, "variables.x"),
    ({"variables": {"x": {"type": "spline", "domain": [0, 1]}}}, "variables.x"),
    ({"objectives": {"f": "EXPLORE"}}, "objectives.f"),
    ({"constraints": {"c": ["ABOVE", 1]}}, "constraints.c"),
    ({"constraints": {"c": ["BOUNDS", [2, 1]]}}, "constraints.c"),
    ({"objectives": {"x": "MAXIMIZE"}}, "also inputs"),
])
def test_every_problem_error_names_its_field(bad: dict, where: str) -> None:
    raw = {"variables": {"x": [0, 1]}, "objectives": {"f": "MAXIMIZE"}} | bad
    with pytest.raises(ValidationError) as err:
        Problem.model_validate(raw)
    text = str(err.value).replace("\n", " ")
    assert where in text, text


# ---- the campaign file ----------------------------------------------------------------------------


def _campaign(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "t", **fields}))
    return path


def test_the_mof_campaign_declares_its_problem_and_the_loop_reads_it(tmp_path: Path) -> None:
    cfg = load_campaign(ROOT / "campaigns" / "demo.yaml")
    assert cfg.problem is not None and cfg.problem.objectives == {"co2_uptake": "MAXIMIZE"}
    cfg = load_campaign(_campaign(tmp_path, problem={"objectives": {"co2_uptake": "MAXIMIZE"},
                                                     "constraints": {"purity": ["GREATER_THAN", 0.8]}}))
    assert cfg.objective.purity_min == 0.8  # what the MOF loop gates the costly measurement on


@pytest.mark.parametrize(("problem", "where"), [
    ({"objectives": {"co2_uptake": "MINIMIZE"}}, "objectives.co2_uptake"),  # refused, never negated
    ({"objectives": {"band_gap": "MAXIMIZE"}}, "objectives.band_gap"),
    ({"objectives": {"co2_uptake": "MAXIMIZE"}, "constraints": {"purity": ["LESS_THAN", 0.5]}}, "constraints.purity"),
    ({"objectives": {}}, "problem.objectives"),
])
def test_a_problem_the_mof_loop_cannot_run_is_refused_by_field(tmp_path: Path, problem: dict, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_campaign(_campaign(tmp_path, problem=problem))
    assert where in str(err.value) and "problem" in str(err.value), str(err.value)


def test_a_replay_world_needs_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="problem"):
        load_campaign(_campaign(tmp_path, world={"replay": {"csv": "x.csv"}}))


def test_the_cli_names_the_field_and_shows_no_traceback(tmp_path: Path) -> None:
    path = _campaign(tmp_path, problem={"objectives": {"co2_uptake": "MINIMISE"}})
    out = subprocess.run([str(Path(sys.executable).parent / "ppu"), "campaign", "run", str(path), "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "objectives.co2_uptake" in text and "Traceback" not in text, text


# ---- generators: suggest / ingest -----------------------------------------------------------------

BOX = Problem.model_validate({"variables": {"x": [0, 1], "y": {"type": "continuous", "domain": [0.01, 10],
                                                                 "log": True}},
                              "objectives": {"f": "MINIMIZE"}, "constraints": {"g": ["LESS_THAN", 0.5]}})


def _f(p: dict) -> dict:
    ly = math.log10(p["y"])
    return {"f": (p["x"] - 0.3) ** 2 + (ly - 0.5) ** 2 - 2.0, "g": p["x"]}


@pytest.mark.parametrize("cls", [RandomGenerator, SobolGenerator, BoTorchGenerator])
def test_suggest_ingest_contract(cls: type) -> None:
    gen = cls(BOX, seed=1)
    first = gen.suggest(3)
    assert len(first) == 3 and len({p["_id"] for p in first}) == 3
    assert all(BOX.check_point(p) is None for p in first)
    gen.ingest([{**first[0], **_f(first[0])}])
    assert set(gen.pending) == {first[1]["_id"], first[2]["_id"]}
    with pytest.raises(ValueError, match="never suggested"):
        gen.ingest([{**first[0], "_id": 999, **_f(first[0])}])
    gen.ingest([{"x": 0.2, "y": 1.0, **_f({"x": 0.2, "y": 1.0})}])  # prior data: no _id
    assert len(gen.data) == 2


def test_a_pool_generator_never_suggests_a_point_twice() -> None:
    pool = BOX.decode(np.random.default_rng(0).random((30, 2)))
    for cls in (RandomGenerator, SobolGenerator):
        gen = cls(BOX, pool=pool, seed=0)
        ids = [p["_id"] for p in gen.suggest(30)]
        assert sorted(ids) == list(range(30))
        with pytest.raises(ValueError, match="only 0 pool candidates"):
            gen.suggest(1)


def test_botorch_with_an_outcome_constraint_finds_the_feasible_minimum_in_the_box() -> None:
    gen = BoTorchGenerator(BOX, seed=0, n_init=5)
    best = math.inf
    for _ in range(16):
        [p] = gen.suggest(1)
        r = {**p, **_f(p)}
        gen.ingest([r])
        if BOX.feasible(r):
            best = min(best, r["f"])
    assert "qLogNEI" in gen.last_why and "continuous box" in gen.last_why
    assert best < -1.9  # the optimum is -2 at x=0.3 (feasible: x <= 0.5); random gets ~-1.8 here


def _two_objective_world(tmp_path: Path) -> ReplayWorld:
    rng = np.random.default_rng(0)
    lines = ["a,b,kind,strength,weight,ok"]
    for a in np.linspace(0, 1, 8):
        for b in np.linspace(0, 1, 8):
            for kind in ("p", "q"):
                s = a + 0.3 * b + (0.2 if kind == "p" else 0.0)
                w = (1 - a) ** 2 + b + rng.normal(0, 0.01)
                lines.append(f"{a:.3f},{b:.3f},{kind},{s:.4f},{w:.4f},{1 - 0.5 * a * b:.3f}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    return ReplayWorld(ReplaySpec(csv=str(tmp_path / "t.csv"), problem={
        "objectives": {"strength": "MAXIMIZE", "weight": "MINIMIZE"}, "constraints": {"ok": ["GREATER_THAN", 0.7]}}))


def test_two_objectives_write_a_pareto_plot_and_hypervolume_per_experiment(tmp_path: Path) -> None:
    world = _two_objective_world(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    summary, files = run_replay_campaign("two", world, out, generator="botorch", budget=10, n_init=4)
    assert files == ["pareto.png", "hypervolume.png"] and all((out / f).stat().st_size > 1000 for f in files)
    hv = summary["hypervolume_per_experiment"]
    assert len(hv) == 10 and all(b >= a for a, b in itertools.pairwise(hv))  # never shrinks
    assert 0 < hv[-1] <= summary["pool_hypervolume"] + 1e-9
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert any("qLogNEHVI" in d["why"] for d in decisions)


def test_hypervolume_and_pareto_front_by_hand() -> None:
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.5, 1.5]])
    assert pareto_front(pts).tolist() == [True, True, True, False]
    # staircase above ref (0, 0): 1*3 + 1*2 + 1*1 = 6
    assert hypervolume(pts, [0.0, 0.0]) == pytest.approx(6.0)


def test_a_config_optimiser_field_is_validated() -> None:
    with pytest.raises(ValidationError, match=r"optimiser\.generator"):
        CampaignConfig.model_validate({"optimiser": {"generator": "genetic"}})


# ---- mixture groups (fractions of a whole) ---------------------------------------------------------------------------

BLEND = {"variables": {"a": [0, 1], "b": [0, 0.5], "c": [0.1, 0.6], "t_c": [300, 500]},
         "objectives": {"f": "MAXIMIZE"}, "mixtures": {"blend": {"components": ["a", "b", "c"]}}}


def test_a_mixture_group_sums_to_its_total_within_each_components_bounds() -> None:
    p = Problem.model_validate(BLEND)
    points = p.decode(np.random.default_rng(0).random((200, p.width)))
    for x in points:
        assert sum(x[c] for c in "abc") == pytest.approx(1.0)
        assert 0 <= x["b"] <= 0.5 and 0.1 <= x["c"] <= 0.6 and p.check_point(x) is None
    assert "sums to 1.2" in (p.check_point({"a": 0.6, "b": 0.3, "c": 0.3, "t_c": 400}) or "")


@pytest.mark.parametrize(("groups", "why"), [
    ({"blend": {"components": ["a", "zz"]}}, "must be a declared continuous variable"),
    ({"blend": {"components": ["b", "c"], "total": 2.0}}, "no point sums to 2"),
])
def test_a_bad_mixture_group_is_refused_by_name(groups: dict, why: str) -> None:
    with pytest.raises(ValidationError, match=why) as err:
        Problem.model_validate({**BLEND, "mixtures": groups})
    assert "mixtures.blend" in str(err.value)


def test_botorch_keeps_suggestions_on_the_mixture_simplex() -> None:
    p = Problem.model_validate(BLEND)
    gen = BoTorchGenerator(p, seed=0, n_init=3)
    for _ in range(6):
        [x] = gen.suggest(1)
        assert p.check_point(x) is None, x
        gen.ingest([{**x, "f": x["a"] - (x["t_c"] - 400) ** 2 / 1e4}])
    assert "mixture sums" in gen.last_why


# ---- prior data the user declares (issue 15, item 5) ----------------------------------------------


def test_the_screening_model_trains_on_declared_prior_data_not_on_the_truth(tmp_path: Path) -> None:
    import csv

    from ppu.campaign.runner import build_world
    from ppu.campaign.screening import prior_data
    from ppu.simulators.mof.world import DEMO_CSV

    cfg = CampaignConfig.model_validate({"world": {"pool_size": 30}, "screening": {"prior_csv": str(DEMO_CSV)}})
    world, pool = build_world(cfg)
    cands, values = prior_data(world, pool, cfg, "co2_uptake")
    with DEMO_CSV.open() as fh:
        recorded = [float(r["co2_uptake_mmol_g"]) for r in csv.DictReader(fh)]
    assert values == recorded and len(cands) == len(recorded)  # the table, row for row
    _, purity = prior_data(world, pool, cfg, "purity")
    assert len(purity) == len(recorded)
    bad = tmp_path / "prior.csv"
    bad.write_text("Mg,Zn,co2_uptake_mmol_g\n0.5,0.6,3.0\n")
    cfg = cfg.model_copy(update={"screening": cfg.screening.model_copy(update={"prior_csv": str(bad)})})
    with pytest.raises(ConfigError, match=r"row 2: .*sum to 1") as err:
        prior_data(world, pool, cfg, "co2_uptake")
    assert err.value.field == "screening.prior_csv"
