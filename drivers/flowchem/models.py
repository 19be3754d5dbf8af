"""Payloads of the flow-chemistry capabilities: a reaction recipe, a fraction, a chromatogram's answer.

The recipe is the point of the search space: a categorical ligand for the catalyst and four
continuous process parameters of a plug-flow reactor (temperature, residence time, equivalents of
reagent B, concentration of the limiting reagent A). The bounds here are what the *payload* may
say; the safe limits a reactor accepts are its backend's (``safe_limits``), checked before
anything moves.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ppu.models import Strict

LIGANDS: tuple[str, ...] = ("PPh3", "dppf", "SPhos", "XPhos")
Ligand = Literal["PPh3", "dppf", "SPhos", "XPhos"]

# The process box a campaign searches (name -> (low, high, unit)); the payload bounds are wider.
PROCESS_BOX: dict[str, tuple[float, float, str]] = {
    "temperature_c": (40.0, 160.0, "degC"),
    "residence_time_min": (0.5, 30.0, "min"),
    "equivalents_b": (1.0, 3.0, "eq"),
    "concentration_m": (0.1, 1.0, "M"),
}


class FlowRecipe(Strict):
    """One set of reaction conditions (the 'recipe' a person approves)."""

    ligand: Ligand = Field("PPh3", description="phosphine ligand of the Pd catalyst (categorical)")
    temperature_c: float = Field(80.0, ge=-50, le=300, description="reactor coil temperature, degC")
    residence_time_min: float = Field(10.0, gt=0, le=240, description="residence time in the coil, min")
    equivalents_b: float = Field(1.5, gt=0, le=20, description="equivalents of reagent B per A")
    concentration_m: float = Field(0.5, gt=0, le=5, description="concentration of A after mixing, mol/L")

    def vector(self) -> list[float]:
        """The continuous parameters in PROCESS_BOX order."""
        return [float(getattr(self, k)) for k in PROCESS_BOX]


class ReactInput(Strict):
    recipe: FlowRecipe
    collect_volume_ml: float = Field(2.0, gt=0, le=100, description="volume of the fraction collected")


class ReactOutput(Strict):
    sample_id: str
    volume_ml: float = Field(ge=0)
    location: dict[str, Any] = Field(default_factory=dict)
    pressure_bar: float | None = Field(None, description="back-pressure read during collection")


class HPLCInput(Strict):
    sample_id: str
    run_time_min: float = Field(10.0, ge=4, le=60, description="length of the chromatogram")
    sample_rate_hz: float = Field(10.0, ge=1, le=100, description="detector sampling rate")
    injection_ul: float = Field(5.0, gt=0, le=100, description="injection volume")


class PeakReport(Strict):
    retention_min: float
    area: float
    height: float


class HPLCOutput(Strict):
    product_yield: float = Field(ge=0, le=1, description="mol P per mol A fed (assay yield)")
    impurity: float = Field(ge=0, le=1, description="mol S per mol A fed (over-reaction product)")
    conversion: float = Field(ge=0, le=1, description="fraction of A consumed")
    peaks: dict[str, PeakReport] = Field(default_factory=dict, description="identified peaks by species")
    unidentified: int = Field(0, ge=0, description="peaks outside every retention window")


class YieldPredictInput(Strict):
    recipe: FlowRecipe


class YieldPrediction(Strict):
    mean: float = Field(description="predicted yield (0..1)")
    std: float = Field(ge=0)
    impurity: float = Field(0.0, ge=0, le=1)
    model_version: str | None = None
