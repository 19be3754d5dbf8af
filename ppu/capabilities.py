"""Capabilities: a name mapped to its input model, output model, action class and sample semantics.

Every task payload is validated against its capability's input model before it is queued, and
every result against the output model before it is recorded. The registry is EMPTY at import:
packs (:mod:`ppu.packs`) register their capabilities with :func:`register` when they are loaded.

A capability declares, as data, what it means for samples and for the people who approve work, so
that the core reads declarations and never guesses from field names:

- ``sample_inputs``: the input names that hold the id(s) of the sample(s) the task works on;
- ``sample_output`` / ``location_output``: the output that holds the id of the sample it makes,
  and the output that says where that sample is (``{"device": ..., "slot": ...}``);
- ``parent_inputs``: inputs that name the samples a new sample was made from (lineage);
- ``uses_up_sample``: a destructive step; the sample is consumed and cannot be scheduled again;
- ``approval_inputs``: the inputs a supervised policy compares with what has already run
  successfully (a process nobody has run before waits for a person);
- ``limits``: safe limits on input fields (dotted paths); a backend may narrow them further;
- ``cost`` / ``duration_s``: estimates a backend's offer starts from;
- ``summary``: input paths a person reads first (CLI and dashboard one-line summaries);
- ``example``: one valid payload (warm-up, documentation, conformance tests);
- ``encoder`` / ``decoder``: how a served model reads the inputs and what its outputs become.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from ppu.errors import UnknownCapabilityError, ValidationFailed
from ppu.models import ActionClass, Limit, Strict, lookup_path


class Capability(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    action: ActionClass
    description: str = ""
    sample_inputs: list[str] = Field(default_factory=list,
                                     description="input names holding the id(s) of the sample(s) the task works on")
    sample_output: str | None = Field(None, description="output holding the id of the sample the task makes")
    location_output: str | None = Field(None, description="output holding where the new sample is: {device, slot}")
    parent_inputs: list[str] = Field(default_factory=list,
                                     description="inputs naming the samples a new sample is made from")
    uses_up_sample: bool = Field(False, description="the task consumes its sample (no later task may use it)")
    approval_inputs: list[str] = Field(default_factory=list,
                                       description="inputs a supervised policy compares with what already ran")
    limits: dict[str, Limit] = Field(default_factory=dict, description="safe limits on input fields (dotted paths)")
    cost: float | None = Field(None, ge=0, description="estimated cost of one task (a backend's offer may override)")
    duration_s: float | None = Field(None, ge=0, description="estimated duration of one task in seconds")
    summary: list[str] = Field(default_factory=list, description="input paths a person reads first")
    example: dict[str, Any] | None = Field(None, description="one valid input payload")
    encoder: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$",
                                description="'module:function': inputs -> one row of model features (served models)")
    decoder: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$",
                                description="'module:function': (mean, std, model version) -> outputs")
    pack: str | None = Field(None, description="the pack that registered it")
    # Shorthands kept for packs written before the declarations above: ``needs_sample`` means
    # ``sample_inputs=["sample_id"]``, ``makes_sample`` means ``sample_output="sample_id"``.
    needs_sample: bool = False
    makes_sample: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if data.get("needs_sample") and not data.get("sample_inputs"):
                data["sample_inputs"] = ["sample_id"]
            if data.get("makes_sample") and data.get("sample_output") is None:
                data["sample_output"] = "sample_id"
            data["needs_sample"] = bool(data.get("sample_inputs"))
            data["makes_sample"] = data.get("sample_output") is not None
        return data

    @model_validator(mode="after")
    def _declarations(self) -> Capability:
        fields = self.input_model.model_fields
        for name in [*self.sample_inputs, *self.parent_inputs, *self.approval_inputs]:
            if name not in fields:
                raise ValueError(f"capability {self.name}: {name!r} is not an input of {self.input_model.__name__}")
        for out in (self.sample_output, self.location_output):
            if out is not None and out not in self.output_model.model_fields:
                raise ValueError(f"capability {self.name}: {out!r} is not an output of "
                                 f"{self.output_model.__name__}")
        if self.example is not None:
            self.input_model.model_validate(self.example)
        return self

    # ---- reading a task through the declarations ------------------------------------------------

    def samples_used(self, inputs: dict[str, Any]) -> list[str]:
        """The ids of the samples a task with these inputs works on, in declaration order."""
        out: list[str] = []
        for name in self.sample_inputs:
            v = inputs.get(name)
            out += [str(x) for x in v] if isinstance(v, list) else ([str(v)] if v else [])
        return out

    def parents(self, inputs: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for name in self.parent_inputs:
            v = inputs.get(name)
            out += [str(x) for x in v] if isinstance(v, list) else ([str(v)] if v else [])
        return out

    def approval_view(self, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """The part of the inputs a supervised policy compares (None: nothing declared)."""
        if not self.approval_inputs:
            return None
        return {name: inputs.get(name) for name in self.approval_inputs}

    def summarise(self, inputs: dict[str, Any], width: int = 60) -> str:
        """The declared summary fields in a few words (every scalar field when none of them is there)."""
        parts = []
        for path in self.summary:
            v = lookup_path(inputs, path)
            if v is None:
                continue
            if isinstance(v, dict):
                parts.append(" ".join(f"{k}{x:g}" if isinstance(x, int | float) else f"{k}={x}" for k, x in v.items()))
            else:
                name = path.rsplit(".", 1)[-1]
                parts.append(f"{name}={v:g}" if isinstance(v, float) else f"{name}={v}")
        return _clip(", ".join(parts), width) if parts else flat_summary(inputs, width)


def flat_summary(inputs: dict[str, Any], width: int = 60) -> str:
    """Every scalar of a payload (one level of nesting flattened) as ``name=value``, clipped to ``width``."""
    items: list[str] = []
    for k, v in inputs.items():
        if isinstance(v, dict):
            items += [f"{kk}={vv}" for kk, vv in v.items() if not isinstance(vv, dict | list)]
        elif not isinstance(v, list):
            items.append(f"{k}={v}")
    return _clip(", ".join(items), width)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class EchoInput(Strict):
    """A trivial digital capability for tests, demos and dispatch benchmarks (the core pack's)."""

    x: float = 0.0
    payload: str = Field("", max_length=1_000_000)


class EchoOutput(Strict):
    y: float
    payload: str = ""


class PlanInput(Strict):
    """A scientist's own Bluesky plan, by the name the lab allows, with its arguments as JSON; devices are
    named as strings (``"det1"``, ``"stage.x"``) and resolved on the backend that runs it."""

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
    if cap.name in _REGISTRY and not replace and not _same(_REGISTRY[cap.name], cap):
        raise ValueError(f"capability {cap.name!r} is already registered with other models")
    _REGISTRY[cap.name] = cap
    return cap


def _same(a: Capability, b: Capability) -> bool:
    return a.model_dump(exclude={"pack"}) == b.model_dump(exclude={"pack"})


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _ensure() -> None:
    from ppu import packs  # a process that read no lab file knows every installed pack

    packs.ensure_loaded()


def get(name: str) -> Capability:
    _ensure()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownCapabilityError(
            f"unknown capability {name!r}",
            field="capability",
            hint=(f"known capabilities: {', '.join(sorted(_REGISTRY))}; a capability of another pack needs that "
                  "pack installed and listed under 'packs:' in the lab file (ppu packs lists them)"),
        ) from None


def known() -> dict[str, Capability]:
    _ensure()
    return dict(_REGISTRY)


def registered() -> dict[str, Capability]:
    """What is registered now, without loading the default packs (for the pack loader)."""
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
