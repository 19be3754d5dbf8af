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
