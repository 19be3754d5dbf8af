"""A user's own instrument in an afternoon (issue 14, item 5), done as docs/packs.md says.

The test writes a small pack into a temporary folder (pyproject with a ``ppu.packs`` entry point,
an Ophyd device with a simulated twin, a Bluesky plan, a capability and a backend type), pip
installs it into a target folder on PYTHONPATH (the venv stays clean), starts an orchestrator and
a worker as separate processes, runs ``ppu submit`` on its capability from the CLI and checks the
result, the Bluesky documents and that ``ppu packs`` lists it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from transport_helpers import free_port

from ppu.models import TaskState
from ppu.transport.client import PPUClient

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "ppu-pressure-pack"
version = "0.1.0"
dependencies = []  # ppu, ophyd and bluesky come with the lab's PPU install

[project.entry-points."ppu.packs"]
pressure = "pressure_pack.pack:pack"

[tool.setuptools]
packages = ["pressure_pack"]
"""

DEVICES = '''\
"""A pressure controller: one device class, two builds (EPICS PVs or a simulated twin)."""

from __future__ import annotations

import random
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal


class EpicsPressureController(Device):
    setpoint = Cpt(EpicsSignal, "Setpoint", kind="normal")
    pressure = Cpt(EpicsSignalRO, "Pressure_RBV", kind="hinted")


class SimPressureController(Device):
    """The twin: the read-back follows the setpoint with a seeded leak and noise (its little world)."""

    setpoint = Cpt(Signal, value=0.0, kind="normal")
    pressure = Cpt(Signal, value=0.0, kind="hinted")

    def __init__(self, *args: Any, seed: int = 0, leak: float = 0.02, **kw: Any):
        super().__init__(*args, **kw)
        self._rng = random.Random(seed)
        self.leak = leak

    def trigger(self) -> Any:
        true = self.setpoint.get() * (1 - self.leak)
        self.pressure.put(true + self._rng.gauss(0, 0.001))
        return super().trigger()


def pressure_controller(name: str, *, simulated: bool, prefix: str = "", seed: int = 0) -> Device:
    return SimPressureController(name=name, seed=seed) if simulated else EpicsPressureController(prefix, name=name)


def pressure_scan(dev: Device, start_bar: float, stop_bar: float, points: int,
                  md: dict[str, Any] | None = None) -> MsgGenerator[Any]:
    """Step the setpoint from start to stop and read the pressure at each step (one run)."""
    @bpp.run_decorator(md={"plan_name": "pressure_scan", **(md or {})})
    def inner() -> MsgGenerator[Any]:
        for i in range(points):
            value = start_bar + (stop_bar - start_bar) * i / max(points - 1, 1)
            yield from bps.mv(dev.setpoint, value)
            yield from bps.checkpoint()
            yield from bps.trigger_and_read([dev])

    return (yield from inner())
'''

PACK = '''\
"""The pressure pack's registration module (the one its ppu.packs entry point names)."""

from __future__ import annotations

from typing import Any

from ophyd import Device
from pydantic import Field

from ppu.backends.base import TaskRun
from ppu.backends.documents import Document
from ppu.backends.physical import PhysicalBackend, PlanFactory, events_of
from ppu.capabilities import Capability
from ppu.models import ActionClass, Limit, Strict
from ppu.packs import Pack
from pressure_pack.devices import pressure_controller, pressure_scan


class ScanInput(Strict):
    start_bar: float = Field(0.1, ge=0)
    stop_bar: float = Field(1.0, ge=0)
    points: int = Field(5, ge=2, le=100)


class ScanOutput(Strict):
    leak_fraction: float
    pressures_bar: list[float]


class PressureBackend(PhysicalBackend):
    capability = "user.pressure_scan"

    def build_devices(self) -> dict[str, Device]:
        return {"pc": pressure_controller("pc", simulated=self.cfg.simulated, prefix=self.cfg.epics_prefix,
                                          seed=self.cfg.seed)}

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        return lambda: pressure_scan(self.devices["pc"], inputs["start_bar"], inputs["stop_bar"],
                                     inputs["points"], md)

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        evs = events_of(docs, "pressure_scan")
        pairs = [(e["pc_setpoint"], e["pc_pressure"]) for e in evs]
        leak = sum(1 - p / s for s, p in pairs if s > 0) / max(sum(1 for s, _ in pairs if s > 0), 1)
        return {"leak_fraction": leak, "pressures_bar": [p for _, p in pairs]}


def pack() -> Pack:
    return Pack(
        name="pressure",
        description="a pressure controller and its scan",
        capabilities=(Capability(
            name="user.pressure_scan", input_model=ScanInput, output_model=ScanOutput, action=ActionClass.once,
            description="step a pressure controller and read it back", summary=["start_bar", "stop_bar"],
            limits={"stop_bar": Limit(min=0, max=5, unit="bar")}, cost=1.0, duration_s=10.0,
            example={"start_bar": 0.1, "stop_bar": 1.0, "points": 5}),),
        backend_types={"pressure_controller": "pressure_pack.pack:PressureBackend"},
        plans={"pressure_scan": "pressure_pack.devices:pressure_scan"},
    )
'''


