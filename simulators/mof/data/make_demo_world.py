"""Regenerate demo_world.csv: the analytic world (seed 7) 'measured' on candidate_pool(60, seed=3).

Stands in for a user's table of measurements: the truth plus instrument-grade noise (uptake 0.1
mmol/g, band gap 0.03 eV, purity 0.01), fixed seed, three decimals.

    python simulators/mof/data/make_demo_world.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ppu.simulators.mof.world import ELEMENTS, World, WorldConfig, candidate_pool


def main() -> None:
    world = World(WorldConfig(seed=7))
    rng = np.random.default_rng(7)
    out = Path(__file__).with_name("demo_world.csv")
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*ELEMENTS, "anneal_temperature_c", "anneal_time_h", "co2_uptake_mmol_g", "band_gap_ev",
                    "purity", "success_probability"])
        for c in candidate_pool(60, seed=3):
            t = world.properties(c)
            w.writerow([f"{c.composition.get(e, 0.0):.2f}" for e in ELEMENTS]
                       + [f"{c.anneal_temperature_c:.1f}", f"{c.anneal_time_h:.1f}",
                          f"{max(t.co2_uptake_mmol_g + rng.normal(0, 0.1), 0):.3f}",
                          f"{t.band_gap_ev + rng.normal(0, 0.03):.3f}",
                          f"{float(np.clip(t.purity + rng.normal(0, 0.01), 0, 1)):.3f}",
                          f"{t.success_probability:.2f}"])


if __name__ == "__main__":
    main()
