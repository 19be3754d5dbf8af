"""A simulated digital backend: ``echo`` returns y = 2x after a (time-scaled) delay.

It is the smallest honest backend: it batches, it takes time, and it can be told to fail a
fraction of its items (seeded), so the core, the transport and the benchmarks can exercise
every path without a model or an instrument.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import ClassVar

from pydantic import Field

from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.models import BackendKind, CapabilityOffer, Result


class EchoConfig(BackendConfig):
    duration_s: float = Field(0.5, ge=0, description="lab seconds per batch")
    time_scale: float = Field(100.0, gt=0, description="lab time runs this many times faster than wall time")
    fail_rate: float = Field(0.0, ge=0, le=1, description="fraction of items that fail (seeded)")
    fail_when_x: float | None = Field(None, description="an item with exactly this x always fails")
    seed: int = 0


class EchoBackend(Backend):
    kind = BackendKind.digital
    Config: ClassVar[type[BackendConfig]] = EchoConfig

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        assert isinstance(config, EchoConfig)
        self.cfg = config
        self._rng = random.Random(config.seed)
        self.batches_seen: list[int] = []

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="echo", fidelity=1.0, duration_s=max(self.cfg.duration_s, 1e-6), cost=0.0)]

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        started = time.time()
        self.batches_seen.append(len(batch))
        if self.cfg.duration_s:
            await asyncio.sleep(self.cfg.duration_s / self.cfg.time_scale)
        out = []
        for run in batch:
            x = float(run.inputs.get("x", 0.0))
            if (self.cfg.fail_when_x is not None and x == self.cfg.fail_when_x) or \
                    self._rng.random() < self.cfg.fail_rate:
                out.append(self.fail(run, f"simulated failure for x={x}", started))
            else:
                out.append(self.ok(run, {"y": 2 * x, "payload": run.inputs.get("payload", "")}, started,
                                   model_name="echo", model_version="1"))
        return out
