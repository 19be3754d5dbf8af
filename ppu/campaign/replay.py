"""A fair replay of a table of measurements: the pool is the table's own rows, a measurement returns
what was recorded.

    csv: data/blend.csv        # any column names
    replicates: mean           # rows with the same inputs are replicates: mean, or draw one per measurement
    top_fraction: 0.01         # scoring: "reached" = measured a candidate among the best 1 % (or top_k)
    problem:                   # which columns are inputs and which outputs (see ppu.campaign.problem)
      variables: {a: [0, 1], b: [0, 1], solvent: {type: categorical, values: [x, y]}}
      objectives: {roughness: MINIMIZE}

``problem.variables`` may be left out: every column that is not an output becomes a variable, a
numeric one continuous over the table's range (discrete when it has at most 12 distinct values), any
other categorical. A candidate of the pool is one distinct setting of the variables; its rows are
its replicates. Nothing is interpolated, extrapolated or clipped: a value outside a declared domain,
an unknown label or a missing column is a :class:`~ppu.errors.ConfigError` naming the column (and
row). A blank output cell means "not measured" in that replicate.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from ppu.campaign.problem import Problem, as_number
from ppu.errors import ConfigError
from ppu.models import Strict

_MAX_DISCRETE = 12


class TwinSpec(Strict):
    column: str = Field(description="the column holding the twin's prediction (cheap, known for every row)")
    cost: float = Field(0.0, ge=0, description="cost of one twin prediction, in the workflow's cost unit")


class FidelitySpec(Strict):
    """One level of a multi-fidelity campaign: a column that estimates the ranking objective (same sense,
    same units), or the objective itself (no ``column``: the full measurement), at a cost."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="what the level is called in decisions "
                      "and results, e.g. twin, quick_check, full")
    column: str | None = Field(None, description="the table column holding this level's value; leave it out "
                               "for the full measurement (the ranking objective)")
    cost: float = Field(gt=0, description="cost of one query at this level, in the campaign's cost unit "
                        "(a cheaper level must cost less than the full measurement)")
    physical: bool = Field(True, description="false: a digital prediction (a twin), not a lab experiment; it "
                           "is not counted among physical experiments and does not take an in-flight slot")


class ReplayTable(Strict):
    """Where a replay world's measurements are and how they are read (a campaign's ``world.replay``)."""

    csv: str = Field(description="the table of measurements (one row per measurement, any column names)")
    replicates: Literal["mean", "draw"] = Field(
        "mean", description="rows with the same inputs: return their mean, or draw one row per measurement")
    top_fraction: float = Field(0.01, gt=0, le=1, description="scoring: the best this fraction of the pool "
                                "counts as reached (rounded up, at least one candidate)")
    top_k: int | None = Field(None, ge=1, description="scoring: the best k candidates (overrides top_fraction)")
    rank_by: str | None = Field(None, description="which objective ranks the pool for scoring (default: the "
                                "first); constraints always apply")
    prior_csv: str | None = Field(None, description="earlier measurements (same columns) the generator learns "
                                  "from before the first experiment; they are not in the pool and not counted")
    twin: TwinSpec | None = Field(None, description="a low-fidelity source: a column with a digital twin's "
                                  "prediction of the ranking objective for every row (not an output, not scored)")
    fidelities: list[FidelitySpec] | None = Field(
        None, description="multi-fidelity levels, cheapest first or in any order: each a column that estimates "
        "the ranking objective (a twin's prediction, a cheap physical check) or the objective itself (no "
        "column: the full measurement), with a cost; the generator picks candidate and level by value per cost")


class ReplaySpec(ReplayTable):
    """A replay world file: the table and the problem it answers (``benchmarks/campaign.py --world``)."""

    problem: dict[str, Any] = Field(description="the VOCS problem: variables (optional), objectives, "
                                    "constraints, constants, observables")

    @model_validator(mode="after")
    def _has_objectives(self) -> ReplaySpec:
        if not isinstance(self.problem, dict) or not self.problem.get("objectives"):
            raise ValueError("problem.objectives is missing: name the column(s) to optimise, "
                             "e.g. {roughness: MINIMIZE}")
        return self


@dataclass
class Candidate:
    """One distinct setting of the variables and the table rows that measured it."""

    id: str
    point: dict[str, Any]
    rows: list[int]


