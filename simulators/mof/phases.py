"""Reference powder patterns of the phases the simulated lab can make (a tiny "ICDD card" library).

The simulated lab makes a porous MOF-74-type framework (the target) from metal salts and a linker.
Below its synthesis window the unreacted linker remains; above it the framework collapses to a
rock-salt oxide. The patterns are published knowledge, not the hidden truth about a sample: the
instrument models draw diffraction patterns from them, and the analysis in ``ppu.drivers`` fits
measured patterns against them.
"""

from __future__ import annotations

TARGET_PHASE = "MOF-74"

# phase -> [(two_theta_deg at Cu K-alpha, relative intensity)]
REFERENCE_PEAKS: dict[str, list[tuple[float, float]]] = {
    TARGET_PHASE: [(11.8, 1.0), (13.6, 0.35), (17.9, 0.22), (23.9, 0.15), (31.2, 0.12), (36.2, 0.10)],
    "linker": [(14.6, 0.7), (19.7, 1.0), (26.4, 0.8), (28.1, 0.4), (44.6, 0.15)],
    "rocksalt-oxide": [(37.0, 0.6), (42.9, 1.0), (62.3, 0.55), (74.7, 0.15), (78.6, 0.12)],
}

PHASES: tuple[str, ...] = tuple(REFERENCE_PEAKS)
