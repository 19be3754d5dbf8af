"""A table of measurements as a fair replay world (issue 15, item 6).

The tables are generated here: free column names, a minimise objective whose values are negative
(so nothing may clip it at 0), a categorical column and replicates with different values.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ppu.campaign.loop import make_generator, run_replay
from ppu.campaign.replay import ReplaySpec, ReplayWorld, expected_random, load_replay
from ppu.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SOLVENTS = {"toluene": 0.0, "dmf": 0.35, "water": 0.8}


def _roughness(t: float, c: float, solvent: str) -> float:
    """A smooth landscape with one basin (best near t=85, c=0.6, toluene), negative at its best."""
    return float(((t - 85) / 40) ** 2 + ((c - 0.6) / 0.5) ** 2 + SOLVENTS[solvent] - 1.0)


def write_table(folder: Path, *, replicates: int = 2, noise: float = 0.02) -> Path:
    """720 rows; ``model_nm`` is a digital twin's prediction: biased, scaled and noisy, but it ranks well."""
    rng = np.random.default_rng(3)
    path = folder / "films.csv"
    lines = ["Anneal Temp (C),conc_mol_per_L,solvent,roughness_nm,thickness_um,model_nm"]
    for t in np.linspace(20, 140, 12):
        for c in np.linspace(0.1, 1.5, 10):
            for s in SOLVENTS:
                twin = 0.7 * _roughness(t, c, s) + 0.4 + rng.normal(0, 0.1)
                for _ in range(replicates):
                    y = _roughness(t, c, s) + rng.normal(0, noise)
                    lines.append(f"{t:.1f},{c:.3f},{s},{y:.5f},{1 + 0.01 * t:.3f},{twin:.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_world(folder: Path, **extra: object) -> Path:
    table = write_table(folder)
    spec = {"csv": table.name, "replicates": "mean",
            "problem": {"variables": {"Anneal Temp (C)": [20, 140], "conc_mol_per_L": [0.1, 1.5],
                                      "solvent": {"type": "categorical", "values": list(SOLVENTS)}},
                        "objectives": {"roughness_nm": "MINIMIZE"}, "observables": ["thickness_um"]}}
    spec.update(extra)  # type: ignore[arg-type]
    path = folder / "films.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_pool_is_the_tables_own_rows_and_a_measurement_is_what_was_recorded(tmp_path: Path) -> None:
    world = load_replay(write_world(tmp_path))
    assert len(world.rows) == 720 and len(world.pool) == 360  # two replicates per distinct setting
    rows = list(np.loadtxt(world.path, delimiter=",", skiprows=1, usecols=(0, 1, 3)))
    for i in (0, 17, 359):
        cand = world.pool[i]
        recorded = [rows[r][2] for r in cand.rows]
        assert len(recorded) == 2 and recorded[0] != recorded[1]
        assert world.measure(i)["roughness_nm"] == pytest.approx(np.mean(recorded))
        assert cand.point["Anneal Temp (C)"] == pytest.approx(rows[cand.rows[0]][0])
    best = min(range(360), key=lambda i: world.truth(i)["roughness_nm"] or 0.0)
    assert world.truth(best)["roughness_nm"] < -0.9  # negative values are kept as they are


def test_replicates_drawn_return_one_recorded_row_each_time(tmp_path: Path) -> None:
    world = load_replay(write_world(tmp_path, replicates="draw"))
    rng = np.random.default_rng(0)
    recorded = {float(world.values[r, 0]) for r in world.pool[5].rows}
    seen = {world.measure(5, rng)["roughness_nm"] for _ in range(40)}
    assert seen == recorded  # each draw is one recorded replicate, never their mean or a blend


def test_top_k_and_the_exact_random_expectation(tmp_path: Path) -> None:
    world = load_replay(write_world(tmp_path))
    top, threshold = world.top()
    assert len(top) == math.ceil(0.01 * 360) == 4
    truth = sorted(world.truth(i)["roughness_nm"] or 0.0 for i in range(360))
    assert -threshold == pytest.approx(truth[3])  # minimise: the 4th smallest mean
    assert expected_random(360, 4) == pytest.approx(361 / 5)
    # the formula is what random search without replacement averages to
    gen_runs = [run_replay(world, make_generator("random", world, seed=s), budget=360, seed=s,
                           stop=top).experiments_to(top) for s in range(300)]
    assert np.mean([g for g in gen_runs if g is not None]) == pytest.approx(361 / 5, rel=0.15)


def test_constraints_exclude_rows_from_the_top(tmp_path: Path) -> None:
    world = load_replay(write_world(tmp_path, problem={
        "variables": {"Anneal Temp (C)": [20, 140], "conc_mol_per_L": [0.1, 1.5], "solvent": ["toluene", "dmf",
                                                                                               "water"]},
        "objectives": {"roughness_nm": "MINIMIZE"}, "constraints": {"thickness_um": ["GREATER_THAN", 1.9]}}))
    top, _ = world.top()
    assert top and all(world.truth(i)["thickness_um"] >= 1.9 for i in top)  # type: ignore[operator]


def test_variables_are_inferred_from_the_columns_when_not_declared(tmp_path: Path) -> None:
    table = write_table(tmp_path)
    problem = {"objectives": {"roughness_nm": "MINIMIZE"}, "observables": ["thickness_um"]}
    world = ReplayWorld(ReplaySpec(csv=str(table), twin={"column": "model_nm"}, problem=problem))
    kinds = {n: v.type for n, v in world.problem.variables.items()}
    assert kinds == {"Anneal Temp (C)": "discrete", "conc_mol_per_L": "discrete", "solvent": "categorical"}


@pytest.mark.parametrize(("change", "field"), [
    ({"problem": {"objectives": {"rougness": "MINIMIZE"}}}, "problem.objectives.rougness"),
    ({"problem": {"variables": {"temp": [20, 140]}, "objectives": {"roughness_nm": "MINIMIZE"}}},
     "problem.variables.temp"),
    ({"problem": {"variables": {"Anneal Temp (C)": [20, 140], "conc_mol_per_L": [0.1, 1.5], "solvent": ["toluene",
                                                                                                        "dmf"]},
                  "objectives": {"roughness_nm": "MINIMIZE"}}}, "problem.variables.solvent"),
    ({"problem": {"objectives": {"roughness_nm": "LOWEST"}}}, "problem.objectives.roughness_nm"),
    ({"rank_by": "thickness_um"}, "rank_by"),
])
def test_every_config_error_names_the_field(tmp_path: Path, change: dict, field: str) -> None:
    path = write_world(tmp_path, **change)
    with pytest.raises(ConfigError) as err:
        load_replay(path).top()
    assert field in str(err.value), str(err.value)


def test_a_value_outside_the_declared_domain_is_refused_not_clipped(tmp_path: Path) -> None:
    path = write_world(tmp_path, problem={"variables": {"Anneal Temp (C)": [20, 100], "conc_mol_per_L": [0.1, 1.5],
                                                        "solvent": list(SOLVENTS)},
                                          "objectives": {"roughness_nm": "MINIMIZE"}})
    with pytest.raises(ConfigError, match=r"row \d+: Anneal Temp \(C\): 1\d\d.* outside the domain"):
        load_replay(path)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "campaign.py"), *args], capture_output=True,
                          text=True, timeout=900, cwd=ROOT)


