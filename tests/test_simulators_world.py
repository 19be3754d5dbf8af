"""The simulated world and instruments: determinism, pool, optimum, table worlds, faults."""

from __future__ import annotations

import numpy as np
import pytest

from ppu.drivers.mof.capabilities import Candidate
from ppu.simulators.mof import (
    DEMO_CSV,
    PHASES,
    FaultConfig,
    MOF74World,
    SimulatedLab,
    UnknownSampleError,
    World,
    WorldConfig,
    XRDModel,
    candidate_pool,
)


def test_pool_is_deterministic_and_valid() -> None:
    a, b = candidate_pool(200, seed=1), candidate_pool(200, seed=1)
    assert a == b and len(a) == 200 and len({c.id for c in a}) == 200
    assert candidate_pool(200, seed=2) != a
    for c in a:
        assert abs(sum(c.composition.values()) - 1) < 1e-9
        assert set(c.composition) <= {"Mg", "Zn", "Cu", "Co", "Ni"}


def test_world_is_seeded_and_physical() -> None:
    pool = candidate_pool(300, seed=0)
    w1, w2 = World(WorldConfig(seed=3)), World(WorldConfig(seed=3))
    assert np.array_equal(w1.values(pool), w2.values(pool))
    assert not np.array_equal(w1.values(pool), World(WorldConfig(seed=4)).values(pool))
    for c in pool[:50]:
        p = w1.properties(c)
        assert 0 <= p.purity <= 1 and 0 <= p.success_probability <= 1 and p.co2_uptake_mmol_g >= 0
        assert sum(p.phases.values()) == pytest.approx(1.0) and set(p.phases) == set(PHASES)
        assert 1.5 < p.band_gap_ev < 4.5


def test_true_optimum_and_top_threshold() -> None:
    pool = candidate_pool(500, seed=0)
    w = World(WorldConfig(seed=1))
    best, value = w.true_optimum(pool)
    assert value == pytest.approx(w.values(pool).max())
    assert w.top_threshold(pool, 0.01) <= value
    assert (w.values(pool) >= w.top_threshold(pool, 0.01)).sum() == 5
    # the synthesis window matters: the best composition at a bad temperature is worse
    cold = best.model_copy(update={"anneal_temperature_c": 100.0})
    assert w.properties(cold).co2_uptake_mmol_g < value


def test_world_is_multimodal() -> None:
    """Several local maxima over the composition grid at a fixed temperature."""
    pool = [c for c in candidate_pool(5005, seed=0) if c.anneal_temperature_c == 400.0]
    w = World(WorldConfig(seed=1))
    vals = dict(zip([tuple(sorted(c.composition.items())) for c in pool], w.values(pool), strict=True))
    assert len(vals) > 100 and np.std(list(vals.values())) > 0.3


def test_table_world_interpolates_the_demo_csv() -> None:
    tw = World.from_csv(DEMO_CSV)
    assert tw.kind == "table"
    pool = candidate_pool(60, seed=3)  # the demo table was measured on this pool
    truth = World(WorldConfig(seed=7)).values(pool)
    assert np.abs(tw.values(pool) - truth).max() < 0.5
    nn = World.from_csv(DEMO_CSV, interpolation="nearest")
    assert nn.properties(pool[0]).purity == pytest.approx(tw.properties(pool[0]).purity, abs=0.1)
    assert World.from_config({"csv_path": str(DEMO_CSV)}).kind == "table"
    best, v = tw.true_optimum(candidate_pool(100, seed=0))
    assert v > 0 and isinstance(best, Candidate)


def test_mof74_world_ranks_metals_and_punishes_poor_activation() -> None:
    w = World.from_config({"kind": "mof74"})
    assert isinstance(w, MOF74World) and w.kind == "mof74"

    def at(comp: dict[str, float], t: float) -> float:
        return w.properties(Candidate(composition=comp, anneal_temperature_c=t, anneal_time_h=4.0)).co2_uptake_mmol_g

    best_t = {m: w.synthesis_window_c(Candidate(composition={m: 1.0}))[0] for m in ("Mg", "Ni", "Co", "Zn", "Cu")}
    uptake = {m: at({m: 1.0}, t) for m, t in best_t.items()}
    assert sorted(uptake, key=lambda m: -uptake[m]) == ["Mg", "Ni", "Co", "Zn", "Cu"]  # open-metal-site order
    mg = Candidate(composition={"Mg": 1.0}, anneal_temperature_c=best_t["Mg"], anneal_time_h=4.0)
    cold = mg.model_copy(update={"anneal_temperature_c": 250.0})  # solvent left on the sites
    hot = mg.model_copy(update={"anneal_temperature_c": 560.0})  # above the collapse temperature
    assert w.properties(mg).purity > 0.9 and w.properties(mg).main_phase == "MOF-74"
    assert w.properties(cold).main_phase == "linker" and w.properties(hot).main_phase == "rocksalt-oxide"
    assert w.properties(cold).co2_uptake_mmol_g < 0.5 * uptake["Mg"]
    assert w.properties(hot).co2_uptake_mmol_g < 0.5 * uptake["Mg"]
    assert World.from_config({"kind": "mof74", "seed": 3}).properties(mg) == MOF74World(
        WorldConfig(kind="mof74", seed=3)).properties(mg)  # deterministic per seed
    lab = SimulatedLab.shared("mof74-test", {"kind": "mof74"})
    assert isinstance(lab.world, MOF74World)


def test_table_world_rejects_bad_tables(tmp_path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("Mg,Zn,purity\n0.5,0.5,0.9\n")
    with pytest.raises(ValueError, match="lacks columns"):
        World.from_csv(p)


def test_lab_realises_samples_reproducibly(tmp_path) -> None:
    cand = candidate_pool(20, seed=0)[5]
    reg = tmp_path / "samples.jsonl"
    lab = SimulatedLab(World(WorldConfig(seed=2)), registry_path=reg)
    rec = lab.realise("S-1", cand, success=True, mass_mg=40.0)
    assert rec.slot == "R001" and lab.rack() == {"R001": "S-1"}
    again = SimulatedLab(World(WorldConfig(seed=2)), registry_path=tmp_path / "other.jsonl")
    assert again.realise("S-1", cand, success=True, mass_mg=40.0).purity == rec.purity
    lab.move("S-1", "xrd1")
    assert lab.rack() == {}
    lab.move("S-1", "rack")
    assert lab.rack() == {"R001": "S-1"}
    with pytest.raises(UnknownSampleError, match="never synthesised"):
        lab.sample("nope")
    assert SimulatedLab(World(), registry_path=reg).sample("S-1").device == "rack"


def test_instrument_faults_and_drift() -> None:
    m = XRDModel(faults=FaultConfig(fail_on=[2]), drift_per_hour=0.01)
    assert m.begin(100) is None
    assert m.begin(100) is not None
    m.inject_fault("shutter stuck")
    assert m.begin(3600) == "shutter stuck"
    assert m.drift > 0
    always = XRDModel(faults=FaultConfig(fail_rate=1.0))
    assert always.begin(1) is not None
    assert m.wall_seconds(100) == 100 and XRDModel(time_scale=1e4).wall_seconds(1e4) == 1
