"""How a ``predict.yield`` input (a recipe) travels as columns, for screening many recipes as one task.

``encode_recipe`` is the capability's encoder (``Capability.encoder``): one recipe -> features (the
ligand one-hot, then the process parameters scaled to the process box). Its columnar forms, which a
screening client and a digital backend find on it (:class:`ppu.digital.coding.Coding`):

- ``encode_recipe.columns``: many inputs -> the columns of one block: ``ligand`` (its index in
  :data:`LIGANDS`, int64) and one float64 column per process parameter;
- ``encode_recipe.block``: a block's columns -> the feature matrix, every row checked against the
  recipe's own limits (an error names the column and the rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ppu.drivers.flowchem.models import LIGANDS, PROCESS_BOX, FlowRecipe
from ppu.errors import ValidationFailed

PARAMS: tuple[str, ...] = tuple(PROCESS_BOX)
COLUMNS: tuple[str, ...] = ("ligand", *PARAMS)


def encode_recipe(inputs: Mapping[str, Any]) -> list[float]:
    """One ``predict.yield`` input -> features."""
    return [float(v) for v in recipe_features(recipe_columns([inputs]))[0]]


def recipe_columns(inputs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Many ``predict.yield`` inputs as the columns of one block (each recipe validated first)."""
    recipes = [FlowRecipe.model_validate(i["recipe"]) for i in inputs]
    cols: dict[str, np.ndarray] = {"ligand": np.array([LIGANDS.index(r.ligand) for r in recipes], dtype=np.int64)}
    for name in PARAMS:
        cols[name] = np.array([float(getattr(r, name)) for r in recipes], dtype=np.float64)
    return cols


def _rows(bad: np.ndarray) -> str:
    idx = np.flatnonzero(bad)
    return ", ".join(str(i) for i in idx[:10]) + (f" and {len(idx) - 10} more" if len(idx) > 10 else "")


def checked(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A block's columns as arrays, each within the recipe's limits (an error names the column and rows);
    a column it does not know is refused, as the MOF pack's block encoder refuses one."""
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValidationFailed(f"a recipe block needs the columns {list(COLUMNS)}; missing {missing}",
                               field=f"columns.{missing[0]}")
    unknown = sorted(c for c in columns if c not in COLUMNS)  # a misspelt column is not silently left out
    if unknown:
        raise ValidationFailed(f"unknown column(s) {', '.join(unknown[:5])}", field=f"columns.{unknown[0]}",
                               hint=f"a recipe block has exactly the columns {', '.join(COLUMNS)}")
    out: dict[str, np.ndarray] = {}
    lig = np.asarray(columns["ligand"])
    if lig.ndim != 1 or not np.issubdtype(lig.dtype, np.integer):
        raise ValidationFailed("ligand must be a 1-d integer column (an index into the ligand list)",
                               field="columns.ligand")
    bad = (lig < 0) | (lig >= len(LIGANDS))
    if bad.any():
        raise ValidationFailed(f"ligand index out of 0..{len(LIGANDS) - 1} in row(s) {_rows(bad)}",
                               field="columns.ligand")
    out["ligand"] = lig.astype(np.int64)
    for name in PARAMS:
        v = np.asarray(columns[name], dtype=np.float64)
        if v.shape != lig.shape:
            raise ValidationFailed(f"{name} has {v.shape[0] if v.ndim else 0} rows, ligand {len(lig)}",
                                   field=f"columns.{name}")
        info = FlowRecipe.model_fields[name].metadata
        lo = next((float(m.ge) for m in info if getattr(m, "ge", None) is not None), None)
        gt = next((float(m.gt) for m in info if getattr(m, "gt", None) is not None), None)
        hi = next((float(m.le) for m in info if getattr(m, "le", None) is not None), None)
        bad = ~np.isfinite(v)
        if lo is not None:
            bad |= v < lo
        if gt is not None:
            bad |= v <= gt
        if hi is not None:
            bad |= v > hi
        if bad.any():
            raise ValidationFailed(f"{name} outside the recipe's limits in row(s) {_rows(bad)}",
                                   field=f"columns.{name}")
        out[name] = v
    return out


def recipe_features(columns: Mapping[str, Any]) -> np.ndarray:
    """A block's columns -> features: the ligand one-hot, then each parameter scaled to the process box."""
    cols = checked(columns)
    n = len(cols["ligand"])
    x = np.zeros((n, len(LIGANDS) + len(PARAMS)))
    x[np.arange(n), cols["ligand"]] = 1.0
    for k, name in enumerate(PARAMS):
        lo, hi, _ = PROCESS_BOX[name]
        x[:, len(LIGANDS) + k] = (cols[name] - lo) / (hi - lo)
    return x


encode_recipe.columns = recipe_columns  # type: ignore[attr-defined]
encode_recipe.block = recipe_features  # type: ignore[attr-defined]
encode_recipe.feature_names = lambda: [f"ligand={x}" for x in LIGANDS] + list(PARAMS)  # type: ignore[attr-defined]
