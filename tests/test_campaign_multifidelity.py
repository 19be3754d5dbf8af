"""Multi-fidelity campaigns (issue 15, item 4): declared levels, one model, (candidate, level) by value per cost.

The tables are generated here (seeded): two variables, a smooth objective to maximise, a digital
twin column (biased, scaled, noisy) and a cheap check column (noisier, offset).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from ppu.campaign.loop import make_generator, run_replay
from ppu.campaign.multifidelity import MultiFidelityGenerator
from ppu.campaign.problem import Problem
from ppu.campaign.replay import FidelitySpec, load_replay
from ppu.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LEVELS = [{"name": "twin", "column": "twin_y", "cost": 0.001, "physical": False},
          {"name": "check", "column": "check_y", "cost": 0.2},
          {"name": "full", "cost": 1.0}]


def _f(a: float, b: float) -> float:
    return float(np.exp(-((a - 0.7) / 0.25) ** 2 - ((b - 0.3) / 0.3) ** 2) + 0.4 * np.exp(-((a - 0.2) / 0.15) ** 2))


def write_world(folder: Path, **extra: Any) -> Path:
    rng = np.random.default_rng(5)
    lines = ["a,b,y,twin_y,check_y"]
    for a in np.linspace(0, 1, 10):
        for b in np.linspace(0, 1, 8):
            y = _f(a, b)
            lines.append(f"{a:.3f},{b:.3f},{y + rng.normal(0, 0.01):.4f},{0.8 * y + 0.3 + rng.normal(0, 0.08):.4f},"
                         f"{y - 0.1 + rng.normal(0, 0.06):.4f}")
    (folder / "t.csv").write_text("\n".join(lines) + "\n")
    spec: dict[str, Any] = {"csv": "t.csv", "fidelities": LEVELS,
                            "problem": {"variables": {"a": [0, 1], "b": [0, 1]}, "objectives": {"y": "MAXIMIZE"}}}
    spec.update(extra)
    (folder / "w.yaml").write_text(yaml.safe_dump(spec))
    return folder / "w.yaml"


def _levels(**change: Any) -> list[dict[str, Any]]:
    return [dict(lv) for lv in LEVELS] if not change else change["to"]


@pytest.mark.parametrize(("extra", "field"), [
    ({"fidelities": [{"name": "twin", "column": "twin_y", "cost": 0.001}, {"name": "check", "column": "check_y",
                                                                          "cost": 0.2}]}, "fidelities"),
    ({"fidelities": [*LEVELS, {"name": "again", "cost": 2.0}]}, "fidelities.3.column"),
    ({"fidelities": [LEVELS[0], {"name": "check", "column": "check_y", "cost": 1.5}, LEVELS[2]]},
     "fidelities.1.cost"),
    ({"fidelities": [LEVELS[0], {"name": "check", "column": "chek_y", "cost": 0.2}, LEVELS[2]]},
     "fidelities.1.column"),
    ({"fidelities": [LEVELS[0], {"name": "check", "column": "y", "cost": 0.2}, LEVELS[2]]}, "fidelities.1.column"),
    ({"fidelities": [LEVELS[0], {"name": "twin", "column": "check_y", "cost": 0.2}, LEVELS[2]]},
     "fidelities.1.name"),
    ({"fidelities": [LEVELS[0], {"name": "check", "column": "check_y", "cost": 0}, LEVELS[2]]}, "fidelities.1.cost"),
    ({"fidelities": [LEVELS[0], LEVELS[1], {"name": "full", "cost": 1.0, "physical": False}]},
     "fidelities.2.physical"),
    ({"twin": {"column": "twin_y"}}, "fidelities"),
    ({"problem": {"variables": {"a": [0, 1], "b": [0, 1]}, "objectives": {"y": "MAXIMIZE"},
                  "constraints": {"check_y": ["GREATER_THAN", 0]}}}, "fidelities"),
])
def test_every_fidelity_mistake_is_a_config_error_naming_the_field(tmp_path: Path, extra: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_replay(write_world(tmp_path, **extra))
    assert err.value.field == field, str(err.value)


def test_a_level_is_read_from_its_column_and_the_full_one_is_the_objective(tmp_path: Path) -> None:
    world = load_replay(write_world(tmp_path))
    assert [f.name for f in world.fidelities] == ["twin", "check", "full"]
    assert "twin_y" not in world.problem.variables and "check_y" not in world.problem.variables
    row = world.rows[world.pool[3].rows[0]]
    assert world.measure_at(3, "check") == {"check_y": pytest.approx(float(row["check_y"]))}
    assert world.measure_at(3, "full") == world.measure(3)


def _generator(check: dict[int, float], full_at: list[int], check_cost: float) -> MultiFidelityGenerator:
    """A 1-d pool of 40 points; prior data: the check's answers at ``check``, the full level's at ``full_at``."""
    problem = Problem.model_validate({"variables": {"x": [0, 1]}, "objectives": {"y": "MAXIMIZE"}})
    pool = [{"x": float(x)} for x in np.linspace(0, 1, 40)]
    levels = [FidelitySpec(name="check", column="c", cost=check_cost), FidelitySpec(name="full", cost=1.0)]
    gen = MultiFidelityGenerator(problem, levels=levels, pool=pool, seed=0)
    gen.ingest([{**pool[i], "_fidelity": "check", "c": v} for i, v in check.items()])
    gen.ingest([{**pool[i], "_fidelity": "full", "y": float(TRUTH[i])} for i in full_at])
    return gen


TRUTH = np.sin(6 * np.linspace(0, 1, 40)) + 0.5 * np.linspace(0, 1, 40)


def test_a_cheap_level_is_chosen_when_it_is_informative_and_the_full_one_otherwise() -> None:
    """Three full measurements. A check that tracked the objective at those three: a look at an
    unexplored candidate is worth its cost. A check that has answered noise at 20 candidates, or one
    nearly as dear as the full measurement: the full one is."""
    rng = np.random.default_rng(1)
    shared = [5, 20, 35]
    informative = {i: float(TRUTH[i] + rng.normal(0, 0.02)) for i in shared}
    noise = {i: float(v) for i, v in zip(range(0, 40, 2), rng.normal(0, 1.0, 20), strict=True)}
    gen = _generator(informative, shared, check_cost=0.1)
    [p] = gen.suggest(1)
    assert p["_fidelity"] == "check" and "check (cost 0.1" in gen.last_why
    [p] = _generator(noise, shared, check_cost=0.1).suggest(1)
    assert p["_fidelity"] == "full"
    [p] = _generator(informative, shared, check_cost=0.95).suggest(1)
    assert p["_fidelity"] == "full"


def test_the_decision_record_says_which_level_and_which_model_version(tmp_path: Path) -> None:
    world = load_replay(write_world(tmp_path))
    gen = make_generator("botorch", world, seed=0)
    run = run_replay(world, gen, budget=8, seed=0)
    assert len(run.digital) == len(world.pool)  # the twin answered every candidate, in bulk, first
    assert all(d["fidelity"] == "twin" for d in run.decisions[:len(world.pool)])
    physical = run.decisions[len(world.pool):]
    assert len(physical) == len(run.results) == 8
    assert {d["fidelity"] for d in physical} <= {"check", "full"} and all(d["cost"] in (0.2, 1.0) for d in physical)
    assert [d["fidelity"] for d in physical[:4]] == ["check", "check", "full", "full"]  # the initial design
    later = physical[4:]
    assert all(d["model_version"].startswith("mf-mtgp-") for d in later)
    assert len({d["model_version"] for d in later}) == len(later)  # a fresh fit per decision, named
    assert all("per cost" in d["why"] for d in later)
    # the version a decision names counts the data that fit saw: every experiment ended before it
    for k, d in enumerate(physical[4:], start=4):
        done = run.results[:k]
        n_check = sum(1 for r in done if r["_fidelity"] == "check")
        assert d["model_version"].endswith(f"check{n_check}-full{k - n_check}"), (d, k)


def test_a_short_replay_counts_physical_experiments_and_cost_to_the_top(tmp_path: Path) -> None:
    world = load_replay(write_world(tmp_path))
    top, _ = world.top()
    gen = make_generator("botorch", world, seed=1)
    run = run_replay(world, gen, budget=40, seed=1, stop=top)
    k = run.experiments_to(top)
    assert k is not None and run.results[k - 1]["_id"] in top and run.results[k - 1]["_fidelity"] == "full"
    assert k == len(run.results)  # stopped there; a check of a top candidate does not count as reached
    n_check = sum(1 for r in run.results if r["_fidelity"] == "check")
    costs = {f.name: f.cost for f in world.fidelities}
    assert run.cost_to(top, costs) == pytest.approx(0.001 * len(world.pool) + 0.2 * n_check + (k - n_check))
    off = make_generator("botorch", world, seed=1, twin=False)  # the same optimiser with the cheap levels off
    base = run_replay(world, off, budget=40, seed=1, stop=top)
    assert not base.digital and all("_fidelity" not in r for r in base.results)


def test_benchmark_reports_experiments_and_cost_for_a_world_with_fidelities(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "campaign.py"), "--world",
                          str(write_world(tmp_path)), "--seeds", "1", "--random-runs", "10", "--cap", "40"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])["w"]
    assert {"ours", "ours_iqr", "ours_cost", "ours_full", "no_twin", "no_twin_cost", "twin_full",
            "random", "random_exact", "sobol"} <= set(figures)
    assert figures["no_twin_cost"] == figures["no_twin"]  # the full level costs 1, nothing else is spent
    assert figures["ours_full"] <= figures["ours"] and "no_twin / ours" in out.stdout


def test_pending_pairs_are_respected_with_experiments_in_flight(tmp_path: Path) -> None:
    world = load_replay(write_world(tmp_path))
    gen = make_generator("botorch", world, seed=2)
    run = run_replay(world, gen, budget=10, seed=2, in_flight=3)
    physical = [d for d in run.decisions if d["fidelity"] != "twin"]
    assert len(physical) == 10 and any(len(d["pending"]) == 2 for d in physical)
    asked = [(d["_id"], d["fidelity"]) for d in physical]
    assert len(set(asked)) == len(asked)  # no (candidate, level) asked twice
    full = [i for i, lvl in asked if lvl == "full"]
    for i in full:  # nothing more is asked about a candidate once its full measurement is under way
        k = asked.index((i, "full"))
        assert all(j != i for j, _ in asked[k + 1:])
    assert "pending" in physical[-1]["why"] and not gen.pending_pairs


def test_the_shipped_multifidelity_campaign_runs_from_its_yaml(tmp_path: Path) -> None:
    from rich.console import Console

    from ppu.campaign.config import load_campaign
    from ppu.campaign.report import run_campaign_cli

    path = ROOT / "campaigns" / "multifidelity.yaml"
    cfg = load_campaign(path)
    cfg = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"max_syntheses": 6})})
    with (tmp_path / "out.txt").open("w") as fh:
        summary = run_campaign_cli(path, tmp_path / "run", Console(file=fh), config=cfg)
    assert summary["experiments"] == 6 and summary["digital_answers"] == 360
    assert sum(summary["experiments_per_level"].values()) == 6
    assert summary["cost"] == pytest.approx(0.36 + 0.2 * summary["experiments_per_level"]["scratch_check"]
                                            + summary["experiments_per_level"]["full"])
    lines = [json.loads(x) for x in (tmp_path / "run" / "decisions.jsonl").read_text().splitlines()]
    assert {d["fidelity"] for d in lines} == {"twin", "scratch_check", "full"}
    assert all(d["model_version"] for d in lines)


def test_a_check_is_trusted_by_the_number_of_candidates_measured_at_both_levels() -> None:
    """Full measurements at three candidates and a cheap, informative check: where the check answered
    at all three its learnt correlation is worth a look (the test above); where it answered at one of
    them (and at one candidate with no full value), that correlation counts 1 / (1 + 4) and the full
    measurement is chosen."""
    shared = [5, 20, 35]
    check = {i: float(TRUTH[i]) for i in shared}
    gen = _generator(check, shared, check_cost=0.1)
    assert gen._pairs(gen.level_index("check")) == 3
    [p] = gen.suggest(1)
    assert p["_fidelity"] == "check", gen.last_why
    gen = _generator({20: check[20], 28: float(TRUTH[28])}, shared, check_cost=0.1)
    assert gen._pairs(gen.level_index("check")) == 1
    [p] = gen.suggest(1)
    assert p["_fidelity"] == "full", gen.last_why


@pytest.mark.slow
def test_the_shipped_multifidelity_campaign_needs_fewer_physical_experiments_than_the_twin_off() -> None:
    """The issue's figure: campaigns/multifidelity.yaml, median of 5 seeds, ours (twin, checks, full)
    against the same optimiser on the full measurement alone, counted in physical experiments."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "campaign.py"), "--world",
                          str(ROOT / "campaigns" / "multifidelity.yaml"), "--seeds", "5", "--random-runs", "50"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])["multifidelity"]
    assert figures["ours"] < figures["no_twin"], out.stdout
    assert figures["ours_cost"] < figures["no_twin_cost"] and figures["censored_ours"] == 0
    assert "done when: ours < no_twin in physical experiments, median of >= 5 seeds: met" in out.stdout
