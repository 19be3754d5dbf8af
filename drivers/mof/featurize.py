"""Candidate -> feature vector, in one place for every digital model (surrogates, served nets).

A feature vector is: the fraction of each element of a fixed vocabulary (normalised to sum to 1),
then composition descriptors (fraction-weighted mean and standard deviation of Pauling
electronegativity and of atomic radius, and the number of elements present), then the process
(anneal temperature and log anneal time). Every column is scaled to lie in about [0, 1] over
lab-realistic ranges, so models see comparable scales; values outside those ranges are kept,
not clipped (a model should see that a point is unusual).

The vocabulary and the column order are part of a trained model's identity: a model registry
version stores :data:`FEATURIZER_VERSION` and :func:`feature_names`, and a server refuses a
model trained on another layout. Extending the table means a new version string.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ppu.drivers.mof.capabilities import Candidate
from ppu.errors import ValidationFailed

FEATURIZER_VERSION = "comp-v1"

# symbol: (Pauling electronegativity, empirical atomic radius in pm (Slater 1964)).
# Small and embedded on purpose: no pymatgen/mendeleev at import time.
ELEMENTS: dict[str, tuple[float, float]] = {
    "Li": (0.98, 145), "Na": (0.93, 180), "K": (0.82, 220),
    "Mg": (1.31, 150), "Ca": (1.00, 180), "Sr": (0.95, 200), "Ba": (0.89, 215),
    "Al": (1.61, 125), "Ga": (1.81, 130), "In": (1.78, 155), "Sn": (1.96, 145),
    "Ti": (1.54, 140), "Zr": (1.33, 155), "V": (1.63, 135), "Cr": (1.66, 140),
    "Mn": (1.55, 140), "Fe": (1.83, 140), "Co": (1.88, 135), "Ni": (1.91, 135),
    "Cu": (1.90, 135), "Zn": (1.65, 135), "Y": (1.22, 180), "La": (1.10, 195), "Ce": (1.12, 185),
}
VOCABULARY: tuple[str, ...] = tuple(ELEMENTS)

# (offset, scale) that map a descriptor's lab-realistic range onto about [0, 1]
_EN = (0.8, 1.2)
_EN_STD = (0.0, 0.6)
_RADIUS = (120.0, 100.0)
_RADIUS_STD = (0.0, 50.0)
_T_MAX_C = 1500.0
_T_LOG_MAX = math.log1p(1000.0)
_DESCRIPTORS = ("en_mean", "en_std", "radius_mean", "radius_std", "n_elements")
_PROCESS = ("anneal_temperature", "log_anneal_time")


def feature_names() -> list[str]:
    return [f"x_{el}" for el in VOCABULARY] + list(_DESCRIPTORS) + list(_PROCESS)


N_FEATURES = len(VOCABULARY) + len(_DESCRIPTORS) + len(_PROCESS)


def _as_candidate(c: Candidate | Mapping[str, Any]) -> Candidate:
    return c if isinstance(c, Candidate) else Candidate.model_validate(c)


def featurize_one(candidate: Candidate | Mapping[str, Any]) -> list[float]:
    """One candidate as a list of :data:`N_FEATURES` floats; raises ValidationFailed on an unknown element."""
    c = _as_candidate(candidate)
    unknown = sorted(el for el in c.composition if el not in ELEMENTS)
    if unknown:
        raise ValidationFailed(
            f"element(s) {', '.join(unknown)} not in the featuriser vocabulary {FEATURIZER_VERSION}",
            field="inputs.candidate.composition",
            hint=f"known elements: {', '.join(VOCABULARY)}; a bigger table needs a new FEATURIZER_VERSION",
        )
    total = sum(c.composition.values())
    if total <= 0:
        raise ValidationFailed("composition fractions are all zero", field="inputs.candidate.composition")
    frac = {el: x / total for el, x in c.composition.items() if x > 0}
    row = [frac.get(el, 0.0) for el in VOCABULARY]
    en = sum(f * ELEMENTS[el][0] for el, f in frac.items())
    rad = sum(f * ELEMENTS[el][1] for el, f in frac.items())
    en_std = math.sqrt(max(0.0, sum(f * (ELEMENTS[el][0] - en) ** 2 for el, f in frac.items())))
    rad_std = math.sqrt(max(0.0, sum(f * (ELEMENTS[el][1] - rad) ** 2 for el, f in frac.items())))
    row += [
        (en - _EN[0]) / _EN[1], (en_std - _EN_STD[0]) / _EN_STD[1],
        (rad - _RADIUS[0]) / _RADIUS[1], (rad_std - _RADIUS_STD[0]) / _RADIUS_STD[1],
        (len(frac) - 1) / 4.0,
        c.anneal_temperature_c / _T_MAX_C, math.log1p(c.anneal_time_h) / _T_LOG_MAX,
    ]
    return row


def featurize(candidates: Iterable[Candidate | Mapping[str, Any]], *, dtype: torch.dtype = torch.float64,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Candidates as an ``(n, N_FEATURES)`` tensor; raises on the first bad candidate."""
    rows = [featurize_one(c) for c in candidates]
    if not rows:
        return torch.empty(0, N_FEATURES, dtype=dtype, device=device)
    return torch.tensor(rows, dtype=dtype, device=device)


