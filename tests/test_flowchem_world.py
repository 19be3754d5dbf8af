"""The flow lab's kinetic world and instrument models: determinism and kinetic sanity."""

from __future__ import annotations

import numpy as np
import pytest

from ppu.drivers.flowchem.models import LIGANDS, FlowRecipe
from ppu.simulators.flowchem.instruments import FaultConfig, FlowReactorModel, HPLCModel, seeded_rng
from ppu.simulators.flowchem.twin import KineticTwin
from ppu.simulators.flowchem.world import FlowWorld, FlowWorldConfig, recipe_from


def recipe(**over: object) -> FlowRecipe:
    base: dict[str, object] = {"ligand": "PPh3", "temperature_c": 70.0, "residence_time_min": 5.0,
                               "equivalents_b": 1.5, "concentration_m": 0.4}
    return FlowRecipe.model_validate({**base, **over})


def test_same_seed_same_world_other_seed_other_chemistry() -> None:
    r = recipe(ligand="SPhos")
    assert FlowWorld(FlowWorldConfig(seed=3)).outcome(r) == FlowWorld(FlowWorldConfig(seed=3)).outcome(r)
    assert FlowWorld(FlowWorldConfig(seed=3)).outcome(r) != FlowWorld(FlowWorldConfig(seed=4)).outcome(r)
    flat = FlowWorld(FlowWorldConfig(seed=3, variation=0.0))
    assert flat.outcome(r) == FlowWorld(FlowWorldConfig(seed=9, variation=0.0)).outcome(r)


def test_mass_balance_of_a_and_of_b() -> None:
    r = recipe(temperature_c=110.0, residence_time_min=20.0)
    c = FlowWorld().outcome(r).concentrations
    assert c["A"] + c["P"] + c["S"] == pytest.approx(r.concentration_m, rel=1e-6)
    # B is consumed once per P made and once more per S
    assert r.concentration_m * r.equivalents_b - c["B"] == pytest.approx(c["P"] + 2 * c["S"], rel=1e-6)


@pytest.mark.parametrize("ligand", LIGANDS)
def test_hotter_is_faster_below_catalyst_decomposition(ligand: str) -> None:
    w = FlowWorld()
    conv = [w.outcome(recipe(ligand=ligand, temperature_c=t, residence_time_min=1.0)).conversion for t in (40, 60, 80)]
    assert conv[0] < conv[1] < conv[2]
    k1 = [w.rate_constants(recipe(ligand=ligand, temperature_c=t))[0] for t in (40, 60, 80)]
    assert k1[0] < k1[1] < k1[2]


def test_catalyst_dies_when_too_hot() -> None:
    w = FlowWorld(FlowWorldConfig(variation=0.0))
    assert w.activity(recipe(ligand="PPh3", temperature_c=150.0)) < 0.01 < 0.9 < w.activity(recipe(temperature_c=60))
    cold, hot = (w.outcome(recipe(ligand="PPh3", temperature_c=t, residence_time_min=2.0)).conversion
                 for t in (95.0, 160.0))
    assert hot < cold


def test_longer_residence_makes_more_side_product() -> None:
    w = FlowWorld()
    imp = [w.outcome(recipe(temperature_c=100.0, residence_time_min=t)).impurity for t in (1, 5, 15, 30)]
    assert imp == sorted(imp) and imp[-1] > 3 * imp[0]


def test_side_reaction_has_the_higher_activation_energy() -> None:
    """Heat favours S: at equal conversion, the hotter run carries more impurity."""
    w = FlowWorld(FlowWorldConfig(variation=0.0))
    k_cold = w.rate_constants(recipe(temperature_c=50))
    k_hot = w.rate_constants(recipe(temperature_c=90))
    assert k_hot[1] / k_hot[0] > k_cold[1] / k_cold[0]


def test_cold_concentrated_recipes_clog() -> None:
    w = FlowWorld()
    risky = recipe(ligand="XPhos", temperature_c=45.0, residence_time_min=30.0, concentration_m=1.0)
    safe = recipe(ligand="XPhos", temperature_c=90.0, residence_time_min=10.0, concentration_m=0.3)
    assert w.clog_probability(risky) > 0.5 > 0.01 > w.clog_probability(safe)
    assert w.expected_yield(risky) < w.outcome(risky).product_yield


