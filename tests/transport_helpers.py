"""Shared pieces of the transport tests: a lab config on loopback, a `once` test backend, a runner."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ppu.backends.base import ProgressFn, TaskRun
from ppu.backends.echo import EchoBackend, EchoConfig
from ppu.config import LabConfig, parse_lab
from ppu.models import BackendKind, CapabilityOffer, Result

T = TypeVar("T")
HB = 0.1


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lab_config(tmp: Path, backends: list[dict[str, Any]] | None = None, **extra: Any) -> LabConfig:
    raw: dict[str, Any] = {
        "name": "t", "run_dir": str(tmp), "store": f"sqlite:///{tmp / 'ppu.sqlite'}",
        "orchestrator": {"heartbeat_s": HB, "missed_heartbeats": 3, "backoff_base_s": 0.0,
                         "restart_grace_s": 1.0},
        "backends": backends if backends is not None else [
            {"type": "echo", "name": "echo-1", "duration_s": 0.0}],
    }
    raw.update(extra)
    return parse_lab(raw)


class SynthConfig(EchoConfig):
    log_path: str = ""  # every run appends "task_id attempt" here: how we count physical actions


class SynthBackend(EchoBackend):
    """A test-only physical-ish backend offering `synthesize` (a `once` capability) and `echo`."""

    Config = SynthConfig
    kind = BackendKind.physical

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="synthesize", duration_s=1.0),
                CapabilityOffer(name="echo", duration_s=1.0)]

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        cfg = self.config
        assert isinstance(cfg, SynthConfig)
        started = time.time()
        for r in batch:
            if cfg.log_path:
                with open(cfg.log_path, "a") as f:
                    f.write(f"{r.task_id} {r.attempt} {os.getpid()}\n")
                    f.flush()
                    os.fsync(f.fileno())
        await asyncio.sleep(cfg.duration_s / cfg.time_scale)
        out = []
        for r in batch:
            if r.capability == "synthesize":
                out.append(self.ok(r, {"sample_id": f"s-{r.task_id}", "mass_mg": 10.0}, started))
            else:
                out.append(self.ok(r, {"y": 2 * float(r.inputs.get("x", 0)), "payload": ""}, started))
        return out


SYNTH = "transport_helpers:SynthBackend"  # tests/ is on sys.path (and PYTHONPATH of subprocesses)


async def until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
