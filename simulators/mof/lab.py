"""One simulated lab: a world, a rack, and the register of samples its robot has made.

The robot and the instruments of one lab share a :class:`SimulatedLab`: the robot realises a
sample (its purity scatters around the world's truth, seeded by the sample id, so the same sample
id always gives the same sample), the instruments look the sample up to produce signals.

Backends of one lab may run in different processes (a robot PC, an XRD PC). They agree through
the *sample register*: an append-only JSON-lines file (``registry_path``, under the lab's run
folder) holding every made sample with its recipe and realised properties, and every move.
Lines are written with O_APPEND in one ``write`` call (atomic for lines this short on a local
file system); a lookup that misses in memory re-reads the file. An instrument asked about a sample
id that is in neither raises :class:`UnknownSampleError`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ppu.drivers.mof.capabilities import Candidate
from ppu.drivers.mof.phases import TARGET_PHASE
from ppu.simulators.mof.instruments import seeded_rng
from ppu.simulators.mof.world import World, WorldConfig


class UnknownSampleError(LookupError):
    """A measurement asked for a sample this lab never made."""


class RackFullError(RuntimeError):
    """No free slot for a new sample."""


class SampleRecord(BaseModel):
    """A made sample as the simulated lab knows it (realised truth, not a measurement)."""

    model_config = ConfigDict(extra="forbid")

    sample_id: str
    recipe: Candidate
    success: bool
    mass_mg: float
    purity: float
    phases: dict[str, float]
    co2_uptake_mmol_g: float
    band_gap_ev: float
    langmuir_b_per_bar: float
    device: str = "rack"
    slot: str | None = None
    made_at: float = Field(default_factory=time.time)


class SimulatedLab:
    """World + rack + sample register, shared by the simulated devices of one lab."""

    _shared: ClassVar[dict[tuple[str, str, str], SimulatedLab]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, world: World, *, registry_path: str | Path | None = None, rack_slots: int = 96,
                 seed: int = 0, name: str = "lab"):
        self.world = world
        self.name = name
        self.seed = seed
        self.rack_slots = rack_slots
        self.registry_path = Path(registry_path) if registry_path else None
        self._samples: dict[str, SampleRecord] = {}
        self._lock = threading.RLock()
        if self.registry_path:
            self.registry_path.parent.mkdir(parents=True, exist_ok=True)
            self._reload()

    @classmethod
    def shared(cls, name: str, world: WorldConfig | dict | None = None, *,
               registry_path: str | Path | None = None, seed: int = 0) -> SimulatedLab:
        """The one lab of this name in this process (built on first use)."""
        cfg = world if isinstance(world, WorldConfig) else WorldConfig.model_validate(world or {})
        key = (name, cfg.model_dump_json(), str(Path(registry_path).resolve()) if registry_path else "")
        with cls._shared_lock:
            lab = cls._shared.get(key)
            if lab is None:
                lab = cls(World.from_config(cfg), registry_path=registry_path, seed=seed, name=name)
                cls._shared[key] = lab
            return lab

    # ---- register ---------------------------------------------------------------------------

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
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("op") == "made":
                rec = SampleRecord.model_validate(entry["sample"])
                self._samples[rec.sample_id] = rec
            elif entry.get("op") == "moved" and entry["sample_id"] in self._samples:
                self._samples[entry["sample_id"]] = self._samples[entry["sample_id"]].model_copy(
                    update={"device": entry["device"], "slot": entry.get("slot")})

    def sample(self, sample_id: str) -> SampleRecord:
        with self._lock:
            rec = self._samples.get(sample_id)
            if rec is None:
                self._reload()
                rec = self._samples.get(sample_id)
            if rec is None:
                raise UnknownSampleError(
                    f"sample {sample_id!r} is unknown to simulated lab {self.name!r}: it was never synthesised "
                    "here (run a 'synthesize' task first and use the sample_id from its outputs)")
            return rec

    def known_samples(self) -> list[str]:
        with self._lock:
            self._reload()
            return sorted(self._samples)

    # ---- rack -------------------------------------------------------------------------------

    def rack(self) -> dict[str, str]:
        """Occupied rack slots: slot -> sample id."""
        with self._lock:
            return {r.slot: r.sample_id for r in self._samples.values() if r.device == "rack" and r.slot}

    def _free_slot(self) -> str:
        used = set(self.rack())
        for i in range(1, self.rack_slots + 1):
            slot = f"R{i:03d}"
            if slot not in used:
                return slot
        raise RackFullError(f"the rack of lab {self.name!r} is full ({self.rack_slots} slots)")

    # ---- physics ----------------------------------------------------------------------------

    def realise(self, sample_id: str, recipe: Candidate, *, success: bool, mass_mg: float) -> SampleRecord:
        """Make a sample: its purity scatters around the truth, seeded by the sample id."""
        truth = self.world.properties(recipe)
        rng = seeded_rng("realise", self.seed, sample_id)
        purity = float(np.clip(truth.purity + rng.normal(0, 0.03), 0.0, 1.0)) if success else 0.0
        rest = 1.0 - truth.purity
        phases = {TARGET_PHASE: purity}
        for p, f in truth.phases.items():
            if p != TARGET_PHASE:
                phases[p] = (1.0 - purity) * (f / rest if rest > 0 else 0.5)
        scale = (0.1 + 0.9 * purity) / (0.1 + 0.9 * truth.purity)
        with self._lock:
            slot = self._free_slot() if success else None
            rec = SampleRecord(sample_id=sample_id, recipe=recipe, success=success, mass_mg=mass_mg, purity=purity,
                               phases=phases, co2_uptake_mmol_g=truth.co2_uptake_mmol_g * scale,
                               band_gap_ev=truth.band_gap_ev, langmuir_b_per_bar=truth.langmuir_b_per_bar,
                               device="rack" if success else "waste", slot=slot)
            if success:
                self._samples[sample_id] = rec
                self._append({"op": "made", "sample": rec.model_dump(mode="json")})
            return rec

    def move(self, sample_id: str, device: str, slot: str | None = None) -> SampleRecord:
        with self._lock:
            rec = self.sample(sample_id)
            if device == "rack" and slot is None:  # home: back to its own slot when that is free
                occupied = self.rack()
                slot = rec.slot if rec.slot and occupied.get(rec.slot, sample_id) == sample_id else self._free_slot()
            elif slot is None:
                slot = rec.slot  # on an instrument the record keeps its home slot
            rec = rec.model_copy(update={"device": device, "slot": slot})
            self._samples[sample_id] = rec
            self._append({"op": "moved", "sample_id": sample_id, "device": device, "slot": slot})
            return rec