def layout() -> dict[str, Any]:
    """What a stored model records about the features it was trained on."""
    return {"featurizer": FEATURIZER_VERSION, "n_features": N_FEATURES}


def encode_prediction_input(inputs: Mapping[str, Any]) -> list[float]:
    """The encoder of ``predict.*`` for served models: the candidate's feature row."""
    return featurize_one(inputs["candidate"])


encode_prediction_input.version = FEATURIZER_VERSION  # type: ignore[attr-defined]


# ---- the columnar (vectorised) encoder: a block of candidates as columns, features as one matrix ----

COMPOSITION_PREFIX = "composition."
PROCESS_COLUMNS = ("anneal_temperature_c", "anneal_time_h")
_INDEX = {el: j for j, el in enumerate(VOCABULARY)}
_EN_ARR = np.array([ELEMENTS[el][0] for el in VOCABULARY])
_RAD_ARR = np.array([ELEMENTS[el][1] for el in VOCABULARY])


def column_names() -> list[str]:
    """The input columns of a block of candidates: one fraction per element, then the process."""
    return [COMPOSITION_PREFIX + el for el in VOCABULARY] + list(PROCESS_COLUMNS)


def candidate_columns(candidates: Sequence[Candidate | Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Candidates (already validated at the door) as float64 columns; unknown elements are refused."""
    n = len(candidates)
    comp = np.zeros((n, len(VOCABULARY)))
    temp = np.empty(n)
    hours = np.empty(n)
    for i, c in enumerate(candidates):
        if isinstance(c, Candidate):
            composition, t, h = c.composition, c.anneal_temperature_c, c.anneal_time_h
        else:
            composition = c["composition"]
            t, h = c.get("anneal_temperature_c", 400.0), c.get("anneal_time_h", 4.0)
        for el, x in composition.items():
            j = _INDEX.get(el)
            if j is None:
                raise ValidationFailed(
                    f"element {el} of candidate {i} is not in the featuriser vocabulary {FEATURIZER_VERSION}",
                    field=f"inputs.candidate.composition.{el}", hint=f"known elements: {', '.join(VOCABULARY)}")
            comp[i, j] = x
        temp[i], hours[i] = t, h
    cols = {COMPOSITION_PREFIX + el: comp[:, j] for j, el in enumerate(VOCABULARY)}
    cols["anneal_temperature_c"], cols["anneal_time_h"] = temp, hours
    return cols


def _bad_rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    return ", ".join(str(int(r)) for r in rows[:5]) + (f" (and {len(rows) - 5} more)" if len(rows) > 5 else "")


def features_from_columns(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """A block's columns as an ``(n, N_FEATURES)`` float64 matrix, in :func:`feature_names` order.

    The same numbers as :func:`featurize_one` row by row, computed with whole-column arithmetic.
    Element columns that are absent are zero; an unknown column, a missing process column, a
    negative or non-finite value, or a row whose fractions are all zero is refused, naming it."""
    unknown = sorted(k for k in columns if k not in _KNOWN_COLUMNS)
    if unknown:
        raise ValidationFailed(f"unknown column(s) {', '.join(unknown[:5])}", field=f"columns.{unknown[0]}",
                               hint=f"columns are {COMPOSITION_PREFIX}<element> ({', '.join(VOCABULARY)}) and "
                               f"{', '.join(PROCESS_COLUMNS)}")
    for name in PROCESS_COLUMNS:
        if name not in columns:
            raise ValidationFailed(f"the block has no column {name}", field=f"columns.{name}")
    n = len(columns[PROCESS_COLUMNS[0]])
    comp = np.zeros((n, len(VOCABULARY)))
    for j, el in enumerate(VOCABULARY):
        col = columns.get(COMPOSITION_PREFIX + el)
        if col is not None:
            comp[:, j] = col
    temp = np.asarray(columns["anneal_temperature_c"], dtype=np.float64)
    hours = np.asarray(columns["anneal_time_h"], dtype=np.float64)
    for name, values in (("composition", comp), ("anneal_temperature_c", temp), ("anneal_time_h", hours)):
        bad = ~np.isfinite(values) | ((values < 0) if name != "anneal_temperature_c" else (values < -273.15))
        if bad.ndim == 2:
            bad = bad.any(axis=1)
        if bad.any():
            raise ValidationFailed(f"{name}: negative or non-finite values in row(s) {_bad_rows(bad)}",
                                   field=f"columns.{name}")
    total = comp.sum(axis=1)
    if (total <= 0).any():
        raise ValidationFailed(f"composition fractions are all zero in row(s) {_bad_rows(total <= 0)}",
                               field="columns.composition")
    frac = comp / total[:, None]
    # A candidate has a few elements of the vocabulary: the descriptors are sums over its nonzero
    # fractions only (bincount over (row, element) pairs), not over every column of every row.
    rows, els = np.nonzero(frac)
    f = frac[rows, els]
    e_el, r_el = _EN_ARR[els], _RAD_ARR[els]
    en = np.bincount(rows, weights=f * e_el, minlength=n)
    rad = np.bincount(rows, weights=f * r_el, minlength=n)
    en_std = np.sqrt(np.maximum(0.0, np.bincount(rows, weights=f * (e_el - en[rows]) ** 2, minlength=n)))
    rad_std = np.sqrt(np.maximum(0.0, np.bincount(rows, weights=f * (r_el - rad[rows]) ** 2, minlength=n)))
    n_present = np.bincount(rows, minlength=n)
    out = np.empty((n, N_FEATURES))
    v = len(VOCABULARY)
    out[:, :v] = frac
    out[:, v] = (en - _EN[0]) / _EN[1]
    out[:, v + 1] = (en_std - _EN_STD[0]) / _EN_STD[1]
    out[:, v + 2] = (rad - _RADIUS[0]) / _RADIUS[1]
    out[:, v + 3] = (rad_std - _RADIUS_STD[0]) / _RADIUS_STD[1]
    out[:, v + 4] = (n_present - 1) / 4.0
    out[:, v + 5] = temp / _T_MAX_C
    out[:, v + 6] = np.log1p(hours) / _T_LOG_MAX
    return out


_KNOWN_COLUMNS = frozenset(column_names())


def encode_prediction_batch(inputs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Many ``predict.*`` inputs at once (validated at the door): one feature matrix."""
    return features_from_columns(candidate_columns([i["candidate"] for i in inputs]))


def prediction_columns(inputs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Many ``predict.*`` inputs as the columns of one block (what a screening client sends)."""
    return candidate_columns([i["candidate"] for i in inputs])


# what a server finds on the encoder (ppu.digital.torch_backend.Coding): vectorised and columnar forms
encode_prediction_input.batch = encode_prediction_batch  # type: ignore[attr-defined]
encode_prediction_input.block = features_from_columns  # type: ignore[attr-defined]
encode_prediction_input.columns = prediction_columns  # type: ignore[attr-defined]
encode_prediction_input.feature_names = feature_names  # type: ignore[attr-defined]


def decode_prediction(mean: float, std: float, model_version: str | None) -> dict[str, Any]:
    """The decoder of ``predict.*``: a model's (mean, std) as a Prediction."""
    return {"mean": mean, "std": std, "model_version": model_version}
