"""A declared optimisation problem, read like gest-api's VOCS (variables, objectives, constraints,
constants, observables), so a problem written for another optimiser reads here too.

    problem:
      variables:
        temperature_c: [30, 120]                                   # continuous: [low, high]
        residence_min: {type: continuous, domain: [0.5, 20], log: true}
        stages:        {type: integer, domain: [1, 4]}
        loading:       {type: discrete, values: [0.5, 1, 2, 5]}
        ligand:        {type: categorical, values: [L1, L2, L3]}    # optional descriptors per value
      objectives:  {yield: MAXIMIZE, cost: MINIMIZE}                  # one or several
      constraints: {selectivity: [GREATER_THAN, 0.9]}                # LESS_THAN, GREATER_THAN, BOUNDS
      constants:   {pressure_bar: 5}
      observables: [side_product]
      mixtures:                                                # fractions that sum to a total (a mixture)
        blend: {components: [a_frac, b_frac, c_frac], total: 1}    # each a continuous variable with its bounds

gest-api's own type names (``ContinuousVariable``, ``DiscreteVariable``, ...) are accepted as well
as the short ones, and objective/constraint words in any case. ``EXPLORE`` objectives are refused:
nothing here explores without a goal. No IO, no torch: the encodings used by the generators are
plain numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ppu.models import Strict

Scalar = float | int | str | bool

_TYPE_NAMES = {
    "continuous": "continuous", "continuousvariable": "continuous",
    "integer": "integer", "integervariable": "integer",
    "discrete": "discrete", "discretevariable": "discrete",
    "categorical": "categorical", "categoricalvariable": "categorical",
}


class ContinuousVariable(Strict):
    type: Literal["continuous"] = "continuous"
    domain: tuple[float, float] = Field(description="[low, high], low < high")
    log: bool = Field(False, description="search on a log scale (needs low > 0)")

    @model_validator(mode="after")
    def _check(self) -> ContinuousVariable:
        lo, hi = self.domain
        if not hi > lo:
            raise ValueError(f"domain [{lo}, {hi}] needs low < high")
        if self.log and lo <= 0:
            raise ValueError(f"log: true needs a positive low bound, got {lo}")
        return self


class IntegerVariable(Strict):
    type: Literal["integer"] = "integer"
    domain: tuple[int, int] = Field(description="[low, high] inclusive, low < high")

    @model_validator(mode="after")
    def _check(self) -> IntegerVariable:
        if not self.domain[1] > self.domain[0]:
            raise ValueError(f"domain {list(self.domain)} needs low < high")
        return self


class DiscreteVariable(Strict):
    """Ordered numeric values (a distance between them means something)."""

    type: Literal["discrete"] = "discrete"
    values: list[float] = Field(min_length=1, description="the allowed numbers")

    @field_validator("values")
    @classmethod
    def _distinct(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError("values must be distinct")
        return sorted(v)


class CategoricalVariable(Strict):
    """Unordered labels; ``descriptors`` (one vector per label) replace one-hot encoding when given."""

    type: Literal["categorical"] = "categorical"
    values: list[str] = Field(min_length=1, description="the allowed labels")
    descriptors: dict[str, list[float]] | None = Field(
        None, description="label -> numeric descriptor vector (same length for every label)")

    @field_validator("values", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list | tuple | set) else v

    @model_validator(mode="after")
    def _check(self) -> CategoricalVariable:
        if len(set(self.values)) != len(self.values):
            raise ValueError("values must be distinct")
        if self.descriptors is not None:
            missing = [v for v in self.values if v not in self.descriptors]
            if missing:
                raise ValueError(f"descriptors lack the labels {missing}")
            if len({len(d) for d in self.descriptors.values()}) != 1:
                raise ValueError("every descriptor vector must have the same length")
        return self


Variable = Annotated[ContinuousVariable | IntegerVariable | DiscreteVariable | CategoricalVariable,
                     Field(discriminator="type")]


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _variable_shorthand(name: str, raw: Any) -> Any:
    """VOCS shorthands: ``[low, high]`` is continuous, a set/list of values discrete or categorical."""
    if isinstance(raw, list | tuple) and len(raw) == 2 and all(_numeric(x) for x in raw):
        return {"type": "continuous", "domain": [float(x) for x in raw]}
    if isinstance(raw, set | frozenset | list | tuple):
        vals = list(raw)
        return {"type": "discrete" if vals and all(_numeric(x) for x in vals) else "categorical", "values": vals}
    if isinstance(raw, dict):
        out = dict(raw)
        t = out.get("type")
        if t is None:
            if "domain" in out:
                out["type"] = "continuous"
            elif "values" in out:
                vals = list(out["values"])
                out["type"] = "discrete" if vals and all(_numeric(x) for x in vals) else "categorical"
        elif isinstance(t, str) and t.lower() in _TYPE_NAMES:
            out["type"] = _TYPE_NAMES[t.lower()]
        if out.get("type") == "discrete" and isinstance(out.get("values"), set | frozenset):
            out["values"] = sorted(out["values"])
        return out
    return raw


Sense = Literal["MINIMIZE", "MAXIMIZE"]


class MixtureGroup(Strict):
    """Continuous variables that are fractions of one whole: they sum to ``total`` (per-component bounds are
    the variables' own domains). Points stay plain scalars, so other VOCS optimisers read them too."""

    components: list[str] = Field(min_length=2, description="names of continuous variables")
    total: float = Field(1.0, gt=0, description="what the components sum to")
    tolerance: float = Field(0.01, ge=0, lt=1, description="relative slack on the sum (tables round)")


class Constraint(Strict):
    """An output that must satisfy ``kind``: below ``value``, above ``value``, or within ``range``."""

    kind: Literal["LESS_THAN", "GREATER_THAN", "BOUNDS"]
    value: float | None = None
    range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _check(self) -> Constraint:
        if self.kind == "BOUNDS":
            if self.range is None or not self.range[1] > self.range[0]:
                raise ValueError("BOUNDS needs [low, high] with low < high")
        elif self.value is None:
            raise ValueError(f"{self.kind} needs a value")
        return self

    def ok(self, y: float | None) -> bool:
        if y is None or not math.isfinite(y):
            return False
        if self.kind == "LESS_THAN":
            return y <= float(self.value)  # type: ignore[arg-type]
        if self.kind == "GREATER_THAN":
            return y >= float(self.value)  # type: ignore[arg-type]
        lo, hi = self.range  # type: ignore[misc]
        return lo <= y <= hi

    def slacks(self) -> list[tuple[float, float]]:
        """As (sign, bound) pairs: feasible when sign * (bound - y) <= 0 for each."""
        if self.kind == "GREATER_THAN":
            return [(1.0, float(self.value))]  # type: ignore[arg-type]
        if self.kind == "LESS_THAN":
            return [(-1.0, float(self.value))]  # type: ignore[arg-type]
        lo, hi = self.range  # type: ignore[misc]
        return [(1.0, lo), (-1.0, hi)]


def _constraint_shorthand(raw: Any) -> Any:
    if isinstance(raw, list | tuple) and raw and isinstance(raw[0], str):
        kind = raw[0].upper()
        if kind == "BOUNDS":
            rng = raw[1] if len(raw) == 2 and isinstance(raw[1], list | tuple) else list(raw[1:])
            return {"kind": kind, "range": rng}
        if len(raw) != 2:
            return {"kind": kind}  # the model says what is missing
        return {"kind": kind, "value": raw[1]}
    if isinstance(raw, dict) and "type" in raw and "kind" not in raw:  # gest-api's dict form
        out = {k: v for k, v in raw.items() if k != "type"}
        names = {"lessthanconstraint": "LESS_THAN", "greaterthanconstraint": "GREATER_THAN",
                 "boundsconstraint": "BOUNDS"}
        out["kind"] = names.get(str(raw["type"]).lower(), str(raw["type"]).upper())
        return out
    return raw


class Problem(Strict):
    """Variables, objectives, constraints, constants, observables (gest-api's VOCS); see the module doc."""

    variables: dict[str, Variable] = Field(description="the inputs the optimiser chooses (a generator needs one)")
    objectives: dict[str, Sense] = Field(min_length=1, description="output name -> MINIMIZE or MAXIMIZE")
    constraints: dict[str, Constraint] = Field(default_factory=dict,
                                               description="output name -> [LESS_THAN|GREATER_THAN, value] "
                                                           "or [BOUNDS, [low, high]]")
    constants: dict[str, Scalar] = Field(default_factory=dict, description="inputs held fixed")
    observables: list[str] = Field(default_factory=list, description="other outputs recorded alongside")
    mixtures: dict[str, MixtureGroup] = Field(default_factory=dict, description="groups of continuous "
                                                      "variables that sum to a total (fractions of a blend)")

    @field_validator("variables", mode="before")
    @classmethod
    def _vars(cls, v: Any) -> Any:
        return {k: _variable_shorthand(k, x) for k, x in v.items()} if isinstance(v, dict) else v

    @field_validator("objectives", mode="before")
    @classmethod
    def _objs(cls, v: Any) -> Any:
        if isinstance(v, dict):
            out = {}
            for k, s in v.items():
                if isinstance(s, dict) and "type" in s:  # gest-api's {type: MaximizeObjective}
                    s = str(s["type"]).upper().replace("OBJECTIVE", "")
                if isinstance(s, str):
                    s = s.upper().replace("MAXIMISE", "MAXIMIZE").replace("MINIMISE", "MINIMIZE")
                    s = {"MAXIMIZE": "MAXIMIZE", "MINIMIZE": "MINIMIZE", "MAX": "MAXIMIZE", "MIN": "MINIMIZE"}.get(s, s)
                out[k] = s
            return out
        return v

    @field_validator("constraints", mode="before")
    @classmethod
    def _cons(cls, v: Any) -> Any:
        return {k: _constraint_shorthand(x) for k, x in v.items()} if isinstance(v, dict) else v

    @field_validator("observables", mode="before")
    @classmethod
    def _obs(cls, v: Any) -> Any:
        return list(v) if isinstance(v, dict | set | tuple) else v

    @model_validator(mode="after")
    def _names(self) -> Problem:
        inputs = set(self.variables) | set(self.constants)
        for group in ("objectives", "constraints", "observables"):
            clash = sorted(set(getattr(self, group)) & inputs)
            if clash:
                raise ValueError(f"{group} {clash} are also inputs (variables or constants): an output "
                                 "needs its own name")
        clash = sorted(set(self.variables) & set(self.constants))
        if clash:
            raise ValueError(f"{clash} are both variables and constants")
        used: set[str] = set()
        for g, grp in self.mixtures.items():
            for c in grp.components:
                v = self.variables.get(c)
                if not isinstance(v, ContinuousVariable) or v.log:
                    raise ValueError(f"mixtures.{g}: {c!r} must be a declared continuous variable "
                                     "(linear scale) with its bounds")
                if c in used:
                    raise ValueError(f"mixtures.{g}: {c!r} is already in another group")
                used.add(c)
            doms = [self._domain(c) for c in grp.components]
            lows, highs = sum(d[0] for d in doms), sum(d[1] for d in doms)
            if not lows <= grp.total <= highs:
                raise ValueError(f"mixtures.{g}: no point sums to {grp.total:g} within the components' "
                                 f"bounds (lows sum to {lows:g}, highs to {highs:g})")
        return self

    def _domain(self, name: str) -> tuple[float, float]:
        v = self.variables[name]
        assert isinstance(v, ContinuousVariable)
        return v.domain

    def mixture_constraints(self) -> list[tuple[list[int], list[float], float]]:
        """Each group as a linear equality in the unit cube: sum(coef * u[idx]) == rhs."""
        cols = {name: j for j, name in enumerate(self._columns())}
        out = []
        for group in self.mixtures.values():
            idx, coef, rhs = [], [], group.total
            for c in group.components:
                lo, hi = self._domain(c)
                idx.append(cols[c])
                coef.append(hi - lo)
                rhs -= lo
            out.append((idx, coef, rhs))
        return out

    def _columns(self) -> list[str]:
        """The encoded column each scalar variable starts at (categoricals take several)."""
        names: list[str] = []
        for name, v in self.variables.items():
            if isinstance(v, CategoricalVariable):
                w = len(next(iter(v.descriptors.values()))) if v.descriptors else len(v.values)
                names += [f"{name}#{k}" for k in range(w)]
            else:
                names.append(name)
        return names

    def _project(self, point: dict[str, Any]) -> None:
        """Move a group's fractions onto its sum within their bounds (scale the free ones, clamp, repeat)."""
        for group in self.mixtures.values():
            bounds = {c: self._domain(c) for c in group.components}
            fixed: dict[str, float] = {}
            for _ in range(len(group.components) + 1):
                free = [c for c in group.components if c not in fixed]
                room = group.total - sum(fixed.values())
                s = sum(point[c] for c in free)
                for c in free:
                    point[c] = point[c] * room / s if s > 0 else room / len(free)
                hit = {c: min(max(point[c], bounds[c][0]), bounds[c][1]) for c in free
                       if not bounds[c][0] <= point[c] <= bounds[c][1]}
                if not hit:
                    break
                for c, v in hit.items():
                    point[c] = v
                    fixed[c] = v

    # ---- reading outputs ----------------------------------------------------------------------

    @property
    def outputs(self) -> list[str]:
        out = list(self.objectives)
        out += [c for c in self.constraints if c not in out]
        out += [o for o in self.observables if o not in out]
        return out

    def sign(self, objective: str) -> float:
        """+1 for MAXIMIZE, -1 for MINIMIZE: ``sign * y`` is always 'larger is better'."""
        return 1.0 if self.objectives[objective] == "MAXIMIZE" else -1.0

    def feasible(self, outputs: dict[str, Any]) -> bool:
        return all(c.ok(as_number(outputs.get(name))) for name, c in self.constraints.items())

    def score(self, outputs: dict[str, Any], objective: str | None = None) -> float | None:
        """The signed objective of a feasible result (larger is better); None when infeasible or missing."""
        name = objective or next(iter(self.objectives))
        y = as_number(outputs.get(name))
        if y is None or not self.feasible(outputs):
            return None
        return self.sign(name) * y

    # ---- encoding inputs into the unit cube (what the generators model on) ---------------------

    @property
    def width(self) -> int:
        w = 0
        for v in self.variables.values():
            if isinstance(v, CategoricalVariable):
                w += len(next(iter(v.descriptors.values()))) if v.descriptors else len(v.values)
            else:
                w += 1
        return w

    def encode(self, points: Sequence[dict[str, Any]]) -> np.ndarray:
        """Points -> an (n, width) array in [0, 1]: bounds scaled (log when declared), labels one-hot
        (or their descriptors, scaled per column)."""
        cols: list[np.ndarray] = []
        for name, v in self.variables.items():
            raw = [p[name] for p in points]
            if isinstance(v, CategoricalVariable):
                idx = [v.values.index(str(x)) for x in raw]
                if v.descriptors:
                    d = np.array([v.descriptors[lab] for lab in v.values], dtype=float)
                    span = np.where(np.ptp(d, axis=0) > 0, np.ptp(d, axis=0), 1.0)
                    cols.append((d[idx] - d.min(axis=0)) / span)
                else:
                    cols.append(np.eye(len(v.values))[idx])
                continue
            x = np.asarray(raw, dtype=float)
            if isinstance(v, ContinuousVariable):
                lo, hi = v.domain
                if v.log:
                    x, lo, hi = np.log(x), math.log(lo), math.log(hi)
            elif isinstance(v, IntegerVariable):
                lo, hi = v.domain
            else:
                lo, hi = min(v.values), max(v.values)
            cols.append(((x - lo) / (hi - lo if hi > lo else 1.0))[:, None])
        return np.concatenate(cols, axis=1) if cols else np.zeros((len(points), 0))

    def decode(self, u: np.ndarray) -> list[dict[str, Any]]:
        """Unit-cube rows -> points (integers rounded, discrete values and labels snapped)."""
        out: list[dict[str, Any]] = [dict(self.constants) for _ in range(len(u))]
        j = 0
        for name, v in self.variables.items():
            if isinstance(v, CategoricalVariable):
                w = len(next(iter(v.descriptors.values()))) if v.descriptors else len(v.values)
                block = u[:, j:j + w]
                if v.descriptors:
                    ref = self.encode([{**{n: _any_value(x) for n, x in self.variables.items()}, name: lab}
                                       for lab in v.values])[:, j:j + w]
                    pick = np.argmin(((block[:, None, :] - ref[None]) ** 2).sum(-1), axis=1)
                else:
                    pick = np.argmax(block, axis=1)
                for r, k in enumerate(pick):
                    out[r][name] = v.values[int(k)]
                j += w
                continue
            col = np.clip(u[:, j], 0.0, 1.0)
            if isinstance(v, ContinuousVariable):
                lo, hi = v.domain
                vals = (np.exp(math.log(lo) + col * (math.log(hi) - math.log(lo))) if v.log
                        else lo + col * (hi - lo))
                for r, x in enumerate(vals):
                    out[r][name] = float(x)
            elif isinstance(v, IntegerVariable):
                lo, hi = v.domain
                for r, x in enumerate(np.rint(lo + col * (hi - lo))):
                    out[r][name] = int(x)
            else:
                lo, hi = min(v.values), max(v.values)
                arr = np.asarray(v.values)
                for r, x in enumerate(lo + col * (hi - lo)):
                    out[r][name] = float(arr[np.argmin(np.abs(arr - x))])
            j += 1
        if self.mixtures:
            for p in out:
                self._project(p)
        return out

    def check_point(self, point: dict[str, Any]) -> str | None:
        """Why ``point`` lies outside the declared space (None: inside). Nothing is clipped."""
        for name, v in self.variables.items():
            if name not in point:
                return f"{name}: missing"
            x = point[name]
            if isinstance(v, CategoricalVariable):
                if str(x) not in v.values:
                    return f"{name}: {x!r} is not one of {v.values}"
                continue
            y = as_number(x)
            if y is None:
                return f"{name}: {x!r} is not a number"
            if isinstance(v, ContinuousVariable | IntegerVariable):
                lo, hi = v.domain
                if not lo <= y <= hi:
                    return f"{name}: {y:g} lies outside the domain [{lo:g}, {hi:g}]"
                if isinstance(v, IntegerVariable) and y != int(y):
                    return f"{name}: {y:g} is not an integer"
            elif y not in v.values:
                return f"{name}: {y:g} is not one of {v.values}"
        for g, group in self.mixtures.items():
            total = sum(float(point[c]) for c in group.components)
            if abs(total - group.total) > group.tolerance * group.total:
                return f"{group.components[0]}: the mixture {g} sums to {total:g}, not {group.total:g}"
        return None


def _any_value(v: Any) -> Any:
    if isinstance(v, CategoricalVariable | DiscreteVariable):
        return v.values[0]
    return v.domain[0]


def as_number(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        y = float(x)
    except (TypeError, ValueError):
        return None
    return y if math.isfinite(y) else None


VOCS = Problem  # the name other optimisers know it by
