"""Chromatogram analysis from the signal alone, checked against the simulated world's truth."""

from __future__ import annotations

import numpy as np
import pytest

from ppu.drivers.flowchem.analysis import ChromatogramError, als_baseline, analyse_chromatogram, noise_level
from ppu.drivers.flowchem.method import METHOD
from ppu.drivers.flowchem.models import FlowRecipe
from ppu.simulators.flowchem.instruments import HPLCModel
from ppu.simulators.flowchem.world import FlowWorld


def trace(conc: dict[str, float], seed: int = 0, **model: object) -> tuple[np.ndarray, np.ndarray]:
    m = HPLCModel(seed=seed)
    for k, v in model.items():
        setattr(m, k, v)
    t = m.time_axis(10.0, 10.0)
    return t, m.chromatogram(conc, t)


def truth(conc: dict[str, float]) -> tuple[float, float, float]:
    tot = conc["A"] + conc["P"] + conc["S"]
    return conc["P"] / tot, conc["S"] / tot, 1 - conc["A"] / tot


RECIPES = [
    FlowRecipe(ligand="PPh3", temperature_c=70, residence_time_min=3, equivalents_b=1.2, concentration_m=0.3),
    FlowRecipe(ligand="SPhos", temperature_c=90, residence_time_min=12, equivalents_b=2.0, concentration_m=0.6),
    FlowRecipe(ligand="XPhos", temperature_c=130, residence_time_min=25, equivalents_b=2.8, concentration_m=0.9),
    FlowRecipe(ligand="dppf", temperature_c=45, residence_time_min=1, equivalents_b=1.0, concentration_m=0.15),
]


@pytest.mark.parametrize("i", range(len(RECIPES)))
def test_clean_signal_gives_the_worlds_yield(i: int) -> None:
    out = FlowWorld().outcome(RECIPES[i])
    res = analyse_chromatogram(*trace(out.concentrations, seed=i))
    y, s, c = truth(out.concentrations)
    assert y == pytest.approx(out.product_yield, abs=1e-9)
    assert res.product_yield == pytest.approx(y, abs=0.01)
    assert res.impurity == pytest.approx(s, abs=0.01)
    assert res.conversion == pytest.approx(c, abs=0.01)
    assert not res.unidentified


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noisy_signal_within_a_few_percent(seed: int) -> None:
    conc = FlowWorld().outcome(RECIPES[1]).concentrations
    t, y = trace(conc, seed=seed, noise_mau=3.0)
    res = analyse_chromatogram(t, y)
    py, ps, _ = truth(conc)
    assert res.noise == pytest.approx(3.0, rel=0.2)  # the analysis measured the noise it was given
    assert res.product_yield == pytest.approx(py, abs=0.04)
    assert res.impurity == pytest.approx(ps, abs=0.03)


def test_missing_product_peak_means_zero_yield() -> None:
    conc = {"A": 0.4, "B": 0.6, "P": 0.0, "S": 0.0}  # nothing reacted
    res = analyse_chromatogram(*trace(conc))
    assert set(res.peaks) == {"A", "B"}
    assert res.product_yield == 0.0 and res.impurity == 0.0 and res.conversion == pytest.approx(0.0, abs=1e-9)


def test_missing_starting_material_peak_means_full_conversion() -> None:
    conc = {"A": 0.0, "B": 0.1, "P": 0.35, "S": 0.05}
    res = analyse_chromatogram(*trace(conc))
    assert "A" not in res.peaks
    assert res.conversion == 1.0
    assert res.product_yield == pytest.approx(0.875, abs=0.01)


def test_trace_below_detection_limit_is_not_a_peak() -> None:
    conc = {"A": 0.3, "B": 0.2, "P": 0.1, "S": 0.00005}  # S far below the detection limit
    res = analyse_chromatogram(*trace(conc))
    assert "S" not in res.peaks and res.impurity == 0.0


def test_aged_column_still_identifies_every_peak() -> None:
    m = HPLCModel(seed=5, drift_per_hour=1.0)
    m.begin(3600 * 0.5)  # half an hour of drift units: retention +2 %, wider peaks, tilted baseline
    conc = {"A": 0.1, "B": 0.3, "P": 0.3, "S": 0.1}
    t = m.time_axis(10.0, 10.0)
    res = analyse_chromatogram(t, m.chromatogram(conc, t))
    assert set(res.peaks) == set(METHOD)
    assert res.peaks["P"].retention_min > METHOD["P"].retention_min + 0.05
    assert res.product_yield == pytest.approx(0.6, abs=0.015)


def test_unknown_peak_is_reported_not_counted() -> None:
    conc = {"A": 0.1, "B": 0.3, "P": 0.3, "S": 0.1}
    t, y = trace(conc)
    y = y + 80.0 * np.exp(-0.5 * ((t - 8.4) / 0.03) ** 2)  # a contaminant outside every window
    res = analyse_chromatogram(t, y)
    assert len(res.unidentified) == 1 and res.unidentified[0].retention_min == pytest.approx(8.4, abs=0.02)
    assert res.product_yield == pytest.approx(0.6, abs=0.01)


def test_baseline_and_noise_estimators() -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 10, 3001)
    base = 2.0 + 0.5 * t
    peak = 100 * np.exp(-0.5 * ((t - 5) / 0.05) ** 2)
    y = base + peak + rng.normal(0, 0.5, t.shape)
    assert np.abs(als_baseline(y) - base)[np.abs(t - 5) > 0.5].max() < 0.5
    assert noise_level(y - als_baseline(y)) == pytest.approx(0.5, rel=0.15)


def test_empty_vial_and_broken_traces_are_errors() -> None:
    t, y = trace({"A": 0.0, "B": 0.0, "P": 0.0, "S": 0.0})
    with pytest.raises(ChromatogramError, match="no peak of A, P or S"):
        analyse_chromatogram(t, y)
    bad = y.copy()
    bad[100] = np.nan
    with pytest.raises(ChromatogramError, match="NaN"):
        analyse_chromatogram(t, bad)
    with pytest.raises(ChromatogramError, match="matching"):
        analyse_chromatogram(t[:50], y[:50])
