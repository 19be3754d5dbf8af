"""How a capability's inputs become model features, and a model's (mean, std) its outputs.

A :class:`Coding` is shared by every digital backend type (``torch``, ``ray``). It is built from
the encoder and decoder names (the capability's, or a lab file's override); their vectorised and
columnar forms are attributes of those functions: ``encode.batch`` (many inputs -> one feature
matrix), ``encode.block`` (a block's columns -> one feature matrix), ``encode.columns`` (many
inputs -> a block's columns), ``decode.block`` (mean and std arrays -> output columns). Without
them rows are encoded one by one and blocks are refused. Each form is row-wise: a row's features
depend on that row alone, as the row encoder's do, so a batch may be split and a block encoded
part by part (the torch backend encodes each part on the model instance that runs it).

:meth:`Coding.encode_rows` is the serving path's encoder for a forward batch of single-row tasks:
one call of the vectorised form for the whole batch. When that call fails, the batch is halved
until the failing rows are found (a few vectorised calls, not one call per row), and a failing
row gets an error naming the field (the capability's input model's, else the row encoder's); its
batch-mates are encoded as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppu import capabilities as caps
from ppu.errors import BackendError, PPUError, ValidationFailed
from ppu.packs import resolve


def _rows(encode: Callable[[dict[str, Any]], list[float]]) -> Callable[[list[dict[str, Any]]], np.ndarray]:
    def encode_batch(inputs: list[dict[str, Any]]) -> np.ndarray:
        return np.asarray([encode(i) for i in inputs], dtype=np.float64)
    return encode_batch


def _mean_std(mean: float, std: float, version: str | None) -> dict[str, Any]:
    return {"mean": mean, "std": std, "model_version": version}


def _mean_std_block(mean: np.ndarray, std: np.ndarray, version: str | None) -> dict[str, np.ndarray]:
    return {"mean": mean, "std": std}


@dataclass(frozen=True)
class Coding:
    """A capability's encoder and decoder with their vectorised and columnar forms."""

    capability: str
    encode: Callable[[dict[str, Any]], list[float]]
    encode_batch: Callable[[list[dict[str, Any]]], np.ndarray]
    block: Callable[[dict[str, np.ndarray]], np.ndarray] | None
    columns: Callable[[list[dict[str, Any]]], dict[str, np.ndarray]] | None
    decode: Callable[[float, float, str | None], dict[str, Any]]
    decode_block: Callable[[np.ndarray, np.ndarray, str | None], dict[str, np.ndarray]]
    features: str | None
    feature_names: list[str] | None
    example: dict[str, Any] | None

    @classmethod
    def of(cls, capability: str, encoder: str | None = None, decoder: str | None = None) -> Coding:
        cap = caps.get(capability)
        enc = resolve(encoder or cap.encoder or "", "encoder")
        dec_name = decoder or cap.decoder
        dec = resolve(dec_name, "decoder") if dec_name else _mean_std
        names = getattr(enc, "feature_names", None)
        return cls(capability=capability, encode=enc, encode_batch=getattr(enc, "batch", None) or _rows(enc),
                   block=getattr(enc, "block", None), columns=getattr(enc, "columns", None), decode=dec,
                   decode_block=getattr(dec, "block", None) or _mean_std_block,
                   features=getattr(enc, "version", None), feature_names=names() if callable(names) else None,
                   example=cap.example)

    def _matrix(self, inputs: list[dict[str, Any]]) -> np.ndarray:
        x = np.asarray(self.encode_batch(inputs), dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != len(inputs):
            raise BackendError(f"the encoder of {self.capability} gave shape {x.shape} for {len(inputs)} inputs")
        return x

    def encode_rows(self, inputs: list[dict[str, Any]]) -> tuple[np.ndarray, list[int], dict[int, Exception]]:
        """(feature matrix of the rows that encode, their indices in ``inputs``, each other row's error).

        Vectorised over the whole list; a part whose vectorised call fails is halved until its bad
        rows are found, and a single row is judged by the row encoder (its error names the field)."""
        n = len(inputs)
        try:
            return self._matrix(inputs), list(range(n)), {}
        except Exception:
            if n == 0:
                raise
        parts: list[tuple[int, np.ndarray]] = []
        errors: dict[int, Exception] = {}
        todo = [(0, n // 2), (n // 2, n)]
        while todo:
            lo, hi = todo.pop()
            if hi - lo == 1:
                try:
                    parts.append((lo, np.asarray(self.encode(inputs[lo]), dtype=np.float64)[None, :]))
                except Exception as exc:
                    errors[lo] = self._named(inputs[lo], exc)
                continue
            if hi > lo:
                try:
                    parts.append((lo, self._matrix(inputs[lo:hi])))
                except Exception:
                    mid = (lo + hi) // 2
                    todo += [(lo, mid), (mid, hi)]
        parts.sort(key=lambda p: p[0])
        good = [i for lo, x in parts for i in range(lo, lo + len(x))]
        width = parts[0][1].shape[1] if parts else 0
        return (np.concatenate([x for _, x in parts]) if parts else np.empty((0, width))), good, errors

    def _named(self, inputs: dict[str, Any], exc: Exception) -> Exception:
        """A row's error as its capability's input model words it (naming the field), when that model
        refuses the row too (inputs that did not pass the door: a backend called directly)."""
        try:
            caps.validate_inputs(self.capability, inputs)
        except ValidationFailed as refused:
            return refused
        except PPUError:  # a capability the registry does not know: the encoder's own words
            pass
        return exc

    def encode_many(self, inputs: list[dict[str, Any]]) -> list[np.ndarray | Exception]:
        """One feature row or one error per input (see :meth:`encode_rows`)."""
        x, good, errors = self.encode_rows(inputs)
        out: dict[int, np.ndarray | Exception] = {**errors, **{i: x[j] for j, i in enumerate(good)}}
        return [out[i] for i in range(len(inputs))]

    def encode_block(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        if self.block is None:
            raise BackendError(f"the encoder of {self.capability} has no columnar form (encode.block)",
                               hint="give the encoder function a .block attribute: columns -> feature matrix")
        x = np.asarray(self.block(columns), dtype=np.float64)
        if x.ndim != 2:
            raise BackendError(f"the columnar encoder of {self.capability} returned shape {x.shape}, not (rows, F)")
        return x


async def block_error(coding: Coding, columns: dict[str, np.ndarray], part_error: object) -> object:
    """Why a block does not encode, as the encoder words it for the WHOLE block, so that the rows it
    names count from the block's first row; a backend that encodes a block part by part calls this
    only once a part was refused (``part_error``, what that part's encoder said, is the fallback)."""
    try:
        await asyncio.to_thread(coding.encode_block, columns)
    except Exception as exc:
        return exc
    return part_error


def block_outcome(coding: Coding, mean: np.ndarray, std: np.ndarray,
                  version: str | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A block's output columns and the Result's summary outputs (rows, bad rows, model version)."""
    bad = ~(np.isfinite(mean) & np.isfinite(std) & (std >= 0))
    cols = {k: np.asarray(v) for k, v in coding.decode_block(mean, std, version).items()}
    return cols, {"rows": len(mean), "columns": list(cols), "non_finite_rows": int(bad.sum()),
                  "model_version": version}
