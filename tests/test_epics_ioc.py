"""Real mode over Channel Access: the simulated twins served as EPICS IOCs (`ppu ioc`, a separate
process), driven by the EPICS builds of the devices through the same backends, plans and analysis.

The failure cases are the ones a real IOC gives: a refused Acquire (unknown sample), stale read-backs
(the put completes but the acquisition counter did not move), an acquisition that never ends (timeout),
a stop during an acquisition, and bytes (CHAR waveforms) in a device's configuration. Each must end the
attempt as a failure that says why (a `once` task then goes to review), never as a success with the
previous sample's data, and never hang.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conformance import no_progress
from ioc_helpers import serving_iocs

from ppu.backends.base import TaskRun
from ppu.backends.devices import AcquisitionFailed
from ppu.backends.physical import PhysicalBackend
from ppu.backends.registry import build_backend
from ppu.models import ResultStatus
from ppu.simulators.mof import candidate_pool

SCALE = 2e4  # lab seconds per wall second


def _entry(tmp: Path, type_: str, name: str, prefix: str, **kw: Any) -> dict[str, Any]:
    return {"type": type_, "name": name, "simulated": False, "epics_prefix": prefix, "time_scale": SCALE,
            "lab": "ioc-lab", "run_dir": str(tmp / "run"), "world": {"seed": 5}, "seed": 1,
            "acquire_timeout_s": 20.0, **kw}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("ioc")
    backends = [
        _entry(tmp, "synthesis_robot", "robot", "T1:ROBOT:"),
        _entry(tmp, "xrd", "xrd", "T1:XRD:", transfer_prefix="T1:XRD:XFER:"),
        _entry(tmp, "xrd", "xrd_stale", "T1:XRDS:", ioc_fault="stale"),
        _entry(tmp, "xrd", "xrd_hang", "T1:XRDH:", ioc_fault="hang", acquire_timeout_s=1.0),
    ]
    raw = {"name": "ioc-lab", "run_dir": str(tmp / "run"), "backends": backends}
    path = tmp / "lab.yaml"
    path.write_text(yaml.safe_dump(raw))
    with serving_iocs(path, "T1:XRDH:Acquire") as proc:
        yield {"tmp": tmp, "backends": {b["name"]: b for b in backends}, "proc": proc,
               "log": path.with_suffix(".ioc.log")}


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _backend(lab: dict[str, Any], name: str) -> PhysicalBackend:
    b = build_backend(lab["backends"][name])
    assert isinstance(b, PhysicalBackend) and not b.cfg.simulated
    return b


async def _run(backend: PhysicalBackend, runs: list[TaskRun]) -> list[Any]:
    await backend.start()
    try:
        return await backend.run(runs, no_progress)
    finally:
        await backend.close()


def _synthesise(lab: dict[str, Any]) -> str:
    """A sample made over Channel Access (retries the rare chemical failure, as a chemist would)."""
    for i in range(8):
        recipe = candidate_pool(40, seed=2)[7 + i].model_dump(mode="json")
        [res] = run(_run(_backend(lab, "robot"), [TaskRun(task_id=f"s{i}", attempt=1, capability="synthesize",
                                                          inputs={"recipe": recipe})]))
        if res.status == ResultStatus.succeeded:
            return str(res.outputs["sample_id"])
    raise AssertionError("no synthesis succeeded in 8 tries")


def _xrd(sample_id: str, task_id: str = "x1") -> TaskRun:
    return TaskRun(task_id=task_id, attempt=1, capability="characterize.xrd", inputs={"sample_id": sample_id})


def test_synthesis_then_xrd_over_channel_access(lab: dict[str, Any]) -> None:
    sample = _synthesise(lab)
    [res] = run(_run(_backend(lab, "xrd"), [_xrd(sample)]))
    assert res.status == ResultStatus.succeeded, res.error
    assert 0.0 <= res.outputs["purity"] <= 1.0 and res.outputs["main_phase"]
    assert res.provenance.device == "T1:XRD:"
    # the documents were written as JSON although the configuration came over CA (CHAR waveforms: bytes)
    for path in str(res.provenance.documents).split(";"):
        for line in Path(path).read_text().splitlines():
            json.loads(line)


def test_a_refused_acquire_fails_the_attempt_with_the_reason(lab: dict[str, Any]) -> None:
    [res] = run(_run(_backend(lab, "xrd"), [_xrd("never-made", "x2")]))
    assert res.status == ResultStatus.failed
    assert res.interrupted and not res.retryable  # a `once` task goes to review, never retried silently
    assert "never-made" in str(res.error) and "unknown" in str(res.error)


def test_stale_readbacks_are_a_failure_never_the_previous_data(lab: dict[str, Any]) -> None:
    sample = _synthesise(lab)
    [res] = run(_run(_backend(lab, "xrd_stale"), [_xrd(sample, "x3")]))
    assert res.status == ResultStatus.failed and res.interrupted
    assert "stale" in str(res.error)


def test_an_acquisition_that_never_ends_times_out(lab: dict[str, Any]) -> None:
    sample = _synthesise(lab)
    [res] = run(_run(_backend(lab, "xrd_hang"), [_xrd(sample, "x4")]))
    assert res.status == ResultStatus.failed and res.interrupted
    assert "timeout" in str(res.error).lower() or "timed out" in str(res.error).lower()


def test_stop_during_an_acquisition_fails_its_status(lab: dict[str, Any]) -> None:
    backend = _backend(lab, "xrd_hang")
    dev = backend.devices["xrd"]
    dev.acquire_timeout_s = 60.0
    dev.wait_for_connection(timeout=10)
    dev.sample_id.put("anything")
    status = dev.trigger()
    time.sleep(0.3)
    assert not status.done
    dev.stop()
    with pytest.raises(AcquisitionFailed, match="stopped"):
        status.wait(5)  # completes, with failure, instead of pending forever
    assert status.done and not status.success


def test_an_unreachable_device_returns_a_failed_status(lab: dict[str, Any]) -> None:
    from ppu.drivers.mof.xrd import EpicsXRD

    dev = EpicsXRD("T1:NOBODY:", name="ghost", acquire_timeout_s=1.0)
    status = dev.trigger()  # must not raise
    with pytest.raises(Exception):  # noqa: B017 - any failure will do; the point is that it is one
        status.wait(10)
    assert status.done and not status.success


def test_readbacks_are_read_only_over_channel_access(lab: dict[str, Any]) -> None:
    from ophyd import EpicsSignal
    from ophyd.utils.errors import ReadOnlyError

    rbv = EpicsSignal("T1:XRD:Intensity_RBV", name="rbv")
    rbv.wait_for_connection(timeout=10)
    with pytest.raises(ReadOnlyError):
        rbv.put([1.0, 2.0])


def test_both_builds_describe_units_and_refuse_writes_to_readbacks(lab: dict[str, Any]) -> None:
    from ophyd.utils.errors import ReadOnlyError

    sim = build_backend({**lab["backends"]["xrd"], "simulated": True}).devices["xrd"]
    real = _backend(lab, "xrd").devices["xrd"]
    real.wait_for_connection(timeout=10)
    for dev in (sim, real):
        desc = dev.describe()
        assert desc["xrd_two_theta"]["units"] == "deg", desc["xrd_two_theta"]
        assert desc["xrd_intensity"]["units"] == "counts"
        with pytest.raises(ReadOnlyError):
            dev.intensity.put([1.0])


def test_an_unconfigured_simulated_device_returns_a_failed_status(tmp_path: Path) -> None:
    sim = build_backend({**_entry(tmp_path, "xrd", "x", "X:"), "simulated": True}).devices["xrd"]
    sim.sample_id.put("never-made")
    status = sim.trigger()  # must not raise: bluesky expects a Status it can wait on
    with pytest.raises(Exception, match="never-made"):
        status.wait(5)
    assert status.done and not status.success


def test_stop_fails_a_pending_simulated_acquisition(tmp_path: Path) -> None:
    backend = build_backend({**_entry(tmp_path, "synthesis_robot", "r", "R:"), "simulated": True,
                             "time_scale": 1.0})
    robot = backend.devices["robot"]
    robot.recipe.put(json.dumps(candidate_pool(5, seed=2)[0].model_dump(mode="json")))
    status = robot.trigger()  # hours of lab time at time scale 1
    robot.stop()
    with pytest.raises(Exception, match="stopped"):
        status.wait(5)