def test_fast_integrator_agrees_with_the_exact_one() -> None:
    w = FlowWorld()
    rng = np.random.default_rng(0)
    recipes = [recipe_from(LIGANDS[i % 4], [40 + 120 * u[0], 0.5 + 29.5 * u[1], 1 + 2 * u[2], 0.1 + 0.9 * u[3]])
               for i, u in enumerate(rng.random((60, 4)))]
    exact = np.array([w.expected_yield(r) for r in recipes])
    assert np.abs(w.expected_yield_batch(recipes) - exact).mean() < 0.005


def test_true_optimum_beats_every_sampled_recipe() -> None:
    w = FlowWorld()
    best, value = w.true_optimum(samples=800)
    rng = np.random.default_rng(1)
    sampled = [w.expected_yield(recipe_from(LIGANDS[i % 4], [40 + 120 * u[0], 0.5 + 29.5 * u[1], 1 + 2 * u[2],
                                                             0.1 + 0.9 * u[3]]))
               for i, u in enumerate(rng.random((40, 4)))]
    assert value >= max(sampled) and value == pytest.approx(w.expected_yield(best))


def test_twin_is_a_lower_fidelity_view_of_the_truth() -> None:
    w, twin = FlowWorld(FlowWorldConfig(seed=2)), KineticTwin(seed=0)
    rng = np.random.default_rng(2)
    recipes = [recipe_from(LIGANDS[i % 4], [40 + 100 * u[0], 0.5 + 29.5 * u[1], 1 + 2 * u[2], 0.1 + 0.9 * u[3]])
               for i, u in enumerate(rng.random((80, 4)))]
    pred = twin.predict(recipes)
    mean = np.array([p["mean"] for p in pred])
    truth = np.array([w.outcome(r).product_yield for r in recipes])
    err = np.abs(mean - truth)
    assert np.corrcoef(mean, truth)[0, 1] > 0.85  # informative...
    assert 0.005 < err.mean() < 0.15  # ...but not the truth
    assert all(p["std"] > 0 for p in pred)
    assert twin.predict(recipes[:3]) == KineticTwin(seed=0).predict(recipes[:3])  # seeded


def test_reactor_model_durations_drift_and_faults() -> None:
    m = FlowReactorModel(seed=1, time_scale=1000.0, faults=FaultConfig(fail_on=[2]), drift_per_hour=0.01)
    r = recipe(temperature_c=105.0, residence_time_min=10.0)
    lab_s = m.duration_s(r, 2.0)  # 10 min heating + 3 residence times + 2 min collection
    assert lab_s == pytest.approx(60 * (80 / 8 + 30 + 2))
    assert m.wall_seconds(lab_s) == pytest.approx(lab_s / 1000)
    assert m.begin(lab_s) is None and "acquisition 2" in str(m.begin(lab_s))
    m.inject_fault("pump B stalled")
    assert m.begin(lab_s) == "pump B stalled"
    assert m.drift > 0
    ran = m.actual(r, seeded_rng("x"))
    assert ran.equivalents_b < r.equivalents_b and ran.temperature_c > r.temperature_c - 2.0
    assert m.actual(r, seeded_rng("x")) == ran  # seeded by the vial


def test_chromatogram_is_seeded_and_ages_with_the_column() -> None:
    conc = {"A": 0.1, "B": 0.2, "P": 0.3, "S": 0.05}
    t = HPLCModel().time_axis(10.0, 10.0)
    assert len(t) == 6001
    assert np.array_equal(HPLCModel(seed=4).chromatogram(conc, t), HPLCModel(seed=4).chromatogram(conc, t))
    fresh, old = HPLCModel(seed=4), HPLCModel(seed=4, drift_per_hour=1.0)
    old.begin(3600 * 0.4)
    window = (t > 4.6) & (t < 5.8)
    apex_fresh = t[window][np.argmax(fresh.chromatogram(conc, t)[window])]
    apex_old = t[window][np.argmax(old.chromatogram(conc, t)[window])]
    assert apex_old > apex_fresh + 0.05  # retention creeps later as the column ages