def test_benchmark_on_a_replay_world_beats_random_by_three(tmp_path: Path) -> None:
    """Done when (issue 15): ours at most 1/3 of random's experiments, the exact expectation printed."""
    out = _bench("--world", str(write_world(tmp_path)), "--seeds", "3", "--random-runs", "100", "--cap", "60")
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])["films"]
    exact = 361 / 5
    assert figures["random_exact"] == pytest.approx(exact)
    assert f"(N+1)/(k+1) = {exact:.1f}" in out.stdout
    assert figures["ours"] <= exact / 3, out.stdout
    assert figures["random"] == pytest.approx(exact, rel=0.5)  # the simulated one, beside it
    assert {"ours_iqr", "random_iqr", "sobol", "sobol_iqr"} <= set(figures)


def test_benchmark_config_error_names_the_field_without_a_traceback(tmp_path: Path) -> None:
    out = _bench("--world", str(write_world(tmp_path, problem={"objectives": {"rough": "MINIMIZE"}})),
                 "--seeds", "1", "--random-runs", "1")
    assert out.returncode == 2
    assert "problem.objectives.rough" in out.stderr and "Traceback" not in out.stderr


def test_prior_measurements_are_learnt_from_but_not_counted(tmp_path: Path) -> None:
    prior = tmp_path / "earlier.csv"
    lines = ["Anneal Temp (C),conc_mol_per_L,solvent,roughness_nm,thickness_um,model_nm"]
    for t, c, s in [(30.0, 0.2, "water"), (130.0, 1.4, "dmf"), (60.0, 1.0, "toluene"), (100.0, 0.3, "dmf"),
                    (80.0, 0.7, "water")]:
        lines.append(f"{t},{c},{s},{_roughness(t, c, s):.5f},1.5,{_roughness(t, c, s):.3f}")
    prior.write_text("\n".join(lines) + "\n")
    world = load_replay(write_world(tmp_path, prior_csv=prior.name))
    assert len(world.prior) == 5 and world.prior[0]["roughness_nm"] == pytest.approx(_roughness(30, 0.2, "water"),
                                                                                      abs=1e-4)
    gen = make_generator("botorch", world, seed=0, n_init=4)
    run = run_replay(world, gen, budget=3, seed=0)
    assert len(run.results) == 3 and len(gen.data) == 8  # 5 earlier + 3 measured; only 3 counted
    assert "qLogNEI" in run.decisions[0]["why"]  # the prior is enough to start with the model


def test_a_prior_table_outside_the_declared_space_is_refused(tmp_path: Path) -> None:
    prior = tmp_path / "earlier.csv"
    prior.write_text("Anneal Temp (C),conc_mol_per_L,solvent,roughness_nm,thickness_um\n300,0.5,dmf,0.1,1\n")
    with pytest.raises(ConfigError, match=r"row 2: Anneal Temp \(C\): 300 lies outside") as err:
        load_replay(write_world(tmp_path, prior_csv=prior.name))
    assert err.value.field == "prior_csv"


def test_a_digital_twin_column_saves_physical_experiments(tmp_path: Path) -> None:
    """Done when (issue 15): with the twin, fewer physical experiments to the top than the same optimiser
    with the twin off, median of 5 seeds, printed by the benchmark."""
    world = write_world(tmp_path, twin={"column": "model_nm", "cost": 0.01})
    out = _bench("--world", str(world), "--seeds", "5", "--random-runs", "50", "--cap", "60")
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])["films"]
    assert figures["ours"] < figures["no_twin"], out.stdout
    assert figures["twin_cost"] == pytest.approx(3.6) and "no_twin / ours" in out.stdout
    assert figures["seeds"] == 5
