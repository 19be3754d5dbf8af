"""A model registry on the filesystem: one folder per version, written once, never changed.

Layout (``root`` is usually ``<run_dir>/models``)::

    <root>/<target>/v0001/model.pt       state_dict (torch.save), loaded with weights_only=True
                         meta.json      factory + kwargs that rebuild the module, sha256, featuriser
                         metrics.json   what training measured (e.g. leave-one-out RMSE, coverage)
                         data.json      the exact data the version saw (candidates, values, seed)

A version is written into a hidden temporary folder and renamed into place, so a reader sees
either no version or a complete one; two trainers racing for the same number both succeed, the
second taking the next number. Servers poll :meth:`ModelRegistry.latest` between batches (a
directory listing), which works across processes and hosts that share the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppu.errors import ConfigError

_VERSION_RE = re.compile(r"^v(\d{4,})$")
WEIGHTS_FILE = "model.pt"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    target: str
    number: int
    path: Path

    @property
    def version(self) -> str:
        return f"v{self.number:04d}"

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    def meta(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "meta.json").read_text()))

    def metrics(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "metrics.json").read_text()))

    def data(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "data.json").read_text()))


class ModelRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _target_dir(self, target: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", target) or target.startswith("."):
            raise ConfigError(f"model target {target!r} is not a safe folder name", field="target",
                              hint="use letters, digits, '_', '-', '.'")
        return self.root / target

    def versions(self, target: str) -> list[ModelVersion]:
        d = self._target_dir(target)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        out = [ModelVersion(target, int(m.group(1)), d / n) for n in names if (m := _VERSION_RE.match(n))]
        return sorted(out, key=lambda v: v.number)

    def latest(self, target: str) -> ModelVersion | None:
        vs = self.versions(target)
        return vs[-1] if vs else None

    def get(self, target: str, version: str) -> ModelVersion:
        for v in self.versions(target):
            if v.version == version:
                return v
        raise ConfigError(f"no version {version} of {target} in {self.root}", field="version")

    def publish(self, target: str, *, state_dict: dict[str, Any], factory: str, kwargs: dict[str, Any],
                name: str, metrics: dict[str, Any], data: dict[str, Any],
                extra_meta: dict[str, Any] | None = None) -> ModelVersion:
        """Write a new version atomically and return it."""
        d = self._target_dir(target)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            torch.save(state_dict, tmp / WEIGHTS_FILE)
            meta = {"name": name, "target": target, "factory": factory, "kwargs": kwargs,
                    "weights": WEIGHTS_FILE, "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
                    "created_at": time.time(), **(extra_meta or {})}
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
            (tmp / "data.json").write_text(json.dumps(data))
            latest = self.latest(target)
            number = latest.number + 1 if latest else 1
            while True:
                meta["version"] = f"v{number:04d}"
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
                try:
                    os.rename(tmp, d / f"v{number:04d}")  # atomic; fails if another writer took it
                    return ModelVersion(target, number, d / f"v{number:04d}")
                except OSError:
                    if not (d / f"v{number:04d}").exists():
                        raise
                    number += 1
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