def _install(tmp: Path) -> Path:
    src = tmp / "src"
    (src / "pressure_pack").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "pressure_pack" / "__init__.py").write_text("")
    (src / "pressure_pack" / "devices.py").write_text(DEVICES)
    (src / "pressure_pack" / "pack.py").write_text(PACK)
    target = tmp / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--disable-pip-version-check", "--target", str(target), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return target


def _env(site: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))


def _ppu(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ppu.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _install(tmp_path_factory.mktemp("pack"))


@pytest.fixture
def lab(tmp_path: Path, site: Path) -> tuple[Path, dict[str, str], str]:
    address = f"tcp://127.0.0.1:{free_port()}"
    raw = {"name": "pressure-lab", "run_dir": str(tmp_path / "run"), "packs": ["pressure"],
           "orchestrator": {"bind": address, "heartbeat_s": 0.2},
           "backends": [{"type": "pressure_controller", "name": "pc1", "simulated": True, "seed": 3,
                         "run_dir": str(tmp_path / "run")}]}
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, _env(site), address


def test_a_users_pack_runs_from_the_cli(lab: tuple[Path, dict[str, str], str]) -> None:
    path, env, address = lab
    listed = _ppu(env, "packs", "-c", str(path))
    assert listed.returncode == 0, listed.stderr
    assert "pressure" in listed.stdout and "user.pressure_scan" in listed.stdout
    assert "pressure_controller" in listed.stdout

    procs = [subprocess.Popen([sys.executable, "-m", "ppu.cli", *args, "-c", str(path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for args in (["orchestrator"], ["worker"])]
    client = PPUClient(address, timeout=10)
    try:
        for _ in range(300):  # bounded: both processes up and the backend registered
            try:
                st = client.status()
            except Exception:
                st = None
            if st and any(b.get("name") == "pc1" for b in st.get("backends", [])):
                break
            assert all(p.poll() is None for p in procs), [p.stdout.read() for p in procs if p.stdout]
            time.sleep(0.1)
        else:
            pytest.fail("the worker never registered pc1")

        sub = _ppu(env, "submit", "user.pressure_scan", "--input", '{"start_bar": 0.5, "stop_bar": 2.0, "points": 4}',
                   "-c", str(path))
        assert sub.returncode == 0, sub.stdout + sub.stderr
        task_id = sub.stdout.strip().splitlines()[-1]
        [task] = client.wait([task_id], timeout=60)
        assert task.state is TaskState.succeeded, task
        res = client.result(task_id)
        assert res is not None and res.provenance is not None
        assert len(res.outputs["pressures_bar"]) == 4
        assert abs(res.outputs["leak_fraction"] - 0.02) < 0.01  # the twin's leak, found from the read-backs
        assert res.provenance.run_uids, "a real Bluesky run made the result"

        bad = _ppu(env, "submit", "user.pressure_scan", "--input", '{"stop_bar": 9.0}', "-c", str(path))
        assert bad.returncode != 0 and "stop_bar" in bad.stdout + bad.stderr  # the pack's safe limit, at the door
        assert "Traceback" not in bad.stdout + bad.stderr
    finally:
        client.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            if p.stdout:
                p.stdout.close()


def test_a_lab_without_the_pack_refuses_its_capability(tmp_path: Path, site: Path) -> None:
    """The same submit against a lab that does not load the pack: a clear error, not a traceback."""
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump({"name": "plain", "run_dir": str(tmp_path / "run"), "packs": []}))
    out = _ppu(_env(site), "submit", "user.pressure_scan", "--input", "{}", "-c", str(path))
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "unknown capability 'user.pressure_scan'" in text and "packs:" in text and "Traceback" not in text
