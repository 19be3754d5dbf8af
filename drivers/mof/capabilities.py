"""The MOF lab's capabilities: payload models and what each capability declares.

A candidate is a composition of metals plus an anneal (temperature, time). ``synthesize`` makes a
sample from a recipe (the recipe is what a supervised lab approves); the measurements work on one
sample each; ``predict.*`` serve surrogates on the digital side (input encoder:
:func:`ppu.drivers.mof.featurize.encode_prediction_input`, output decoder: mean and std).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from ppu.capabilities import Capability
from ppu.models import ActionClass, Limit, Strict


class Candidate(Strict):
    """A point of the search space: a composition (element -> fraction) and a process."""

    id: str | None = None
    composition: dict[str, float] = Field(min_length=1)
    anneal_temperature_c: float = Field(400.0, ge=-273.15, le=5000)
    anneal_time_h: float = Field(4.0, ge=0, le=1000)

    @field_validator("composition")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        if any(x < 0 for x in v.values()):
            raise ValueError("composition fractions must be >= 0")
        total = sum(v.values())
        if not 0.99 <= total <= 1.01:
            raise ValueError(f"composition fractions must sum to 1 (got {total:.3f})")
        return v


class Prediction(Strict):
    mean: float
    std: float = Field(ge=0)
    model_version: str | None = None


class PredictInput(Strict):
    candidate: Candidate




class SynthesizeInput(Strict):
    recipe: Candidate
    target_mass_mg: float = Field(50.0, gt=0, le=10_000)


class SynthesizeOutput(Strict):
    sample_id: str
    mass_mg: float = Field(ge=0)
    location: dict[str, Any] = Field(default_factory=dict)


class XRDInput(Strict):
    sample_id: str
    two_theta_start: float = Field(10.0, ge=0, le=180)
    two_theta_stop: float = Field(80.0, ge=0, le=180)
    two_theta_step: float = Field(0.05, gt=0, le=5)


class XRDOutput(Strict):
    phases: dict[str, float] = Field(description="phase name -> weight fraction")
    purity: float = Field(ge=0, le=1)
    main_phase: str | None = None


class BandGapInput(Strict):
    sample_id: str
    wavelength_start_nm: float = Field(250.0, gt=0)
    wavelength_stop_nm: float = Field(900.0, gt=0)


class BandGapOutput(Strict):
    band_gap_ev: float
    fit_r2: float | None = None


class UptakeInput(Strict):
    sample_id: str
    pressure_bar: float = Field(0.15, gt=0, le=50)
    points: int = Field(12, ge=3, le=200)
    temperature_k: float = Field(298.0, gt=0)


class UptakeOutput(Strict):
    uptake_mmol_g: float
    model: str = "langmuir"
    params: dict[str, float] = Field(default_factory=dict)




class TrainInput(Strict):
    target: str = Field(description="property to learn, e.g. co2_uptake")
    candidates: list[Candidate]
    values: list[float]
    seed: int = 0
    extra_features: list[list[float]] | None = Field(
        None, description="per candidate, columns appended to its features (e.g. the digital twin's "
                          "predictions, which a campaign's decision model reads as inputs)")
    extra_feature_names: list[str] = Field(default_factory=list, description="names of the extra columns")
    feature_bounds: list[list[float]] | None = Field(
        None, description="[lo, hi], each a value per feature (extra columns included): the box the GP scales "
                          "its inputs from, e.g. the campaign's whole pool (default: the training data's range)")

    @field_validator("extra_features")
    @classmethod
    def _rectangular(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is not None and len({len(row) for row in v}) > 1:
            raise ValueError("every row of extra_features needs the same number of columns")
        return v


class GPKernel(Strict):
    """A published GP's hyperparameters in the units of its features, so another GP over the same
    features (e.g. a campaign's decision model, normalised over its whole pool) can read them."""

    lengthscale: list[float | None] = Field(description="per feature, in feature units; None: constant in the "
                                                        "training data (the fit could not see it)")
    outputscale: float
    noise: float = Field(description="observation noise variance, in standardised units of the target")
    constant: float = Field(description="the prior mean, in standardised units of the target")


class TrainOutput(Strict):
    version: str
    n_train: int
    metrics: dict[str, float] = Field(default_factory=dict)
    kernel: GPKernel | None = None


class EnergyInput(Strict):
    candidate: Candidate


class EnergyOutput(Strict):
    energy_ev_per_atom: float
    model_version: str | None = None


_R, _O = ActionClass.repeatable, ActionClass.once
_ENC = "ppu.drivers.mof.featurize:encode_prediction_input"
_DEC = "ppu.drivers.mof.featurize:decode_prediction"
_CANDIDATE = {"candidate": {"composition": {"Mg": 0.5, "Zn": 0.5}, "anneal_temperature_c": 400.0,
                            "anneal_time_h": 4.0}}
_RECIPE = {"recipe": _CANDIDATE["candidate"], "target_mass_mg": 50.0}


def _predict(name: str, description: str) -> Capability:
    return Capability(name=name, input_model=PredictInput, output_model=Prediction, action=_R,
                      description=description, summary=["candidate.composition", "candidate.anneal_temperature_c"],
                      example=_CANDIDATE, encoder=_ENC, decoder=_DEC, cost=0.0)


CAPABILITIES: tuple[Capability, ...] = (
    _predict("predict.co2_uptake", "surrogate prediction of CO2 uptake at 0.15 bar (mmol/g)"),
    _predict("predict.band_gap", "surrogate prediction of the optical band gap (eV)"),
    _predict("predict.purity", "surrogate prediction of phase purity after synthesis"),
    Capability(name="predict.energy", input_model=EnergyInput, output_model=EnergyOutput, action=_R,
               description="ML-potential energy of a candidate's prototype structure",
               summary=["candidate.composition"], example=_CANDIDATE),
    Capability(name="relax.energy", input_model=EnergyInput, output_model=EnergyOutput, action=_R,
               description="relaxed energy of a candidate's prototype structure",
               summary=["candidate.composition"], example=_CANDIDATE),
    Capability(name="train.surrogate", input_model=TrainInput, output_model=TrainOutput, action=_R,
               description="train a new surrogate version on measured results", summary=["target"]),
    Capability(name="synthesize", input_model=SynthesizeInput, output_model=SynthesizeOutput, action=_O,
               description="make a sample from a recipe", sample_output="sample_id", location_output="location",
               approval_inputs=["recipe"], example=_RECIPE, cost=50.0, duration_s=1800 + 4 * 3600,
               summary=["recipe.composition", "recipe.anneal_temperature_c", "recipe.anneal_time_h"],
               limits={"recipe.anneal_temperature_c": Limit(min=20, max=800, unit="C"),
                       "recipe.anneal_time_h": Limit(min=0, max=48, unit="h"),
                       "target_mass_mg": Limit(min=1, max=500, unit="mg")}),
    Capability(name="characterize.xrd", input_model=XRDInput, output_model=XRDOutput, action=_O,
               sample_inputs=["sample_id"], description="powder XRD: phases and purity", summary=["sample_id"],
               cost=10.0, duration_s=60 + 0.5 * 1401,
               limits={"two_theta_start": Limit(min=2, max=150, unit="deg"),
                       "two_theta_stop": Limit(min=5, max=150, unit="deg")}),
    Capability(name="measure.band_gap", input_model=BandGapInput, output_model=BandGapOutput, action=_O,
               sample_inputs=["sample_id"], description="UV-vis absorbance and a Tauc fit", summary=["sample_id"],
               cost=2.0, duration_s=120.0,
               limits={"wavelength_start_nm": Limit(min=190, max=1100, unit="nm"),
                       "wavelength_stop_nm": Limit(min=190, max=1100, unit="nm")}),
    Capability(name="measure.co2_uptake", input_model=UptakeInput, output_model=UptakeOutput, action=_O,
               sample_inputs=["sample_id"], description="CO2 isotherm and uptake at a stated pressure",
               summary=["sample_id", "pressure_bar"], cost=20.0, duration_s=1800 + 600 * 12,
               limits={"pressure_bar": Limit(min=0.001, max=1.0, unit="bar"),
                       "temperature_k": Limit(min=273, max=353, unit="K")}),
)
