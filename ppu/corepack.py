"""The core pack: what PPU itself brings, for every lab (always loaded with any other pack).

``echo`` (a trivial digital capability for tests, demos and dispatch benchmarks), ``bluesky.plan`` (a
scientist's own plan on an instrument that allows it, see :mod:`ppu.backends.user_plans`), the ``echo``
backend that offers it, ``torch``, the generic served-model backend (its encoder and decoder
come from the capability or the lab file, see :mod:`ppu.digital.torch_backend`), and ``ray``, the
same models on Ray actors (:mod:`ppu.digital.ray_backend`, needs the ``ppu[ray]`` extra).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ppu.backends.base import Backend, TaskRun
from ppu.capabilities import Capability, EchoInput, EchoOutput, PlanInput, PlanOutput
from ppu.conformance import ConformanceCase
from ppu.models import ActionClass
from ppu.packs import Pack


def pack() -> Pack:
    return Pack(
        name="core",
        description="PPU itself: the echo capability and the generic torch model server",
        capabilities=(
            Capability(name="echo", input_model=EchoInput, output_model=EchoOutput, action=ActionClass.repeatable,
                       description="returns y = 2x; for tests, demos and dispatch benchmarks",
                       summary=["x"], example={"x": 1.0}, cost=0.0, duration_s=0.01),
            Capability(name="bluesky.plan", input_model=PlanInput, output_model=PlanOutput, action=ActionClass.once,
                       description="run a Bluesky plan the lab allows on one instrument's devices (pin the backend)",
                       summary=["plan"], example={"plan": "count", "args": {"detectors": ["det"], "num": 1}},
                       cost=1.0, duration_s=600.0),
        ),
        backend_types={"echo": "ppu.backends.echo:EchoBackend", "torch": "ppu.digital.torch_backend:TorchBackend",
                       "ray": "ppu.digital.ray_backend:RayBackend"},
        conformance={"echo": "ppu.corepack:EchoCase", "torch": "ppu.corepack:TorchEchoCase",
                     "ray": "ppu.corepack:RayEchoCase"},
    )


# ---- generic serving of a capability that is not a prediction: torch serves echo ---------------

def encode_echo(inputs: dict[str, Any]) -> list[float]:
    return [float(inputs.get("x", 0.0))]


def decode_echo(mean: float, std: float, model_version: str | None) -> dict[str, Any]:
    return {"y": mean, "payload": ""}


def doubler() -> Any:
    """A one-weight torch model that computes y = 2x (for the conformance case of ``torch``)."""
    import torch

    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(2.0)
    return m


def slow_doubler(delay_s: float = 1.0) -> Any:
    """:func:`doubler` that takes ``delay_s`` per forward pass (fault tests kill it mid-pass)."""
    import torch

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = doubler()

        def forward(self, x: Any) -> Any:
            time.sleep(delay_s)
            return self.inner(x)

    return Slow()


class EchoCase(ConformanceCase):
    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return {"type": "echo", "name": "echo1", "duration_s": 0.1, "time_scale": 100, "fail_when_x": -1.0,
                "batch_size": 8}

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        return [TaskRun(task_id=f"e{i}", attempt=1, capability="echo", inputs={"x": float(i)}) for i in range(3)]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability="echo", inputs={"x": -1.0})


class TorchEchoCase(ConformanceCase):
    """Any torch model serves any capability: here ``echo``, through an encoder and a decoder."""

    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return {"type": "torch", "name": "torch-echo", "batch_size": 4, "max_wait_ms": 5,
                "models": {"echo": {"factory": "ppu.corepack:doubler", "encoder": "ppu.corepack:encode_echo",
                                    "decoder": "ppu.corepack:decode_echo", "version": "1"}}}

    async def good_runs(self, backend: Backend, tmp_path: Path) -> list[TaskRun]:
        return [TaskRun(task_id=f"t{i}", attempt=1, capability="echo", inputs={"x": float(i)}) for i in range(4)]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability="echo", inputs={"x": "not a number"})


class RayEchoCase(TorchEchoCase):
    """The same model on a Ray actor (a local Ray of 2 CPUs when none is running)."""

    requires = ("ray",)

    def config(self, tmp_path: Path, *, slow: bool = False) -> dict[str, Any]:
        return {"type": "ray", "name": "ray-echo", "batch_size": 4, "actors": 1, "local_cpus": 2,
                "models": {"echo": {"factory": "ppu.corepack:doubler", "encoder": "ppu.corepack:encode_echo",
                                    "decoder": "ppu.corepack:decode_echo", "version": "1"}}}
