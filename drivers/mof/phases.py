"""Reference powder patterns of the MOF lab's phases (a tiny "ICDD card" library) and peak shapes.

The simulated lab makes a porous MOF-74-type framework (the target) from metal salts and a linker.
Below its synthesis window the unreacted linker remains; above it the framework collapses to a
rock-salt oxide. The patterns are published knowledge, not the hidden truth about a sample: the
analysis in :mod:`ppu.drivers.mof.analysis` fits measured patterns against them, and the simulated
instruments draw their patterns from them. They live with the drivers because a real lab's
analysis needs them and no simulator.
"""

from __future__ import annotations

import numpy as np

TARGET_PHASE = "MOF-74"

# phase -> [(two_theta_deg at Cu K-alpha, relative intensity)]
REFERENCE_PEAKS: dict[str, list[tuple[float, float]]] = {
    TARGET_PHASE: [(11.8, 1.0), (13.6, 0.35), (17.9, 0.22), (23.9, 0.15), (31.2, 0.12), (36.2, 0.10)],
    "linker": [(14.6, 0.7), (19.7, 1.0), (26.4, 0.8), (28.1, 0.4), (44.6, 0.15)],
    "rocksalt-oxide": [(37.0, 0.6), (42.9, 1.0), (62.3, 0.55), (74.7, 0.15), (78.6, 0.12)],
}

PHASES: tuple[str, ...] = tuple(REFERENCE_PEAKS)

HC_EV_NM = 1239.84198  # photon energy (eV) x wavelength (nm)


def pseudo_voigt(x: np.ndarray, centre: float, fwhm: float, eta: float = 0.4) -> np.ndarray:
    """Unit-height pseudo-Voigt peak."""
    g = np.exp(-4 * np.log(2) * ((x - centre) / fwhm) ** 2)
    lor = 1.0 / (1.0 + 4 * ((x - centre) / fwhm) ** 2)
    return eta * lor + (1 - eta) * g


def phase_profile(phase: str, two_theta: np.ndarray, fwhm: float = 0.25,
                  references: dict[str, list[tuple[float, float]]] | None = None) -> np.ndarray:
    """The diffraction profile of one phase (unit weight fraction) on a 2-theta grid."""
    peaks = (references or REFERENCE_PEAKS)[phase]
    out = np.zeros_like(two_theta, dtype=float)
    for pos, rel in peaks:
        out += rel * pseudo_voigt(two_theta, pos, fwhm)
    return out