class ReplayWorld:
    """See the module docstring."""

    def __init__(self, spec: ReplaySpec, base: Path | None = None):
        """``base``: a relative ``csv`` is looked for there first (the YAML file's folder)."""
        self.spec = spec
        path = Path(spec.csv)
        if not path.is_absolute() and base is not None and (base / path).is_file():
            path = base / path  # relative to the YAML file first, then to the working folder
        if not path.is_file():
            raise ConfigError(f"replay table {path} does not exist", field="csv",
                              hint="give the path of a CSV file (relative to the YAML file)")
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            self.columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
        if not rows:
            raise ConfigError(f"replay table {path} has no rows", field="csv")
        self.path = path
        self.rows = rows
        raw = dict(spec.problem)
        outputs = [*raw.get("objectives", {}), *raw.get("constraints", {}), *(raw.get("observables") or [])]
        if spec.twin is not None:
            outputs.append(spec.twin.column)  # the twin's column is neither a variable nor scored
        outputs += [f.column for f in spec.fidelities or [] if f.column is not None]  # nor a cheaper level's
        for group in ("objectives", "constraints", "observables"):
            for name in raw.get(group) or []:
                if name not in self.columns:
                    raise ConfigError(f"{path.name}: problem.{group}.{name} is not a column of the table "
                                      f"(columns: {', '.join(self.columns)})", field=f"problem.{group}.{name}")
        if not raw.get("variables"):
            raw["variables"] = self._infer_variables([c for c in self.columns if c not in outputs])
        self.problem = parse_problem(raw, f"{path.name}: ")
        for name in self.problem.variables:
            if name not in self.columns:
                raise ConfigError(f"{path.name}: problem.variables.{name} is not a column of the table "
                                  f"(columns: {', '.join(self.columns)})", field=f"problem.variables.{name}")
        self.rank_by = spec.rank_by or next(iter(self.problem.objectives))
        if self.rank_by not in self.problem.objectives:
            raise ConfigError(f"rank_by {self.rank_by!r} is not an objective ({list(self.problem.objectives)})",
                              field="rank_by")
        self.pool = self._group()
        self.values = self._read_outputs()
        self.twin_column = spec.twin.column if spec.twin else None
        if self.twin_column is not None:
            self._attach_twin(self.twin_column)
        self.levels = self._check_fidelities()
        self.prior = self._read_prior(base)

    # ---- reading the table --------------------------------------------------------------------

    def _infer_variables(self, names: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in names:
            cells = [r[name] for r in self.rows if r.get(name, "") != ""]
            nums = [as_number(c) for c in cells]
            if cells and all(n is not None for n in nums):
                distinct = sorted({float(n) for n in nums if n is not None})
                if len(distinct) <= _MAX_DISCRETE:
                    out[name] = {"type": "discrete", "values": distinct}
                else:
                    out[name] = {"type": "continuous", "domain": [distinct[0], distinct[-1]]}
            else:
                out[name] = {"type": "categorical", "values": sorted(set(cells))}
        if not out:
            raise ConfigError(f"{self.spec.csv}: every column is an output; nothing is left to vary",
                              field="problem.variables")
        return out

    def _group(self) -> list[Candidate]:
        pool: dict[tuple[Any, ...], Candidate] = {}
        names = list(self.problem.variables)
        for r, row in enumerate(self.rows):
            point: dict[str, Any] = {}
            for name in names:
                cell = row.get(name, "")
                v = self.problem.variables[name]
                point[name] = cell if v.type == "categorical" else as_number(cell)
                if point[name] is None or cell == "":
                    raise ConfigError(f"{self.path.name} row {r + 2}: column {name!r} is {cell!r}, not a number",
                                      field=f"problem.variables.{name}",
                                      hint="fill the cell or declare the column categorical")
            why = self.problem.check_point(point)
            if why is not None:
                raise ConfigError(f"{self.path.name} row {r + 2}: {why} (declared in problem.variables; nothing "
                                  "is clipped)", field=f"problem.variables.{why.split(':')[0]}")
            key = tuple(point[n] for n in names)
            if key not in pool:
                pool[key] = Candidate(id=f"row-{r + 2}", point={**self.problem.constants, **point}, rows=[])
            pool[key].rows.append(r)
        return list(pool.values())

    def _read_outputs(self) -> np.ndarray:
        """rows x outputs, NaN where a replicate has no value."""
        names = self.problem.outputs
        out = np.full((len(self.rows), len(names)), np.nan)
        for r, row in enumerate(self.rows):
            for j, name in enumerate(names):
                cell = row.get(name, "")
                if cell == "":
                    continue
                y = as_number(cell)
                if y is None:
                    raise ConfigError(f"{self.path.name} row {r + 2}: output {name!r} is {cell!r}, not a number",
                                      field=name)
                out[r, j] = y
        return out

    def _attach_twin(self, column: str) -> None:
        if column not in self.columns:
            raise ConfigError(f"{self.path.name}: twin.column {column!r} is not a column of the table",
                              field="twin.column")
        if column in self.problem.outputs or column in self.problem.variables:
            raise ConfigError(f"twin.column {column!r} is also a variable or an output of the problem",
                              field="twin.column")
        for cand in self.pool:
            vals = [as_number(self.rows[r].get(column, "")) for r in cand.rows]
            ok = [v for v in vals if v is not None]
            if not ok:
                raise ConfigError(f"{self.path.name} row {cand.rows[0] + 2}: twin column {column!r} is empty",
                                  field="twin.column")
            cand.point[column] = float(np.mean(ok))

    def _check_fidelities(self) -> dict[str, np.ndarray]:
        """Each cheaper level's values (rows, NaN where blank); every mistake is a ConfigError naming its field."""
        levels = self.spec.fidelities
        if levels is None:
            return {}
        if self.spec.twin is not None:
            raise ConfigError("declare the twin as one level of `fidelities` (physical: false), not also as `twin`",
                              field="fidelities")
        if len(self.problem.objectives) != 1 or self.problem.constraints:
            raise ConfigError("a multi-fidelity campaign optimises one objective without constraints (its levels "
                              "estimate that objective)", field="fidelities",
                              hint="keep one objective, or leave `fidelities` out")
        if len(levels) < 2:
            raise ConfigError("a multi-fidelity campaign needs at least two levels (a cheaper one and the full "
                              "measurement)", field="fidelities")
        full = [i for i, f in enumerate(levels) if f.column is None]
        if len(full) != 1:
            raise ConfigError(f"exactly one level is the full measurement (the one without `column`); found "
                              f"{len(full)}", field="fidelities" if not full else f"fidelities.{full[1]}.column",
                              hint="give every cheaper level the column that holds its values")
        top = levels[full[0]]
        if not top.physical:
            raise ConfigError("the full measurement is a lab experiment", field=f"fidelities.{full[0]}.physical")
        out: dict[str, np.ndarray] = {}
        for i, f in enumerate(levels):
            if f.name in [g.name for g in levels[:i]]:
                raise ConfigError(f"level name {f.name!r} is declared twice", field=f"fidelities.{i}.name")
            if f.column is None:
                continue
            if f.cost >= top.cost:
                raise ConfigError(f"{f.name!r} costs {f.cost:g}, not less than the full measurement's {top.cost:g}",
                                  field=f"fidelities.{i}.cost", hint="a cheaper level must be cheaper")
            if f.column not in self.columns:
                raise ConfigError(f"{self.path.name}: {f.column!r} is not a column of the table (columns: "
                                  f"{', '.join(self.columns)})", field=f"fidelities.{i}.column")
            if f.column in self.problem.outputs or f.column in self.problem.variables:
                raise ConfigError(f"{f.column!r} is also a variable or an output of the problem",
                                  field=f"fidelities.{i}.column")
            if f.column in [g.column for g in levels[:i]]:
                raise ConfigError(f"{f.column!r} is used by two levels", field=f"fidelities.{i}.column")
            col = np.full(len(self.rows), np.nan)
            for r, row in enumerate(self.rows):
                cell = row.get(f.column, "")
                y = as_number(cell)
                if cell != "" and y is None:
                    raise ConfigError(f"{self.path.name} row {r + 2}: {f.column!r} is {cell!r}, not a number",
                                      field=f"fidelities.{i}.column")
                if y is not None:
                    col[r] = y
            if not np.isfinite(col).any():
                raise ConfigError(f"{self.path.name}: column {f.column!r} is empty", field=f"fidelities.{i}.column")
            out[f.name] = col
        return out

    @property
    def fidelities(self) -> list[FidelitySpec]:
        return list(self.spec.fidelities or [])

    def measure_at(self, index: int, level: str, rng: np.random.Generator | None = None) -> dict[str, float | None]:
        """Candidate ``index`` at a declared level: a cheaper level's column (the replicates' mean, or one
        drawn replicate), or the full measurement (:meth:`measure`). Returned under the level's column name."""
        spec = next((f for f in self.fidelities if f.name == level), None)
        if spec is None:
            raise ValueError(f"unknown fidelity level {level!r}")
        if spec.column is None:
            return self.measure(index, rng)
        rows = self.pool[index].rows
        col = self.levels[level]
        if self.spec.replicates == "draw":
            if rng is None:
                raise ValueError("replicates: draw needs a random generator")
            block = col[[rows[int(rng.integers(len(rows)))]]]
        else:
            block = col[rows]
        return {spec.column: _mean(block)}

    def _read_prior(self, base: Path | None) -> list[dict[str, Any]]:
        """Earlier measurements as results without ``_id`` (gest-api: data this generator did not suggest)."""
        if not self.spec.prior_csv:
            return []
        path = Path(self.spec.prior_csv)
        if not path.is_absolute() and base is not None and (base / path).is_file():
            path = base / path
        if not path.is_file():
            raise ConfigError(f"prior table {path} does not exist", field="prior_csv")
        with path.open(newline="") as fh:
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(fh)]
        out = []
        for r, row in enumerate(rows):
            point: dict[str, Any] = dict(self.problem.constants)
            for name, v in self.problem.variables.items():
                if name not in row:
                    raise ConfigError(f"prior table {path.name} lacks the variable column {name!r}", field="prior_csv")
                point[name] = row[name] if v.type == "categorical" else as_number(row[name])
            why = self.problem.check_point(point)
            if why is not None:
                raise ConfigError(f"prior table {path.name} row {r + 2}: {why}", field="prior_csv")
            for name in self.problem.outputs:
                point[name] = as_number(row.get(name, ""))
            if self.twin_column is not None:
                twin = as_number(row.get(self.twin_column, ""))
                if twin is None:
                    raise ConfigError(f"prior table {path.name} row {r + 2}: no twin value {self.twin_column!r}",
                                      field="prior_csv")
                point[self.twin_column] = twin
            out.append(point)
        return out

    # ---- measuring and scoring ----------------------------------------------------------------

    def measure(self, index: int, rng: np.random.Generator | None = None) -> dict[str, float | None]:
        """What the table recorded for candidate ``index``: the replicates' mean, or one drawn replicate."""
        rows = self.pool[index].rows
        if self.spec.replicates == "draw":
            if rng is None:
                raise ValueError("replicates: draw needs a random generator")
            block = self.values[[rows[int(rng.integers(len(rows)))]]]
        else:
            block = self.values[rows]
        return {name: _mean(block[:, j]) for j, name in enumerate(self.problem.outputs)}

    def truth(self, index: int) -> dict[str, float | None]:
        """The replicates' mean: what scoring ranks by."""
        block = self.values[self.pool[index].rows]
        return {name: _mean(block[:, j]) for j, name in enumerate(self.problem.outputs)}

    def scores(self) -> np.ndarray:
        """Signed ``rank_by`` objective per candidate (larger is better), -inf where infeasible."""
        s = [self.problem.score(self.truth(i), self.rank_by) for i in range(len(self.pool))]
        return np.array([-math.inf if v is None else v for v in s])

    def top(self) -> tuple[set[int], float]:
        """The candidates that count as 'reached' (the best k, ties included) and the k-th best score."""
        s = self.scores()
        feasible = int(np.isfinite(s).sum())
        if feasible == 0:
            raise ConfigError(f"{self.path.name}: no candidate of the table satisfies the constraints",
                              field="problem.constraints")
        k = self.spec.top_k or max(1, math.ceil(self.spec.top_fraction * len(self.pool)))
        k = min(k, feasible)
        threshold = float(np.sort(s)[::-1][k - 1])
        return {i for i, v in enumerate(s) if v >= threshold}, threshold

    def points(self) -> list[dict[str, Any]]:
        return [c.point for c in self.pool]


def parse_problem(raw: Any, where: str = "") -> Problem:
    """A Problem from YAML data; a bad one is a ConfigError naming the field (``problem.objectives.f``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}problem must be a mapping (variables, objectives, ...)", field="problem")
    try:
        return Problem.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(["problem", *(str(x) for x in e["loc"])])
        raise ConfigError(f"{where}{loc}: {e['msg']}", field=loc) from None


def expected_random(n: int, k: int) -> float:
    """Expected draws without replacement from n candidates until the first of k good ones: (n+1)/(k+1)."""
    return (n + 1) / (k + 1)


def _mean(col: np.ndarray) -> float | None:
    col = col[np.isfinite(col)]
    return float(col.mean()) if len(col) else None


def load_replay(path: str | Path) -> ReplayWorld:
    """A replay world from its YAML (the fields of :class:`ReplaySpec`)."""
    from ppu.config import load_yaml_model

    spec = load_yaml_model(path, ReplaySpec, "replay world", "see ppu/campaign/replay.py for the fields")
    return ReplayWorld(spec, base=Path(path).parent)
