"""One simulated flow lab: a kinetic world and the register of the fractions its reactor collected.

The reactor realises a fraction (its composition is the world's outcome for the conditions the
coil *really* ran: drift and run-to-run scatter, seeded by the vial's id, so the same id always
gives the same vial); the HPLC looks the vial up to make a chromatogram.

Backends of one lab may run in different processes. They agree through the *sample register*, an
append-only JSON-lines file (one ``write`` per line, O_APPEND); a lookup that misses in memory
re-reads it. An HPLC asked about a vial that is in neither raises :class:`UnknownFractionError`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from ppu.drivers.flowchem.models import FlowRecipe
from ppu.models import Strict
from ppu.simulators.flowchem.world import FlowWorld, FlowWorldConfig


class UnknownFractionError(LookupError):
    """A measurement asked for a vial this lab never collected."""


class CollectorFullError(RuntimeError):
    """No free vial position in the fraction collector."""


class FractionRecord(Strict):
    """A collected fraction as the simulated lab knows it (realised truth, not a measurement)."""

    sample_id: str
    recipe: FlowRecipe
    actual: FlowRecipe = Field(description="the conditions the coil really ran (drift and scatter)")
    concentrations: dict[str, float] = Field(description="species -> mol/L in the vial")
    product_yield: float
    impurity: float
    volume_ml: float
    device: str = "collector"
    slot: str | None = None
    made_at: float = Field(default_factory=time.time)


class FlowLab:
    """World + fraction register, shared by the simulated devices of one lab."""

    _shared: ClassVar[dict[tuple[str, str, str], FlowLab]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, world: FlowWorld, *, registry_path: str | Path | None = None, name: str = "flow-lab",
                 rack_slots: int = 1000):
        self.world = world
        self.name = name
        self.rack_slots = rack_slots
        self.registry_path = Path(registry_path) if registry_path else None
        self._samples: dict[str, FractionRecord] = {}
        self._lock = threading.RLock()
        if self.registry_path:
            self.registry_path.parent.mkdir(parents=True, exist_ok=True)
            self._reload()

    @classmethod
    def shared(cls, name: str, world: FlowWorldConfig | dict[str, Any] | None = None, *,
               registry_path: str | Path | None = None) -> FlowLab:
        """The one lab of this name, world and register in this process (built on first use)."""
        cfg = world if isinstance(world, FlowWorldConfig) else FlowWorldConfig.model_validate(world or {})
        key = (name, cfg.model_dump_json(), str(Path(registry_path).resolve()) if registry_path else "")
        with cls._shared_lock:
            lab = cls._shared.get(key)
            if lab is None:
                lab = cls._shared[key] = cls(FlowWorld(cfg), registry_path=registry_path, name=name)
            return lab

    def _append(self, entry: dict[str, Any]) -> None:
        if not self.registry_path:
            return
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.registry_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def _reload(self) -> None:
        if not self.registry_path or not self.registry_path.exists():
            return
        for line in self.registry_path.read_text().splitlines():
            if line.strip():
                rec = FractionRecord.model_validate(json.loads(line)["fraction"])
                self._samples[rec.sample_id] = rec

    def sample(self, sample_id: str) -> FractionRecord:
        with self._lock:
            rec = self._samples.get(sample_id)
            if rec is None:
                self._reload()
                rec = self._samples.get(sample_id)
            if rec is None:
                raise UnknownFractionError(
                    f"fraction {sample_id!r} is unknown to flow lab {self.name!r}: it was never collected here "
                    "(run a 'react.flow' task first and use the sample_id from its outputs)")
            return rec

    def known_samples(self) -> list[str]:
        with self._lock:
            self._reload()
            return sorted(self._samples)

    def free_slot(self) -> str:
        """The first empty vial position of the fraction collector (raises when it is full)."""
        with self._lock:
            used = {r.slot for r in self._samples.values()}
            for i in range(1, self.rack_slots + 1):
                if f"V{i:04d}" not in used:
                    return f"V{i:04d}"
        raise CollectorFullError(f"the fraction collector of lab {self.name!r} is full ({self.rack_slots} vials): "
                                 "archive the measured vials (a new run_dir) before collecting more")

    def collect(self, sample_id: str, recipe: FlowRecipe, actual: FlowRecipe, volume_ml: float) -> FractionRecord:
        """Record a new vial holding the reactor's outlet for the ``actual`` conditions."""
        out = self.world.outcome(actual)
        with self._lock:
            slot = self.free_slot()
            rec = FractionRecord(sample_id=sample_id, recipe=recipe, actual=actual, concentrations=out.concentrations,
                                 product_yield=out.product_yield, impurity=out.impurity, volume_ml=volume_ml,
                                 slot=slot)
            self._samples[sample_id] = rec
            self._append({"op": "collected", "fraction": rec.model_dump(mode="json")})
            return rec
