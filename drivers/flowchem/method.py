"""The HPLC method: what a lab knows about its separation before it measures anything.

Reference data the analysis needs lives here, with the drivers (a real lab would take it from its
method validation: standards injected at known concentrations). The simulated HPLC reads the same
table to place its peaks, so simulators depend on drivers and never the reverse.

Species of the flow reaction A + B -> P (main) and P + B -> S (over-reaction): retention time on a
C18 column under the method's gradient, the window the analysis accepts around it, and the
response factor (peak area per mM injected-equivalent at the detector wavelength, 254 nm). A and
its products carry the same chromophore in different environments, B absorbs weakly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Species:
    name: str
    role: str  # "limiting", "reagent", "product", "impurity"
    retention_min: float
    window_min: float
    response: float  # peak area (mAU*s) per mM in the injected solution, 5 uL injection


METHOD: dict[str, Species] = {
    "B": Species("B", "reagent", 1.65, 0.30, 180.0),
    "A": Species("A", "limiting", 3.20, 0.35, 400.0),
    "P": Species("P", "product", 5.10, 0.35, 640.0),
    "S": Species("S", "impurity", 6.70, 0.35, 840.0),
}
"""species -> method entry, in elution order."""

SOLVENT_FRONT_MIN = 0.85
"""Unretained solvent disturbs the baseline up to about here; no analyte elutes before 1.2 min."""

DILUTION = 200.0
"""The autosampler dilutes an aliquot of the fraction this many times before injection."""

# A-derived species: one mole of A gives one of P, one of P one of S (the mass balance of yield).
A_DERIVED: tuple[str, ...] = ("A", "P", "S")
