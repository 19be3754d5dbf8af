"""Writes multifidelity-coating.csv (seeded): a replay table with a digital twin and a cheap check.

    python campaigns/data/make_multifidelity_table.py     # rewrites the CSV next to this file

360 candidates (12 temperatures x 10 speeds x 3 additives), one row each. ``hardness`` is the full
measurement (to maximise); ``twin_hardness`` a digital twin's prediction of it (a smooth model that
knows the main trend, biased and scaled, blind to the additive's shift of the optimum);
``scratch_check`` a quick physical check of the same property (right shape, noisy, offset).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ADDITIVES = {"none": (0.0, 0.0), "silane": (12.0, 0.6), "wax": (-8.0, -0.3)}  # shift of the peak, gain


def hardness(t: float, v: float, additive: str) -> float:
    dt, gain = ADDITIVES[additive]
    main = np.exp(-(((t - 150 - dt) / 35) ** 2) - ((v - 4.5) / 2.5) ** 2)
    ridge = 0.35 * np.exp(-(((t - 95) / 15) ** 2) - ((v - 8.5) / 1.2) ** 2)  # a second, lower optimum
    return float(6.0 + 3.0 * main + 1.5 * ridge + gain * main)


def twin(t: float, v: float) -> float:
    """What the twin knows: the main trend at the additive-free optimum, a smooth ripple it gets wrong."""
    return float(4.0 + 2.2 * np.exp(-(((t - 150) / 40) ** 2) - ((v - 4.5) / 3.0) ** 2) + 0.25 * np.sin(t / 17))


def write(path: Path, seed: int = 11) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["temperature_c,speed_mm_s,additive,hardness,twin_hardness,scratch_check"]
    for t in np.linspace(60, 200, 12):
        for v in np.linspace(1, 10, 10):
            for a in ADDITIVES:
                y = hardness(t, v, a) + rng.normal(0, 0.05)
                tw = twin(t, v) + rng.normal(0, 0.15)
                check = 0.8 * hardness(t, v, a) + 1.0 + rng.normal(0, 0.35)
                lines.append(f"{t:.1f},{v:.1f},{a},{y:.4f},{tw:.4f},{check:.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(write(Path(__file__).resolve().parent / "multifidelity-coating.csv"))
