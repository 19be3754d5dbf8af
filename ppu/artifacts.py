"""The run's artifact store: columnar blocks (a task's input rows, a result's output rows) as npz files.

A block is a dict of equal-length 1-d numpy arrays. It is written as an uncompressed npz with
fixed zip timestamps, so the same columns always make the same bytes, and stored under the
sha256 of those bytes (``<root>/<sha[:2]>/<sha>.npz``): content-addressed, written once through a
temporary file and a rename, so a re-sent result stores nothing twice and a reader sees a whole
file or none. The journal keeps only the :class:`~ppu.models.Artifact` (sha256, size, rows,
columns); a client fetches the bytes with a ``get_artifact`` request and checks the sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ppu.errors import NotFound, ValidationFailed
from ppu.models import MAX_BLOCK_COLUMNS, MAX_BLOCK_ROWS, Artifact

DTYPES = frozenset({"float32", "float64", "int32", "int64", "uint8", "bool"})
_SHA = re.compile(r"^[0-9a-f]{64}$")


def check_columns(columns: Mapping[str, Any], field: str = "block") -> int:
    """The rows of a block; ValidationFailed naming the column when it is not one."""
    if not columns:
        raise ValidationFailed("a block needs at least one column", field=field)
    if len(columns) > MAX_BLOCK_COLUMNS:
        raise ValidationFailed(f"{len(columns)} columns, above the limit of {MAX_BLOCK_COLUMNS}", field=field)
    rows = -1
    for name, col in columns.items():
        if not isinstance(col, np.ndarray) or col.ndim != 1:
            raise ValidationFailed(f"column {name!r} is not a 1-d numpy array", field=f"{field}.{name}")
        if col.dtype.name not in DTYPES:
            raise ValidationFailed(f"column {name!r} has dtype {col.dtype.name}", field=f"{field}.{name}",
                                   hint=f"use one of {', '.join(sorted(DTYPES))}")
        if rows < 0:
            rows = len(col)
        elif len(col) != rows:
            raise ValidationFailed(f"column {name!r} has {len(col)} rows, the others {rows}",
                                   field=f"{field}.{name}", hint="every column of a block has the same length")
    if not 1 <= rows <= MAX_BLOCK_ROWS:
        raise ValidationFailed(f"a block has 1 to {MAX_BLOCK_ROWS} rows, not {rows}", field=field)
    return rows


def npz_bytes(columns: Mapping[str, np.ndarray]) -> bytes:
    """The columns as an uncompressed npz; the same columns always give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, col in columns.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(col), allow_pickle=False)
    return buf.getvalue()


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(data: bytes, expected: str) -> None:
    got = sha256(data)
    if got != expected:
        raise ValidationFailed(f"artifact bytes have sha256 {got[:12]}..., expected {expected[:12]}...",
                               field="sha256", hint="the transfer was corrupted: fetch it again")


class ArtifactStore:
    """Content-addressed npz files under ``root`` (usually ``<run_dir>/artifacts``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, sha: str) -> Path:
        if not _SHA.match(sha):
            raise ValidationFailed(f"{sha[:80]!r} is not a sha256", field="sha256", hint="64 lowercase hex digits")
        return self.root / sha[:2] / f"{sha}.npz"

    def put(self, columns: Mapping[str, np.ndarray]) -> Artifact:
        rows = check_columns(columns)
        data = npz_bytes(columns)
        sha = sha256(data)
        path = self._path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return Artifact(rows=rows, columns=list(columns), sha256=sha, bytes=len(data))

    def has(self, sha: str) -> bool:
        return self._path(sha).exists()

    def read_bytes(self, sha: str) -> bytes:
        path = self._path(sha)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no artifact {sha} in {self.root}", field="sha256",
                           hint="the sha256 comes from a task's block or a result's artifact") from None

    def load(self, sha: str) -> dict[str, np.ndarray]:
        data = self.read_bytes(sha)
        verify(data, sha)
        return load_npz(data)
