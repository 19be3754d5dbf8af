"""Capabilities: a name mapped to its input model, output model and action class.

Every task payload is validated against its capability's input model before it is queued, and
every result against the output model before it is recorded. Backends and plug-ins register
more capabilities with :func:`register`; the built-in ones below are the vocabulary the
simulated lab, the digital backends and the campaign share.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from ppu.errors import UnknownCapabilityError, ValidationFailed
from ppu.models import ActionClass, Strict


class Capability(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    action: ActionClass
    description: str = ""
    needs_sample: bool = Field(False, description="the task works on an existing physical sample")
    makes_sample: bool = Field(False, description="the task produces a new physical sample")


# ---- shared payload pieces -------------------------------------------------------------------


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


# ---- physical --------------------------------------------------------------------------------


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


# ---- digital ---------------------------------------------------------------------------------


class TrainInput(Strict):
    target: str = Field(description="property to learn, e.g. co2_uptake")
    candidates: list[Candidate]
    values: list[float]
    seed: int = 0


class TrainOutput(Strict):
    version: str
    n_train: int
    metrics: dict[str, float] = Field(default_factory=dict)


class EnergyInput(Strict):
    candidate: Candidate


class EnergyOutput(Strict):
    energy_ev_per_atom: float
    model_version: str | None = None


class EchoInput(Strict):
    """A trivial digital capability for tests, demos and dispatch benchmarks."""

    x: float = 0.0
    payload: str = Field("", max_length=1_000_000)


class EchoOutput(Strict):
    y: float
    payload: str = ""


class PlanInput(Strict):
    """A scientist's own Bluesky plan, by the name the lab allows, with its arguments as JSON; devices are
    named as strings (``"xrd"``, ``"gas.pressure"``) and resolved on the backend that runs it."""

    plan: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.:]*$")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments; '*args' for positional ones")
    md: dict[str, Any] = Field(default_factory=dict, description="extra start-document metadata")


class PlanOutput(Strict):
    plan: str
    run_uids: list[str]
    exit_status: str
    events: int = Field(ge=0)


_REGISTRY: dict[str, Capability] = {}


def register(cap: Capability, *, replace: bool = False) -> Capability:
    if cap.name in _REGISTRY and not replace and _REGISTRY[cap.name] != cap:
        raise ValueError(f"capability {cap.name!r} is already registered with other models")
    _REGISTRY[cap.name] = cap
    return cap


def get(name: str) -> Capability:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownCapabilityError(
            f"unknown capability {name!r}",
            field="capability",
            hint=f"known capabilities: {', '.join(sorted(_REGISTRY))}",
        ) from None


def known() -> dict[str, Capability]:
    return dict(_REGISTRY)


def _errors_text(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    lines = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
    return loc, "; ".join(lines)


def validate_inputs(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Validate a payload for ``name``; returns the normalised dict or raises ValidationFailed."""
    cap = get(name)
    try:
        return cap.input_model.model_validate(inputs).model_dump(mode="json")
    except ValidationError as exc:
        loc, text = _errors_text(exc)
        raise ValidationFailed(
            f"inputs for {name} are invalid: {text}",
            field=f"inputs.{loc}",
            hint=f"see the {cap.input_model.__name__} model",
        ) from None


def validate_outputs(name: str, outputs: dict[str, Any]) -> dict[str, Any]:
    cap = get(name)
    try:
        return cap.output_model.model_validate(outputs).model_dump(mode="json")
    except ValidationError as exc:
        loc, text = _errors_text(exc)
        raise ValidationFailed(f"outputs for {name} are invalid: {text}", field=f"outputs.{loc}") from None


_R, _O = ActionClass.repeatable, ActionClass.once
for _cap in [
    Capability(name="echo", input_model=EchoInput, output_model=EchoOutput, action=_R,
               description="returns y = 2x; for tests, demos and dispatch benchmarks"),
    Capability(name="bluesky.plan", input_model=PlanInput, output_model=PlanOutput, action=_O,
               description="run a Bluesky plan the lab allows on one instrument's devices (pin the backend)"),
    Capability(name="predict.co2_uptake", input_model=PredictInput, output_model=Prediction, action=_R,
               description="surrogate prediction of CO2 uptake at 0.15 bar (mmol/g)"),
    Capability(name="predict.band_gap", input_model=PredictInput, output_model=Prediction, action=_R,
               description="surrogate prediction of the optical band gap (eV)"),
    Capability(name="predict.purity", input_model=PredictInput, output_model=Prediction, action=_R,
               description="surrogate prediction of phase purity after synthesis"),
    Capability(name="predict.energy", input_model=EnergyInput, output_model=EnergyOutput, action=_R,
               description="ML-potential energy of a candidate's prototype structure"),
    Capability(name="relax.energy", input_model=EnergyInput, output_model=EnergyOutput, action=_R,
               description="relaxed energy of a candidate's prototype structure"),
    Capability(name="train.surrogate", input_model=TrainInput, output_model=TrainOutput, action=_R,
               description="train a new surrogate version on measured results"),
    Capability(name="synthesize", input_model=SynthesizeInput, output_model=SynthesizeOutput, action=_O,
               makes_sample=True, description="make a sample from a recipe"),
    Capability(name="characterize.xrd", input_model=XRDInput, output_model=XRDOutput, action=_O,
               needs_sample=True, description="powder XRD: phases and purity"),
    Capability(name="measure.band_gap", input_model=BandGapInput, output_model=BandGapOutput, action=_O,
               needs_sample=True, description="UV-vis absorbance and a Tauc fit"),
    Capability(name="measure.co2_uptake", input_model=UptakeInput, output_model=UptakeOutput, action=_O,
               needs_sample=True, description="CO2 isotherm and uptake at a stated pressure"),
]:
    register(_cap)
