"""The digital backends pass the same backend contract as the simulated instruments."""

from __future__ import annotations

from pathlib import Path

import torch
from conformance import BackendContract

from ppu.backends.base import Backend, TaskRun
from ppu.backends.registry import build_backend
from ppu.digital.nets import mlp
from ppu.simulators.mof.world import World, candidate_pool

POOL = [c.model_dump(mode="json") for c in candidate_pool(30, seed=1)]


class TestTorchContract(BackendContract):
    def make_backend(self, tmp_path: Path) -> Backend:
        weights = tmp_path / "mlp.pt"
        torch.save(mlp(hidden=16, seed=1).state_dict(), weights)
        return build_backend({
            "type": "torch", "name": "torch1", "batch_size": 4, "max_wait_ms": 5,
            "models": {"predict.co2_uptake": {"factory": "ppu.digital.nets:mlp", "kwargs": {"hidden": 16},
                                              "weights": str(weights), "version": "1"}}})

    async def good_runs(self, backend: Backend) -> list[TaskRun]:
        return [TaskRun(task_id=f"p{i}", attempt=1, capability="predict.co2_uptake", inputs={"candidate": c})
                for i, c in enumerate(POOL[:5])]

    def bad_run(self) -> TaskRun:
        unknown = {"composition": {"Xx": 1.0}, "anneal_temperature_c": 400, "anneal_time_h": 4}
        return TaskRun(task_id="bad", attempt=1, capability="predict.co2_uptake", inputs={"candidate": unknown})


class TestSurrogateTrainerContract(BackendContract):
    def make_backend(self, tmp_path: Path) -> Backend:
        return build_backend({"type": "surrogate_trainer", "name": "trainer1", "registry": str(tmp_path / "models")})

    async def good_runs(self, backend: Backend) -> list[TaskRun]:
        world = World.from_config({"seed": 3})
        cands = candidate_pool(30, seed=1)[:12]  # small: the contract is about routing, not the fit
        values = [world.properties(c).co2_uptake_mmol_g for c in cands]
        inputs = {"target": "co2_uptake", "candidates": POOL[:12], "values": values, "seed": 0}
        return [TaskRun(task_id=f"tr{i}", attempt=1, capability="train.surrogate", inputs=inputs) for i in range(2)]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability="train.surrogate",
                       inputs={"target": "co2_uptake", "candidates": POOL[:3], "values": [1.0], "seed": 0})
