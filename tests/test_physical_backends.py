"""Physical backends on the simulated lab: safe limits, samples, faults, pause/abort (the contract: packs)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conformance import no_progress

from ppu.backends.base import TaskRun
from ppu.backends.documents import JsonlSink, StoreSink
from ppu.backends.physical import PhysicalBackend
from ppu.backends.registry import build_backend
from ppu.models import ResultStatus
from ppu.simulators.mof.conformance import lab_config, make_samples, synth_run

# The contract itself runs for every backend type from the pack's cases (test_conformance_packs.py).


def test_safe_limit_refused_before_any_message(tmp_path: Path) -> None:
    async def main() -> None:
        robot = build_backend(lab_config(tmp_path, "synthesis_robot", "robot1"))
        assert isinstance(robot, PhysicalBackend)
        await robot.start()
        try:
            [res] = await robot.run([synth_run("hot", anneal_temperature_c=900.0)], no_progress)
            assert res.status == ResultStatus.failed and res.retryable is False and not res.interrupted
            assert "recipe.anneal_temperature_c" in (res.error or "")
            assert "800" in (res.error or "")
            assert robot.host.messages_sent == 0  # not one Msg reached the RunEngine
            assert robot.lab is not None and robot.lab.rack() == {}
        finally:
            await robot.close()

    asyncio.run(main())


def test_synthesis_then_measurements_share_the_lab(tmp_path: Path) -> None:
    async def main() -> None:
        [sid] = await make_samples(tmp_path, 1)
        xrd = build_backend(lab_config(tmp_path, "xrd", "xrd1"))
        gas = build_backend(lab_config(tmp_path, "gas_sorption", "gas1"))
        try:
            [rx] = await xrd.run([TaskRun(task_id="x", attempt=1, capability="characterize.xrd",
                                          inputs={"sample_id": sid})], no_progress)
            [rg] = await gas.run([TaskRun(task_id="g", attempt=1, capability="measure.co2_uptake",
                                          inputs={"sample_id": sid})], no_progress)
        finally:
            await xrd.close()
            await gas.close()
        assert isinstance(xrd, PhysicalBackend) and xrd.lab is not None
        truth = xrd.lab.sample(sid)
        assert rx.outputs["purity"] == pytest.approx(truth.purity, abs=0.05)
        assert rg.outputs["uptake_mmol_g"] == pytest.approx(truth.co2_uptake_mmol_g, rel=0.08)
        # provenance: transfer in, measure, transfer out; every run's documents kept as JSONL
        assert rx.provenance is not None and len(rx.provenance.run_uids) == 3
        sink = JsonlSink(tmp_path / "run" / "documents")
        for uid in rx.provenance.run_uids:
            names = [n for n, _ in sink.read(uid)]
            assert names[0] == "start" and names[-1] == "stop" and "event" in names
        start = sink.read(rx.provenance.run_uids[1])[0][1]
        assert start["task_id"] == "x" and start["sample_id"] == sid and start["plan_name"] == "measure_xrd"
        assert truth.device == "rack"  # the transfer put it back

    asyncio.run(main())


def test_sample_register_is_shared_across_processes(tmp_path: Path) -> None:
    """A second lab object (as in another process) finds samples through the register file."""
    [sid] = asyncio.run(make_samples(tmp_path, 1))
    from ppu.simulators.mof import SimulatedLab, World, WorldConfig

    other = SimulatedLab(World(WorldConfig(seed=5)), registry_path=tmp_path / "run" / f"lab-{tmp_path.name}" /
                         "samples.jsonl")
    assert other.sample(sid).recipe.composition
    line = json.loads((tmp_path / "run" / f"lab-{tmp_path.name}" / "samples.jsonl").read_text().splitlines()[0])
    assert line["op"] == "made"


def test_device_fault_is_interrupted_not_retryable(tmp_path: Path) -> None:
    async def main() -> None:
        [sid] = await make_samples(tmp_path, 1)
        uv = build_backend(lab_config(tmp_path, "uvvis", "uv1", faults={"fail_on": [1], "message": "lamp died"}))
        try:
            [res] = await uv.run([TaskRun(task_id="u", attempt=1, capability="measure.band_gap",
                                          inputs={"sample_id": sid})], no_progress)
        finally:
            await uv.close()
        assert res.status == ResultStatus.failed and res.interrupted and not res.retryable
        assert "lamp died" in (res.error or "")
        assert res.provenance is not None and res.provenance.run_uids

    asyncio.run(main())


def test_abort_mid_plan(tmp_path: Path) -> None:
    async def main() -> None:
        [sid] = await make_samples(tmp_path, 1)
        gas = build_backend(lab_config(tmp_path, "gas_sorption", "gas1", time_scale=2000.0))  # 0.3 s a point
        await gas.start()
        try:
            task = asyncio.create_task(gas.run([TaskRun(task_id="g", attempt=1, capability="measure.co2_uptake",
                                                        inputs={"sample_id": sid})], no_progress))
            await asyncio.sleep(0.5)
            await gas.abort("g")
            [res] = await asyncio.wait_for(task, 10)
        finally:
            await gas.close()
        assert res.status == ResultStatus.failed and res.interrupted and not res.retryable

    asyncio.run(main())


def test_pause_resume_completes(tmp_path: Path) -> None:
    async def main() -> None:
        [sid] = await make_samples(tmp_path, 1)
        gas = build_backend(lab_config(tmp_path, "gas_sorption", "gas1", time_scale=5000.0))
        await gas.start()
        try:
            task = asyncio.create_task(gas.run([TaskRun(task_id="g", attempt=1, capability="measure.co2_uptake",
                                                        inputs={"sample_id": sid, "points": 6})], no_progress))
            await asyncio.sleep(0.3)
            assert (await gas.pause()).startswith("pause requested")
            await asyncio.sleep(0.2)
            assert isinstance(gas, PhysicalBackend) and gas.host.state == "paused"
            assert not task.done()
            assert await gas.resume() == "resume requested"
            [res] = await asyncio.wait_for(task, 10)
        finally:
            await gas.close()
        assert res.status == ResultStatus.succeeded, res.error
        assert res.outputs["uptake_mmol_g"] > 0

    asyncio.run(main())


def test_store_sink(tmp_path: Path) -> None:
    from ppu.store import Store, sqlite_url

    store = Store(sqlite_url(tmp_path / "ppu.db"))

    async def main() -> None:
        robot = build_backend(lab_config(tmp_path, "synthesis_robot", "robot1"))
        assert isinstance(robot, PhysicalBackend)
        robot.sink = StoreSink(store)
        try:
            [res] = await robot.run([synth_run("s1")], no_progress)
        finally:
            await robot.close()
        assert res.provenance is not None
        docs = store.documents_for(res.provenance.run_uids[0])
        assert next(n for n, _ in docs) == "start"

    try:
        asyncio.run(main())
    finally:
        store.close()


def test_real_mode_builds_epics_devices_without_moving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ophyd.sim import make_fake_device

    import ppu.simulators.mof.devices as xrd_mod

    monkeypatch.setattr(xrd_mod, "EpicsXRD", make_fake_device(xrd_mod.EpicsXRD))  # no IOC in CI
    b = build_backend({"type": "xrd", "name": "xrd_real", "simulated": False, "epics_prefix": "XRD1:",
                       "run_dir": str(tmp_path)})
    assert isinstance(b, PhysicalBackend) and b.lab is None
    assert b.devices["xrd"].prefix == "XRD1:" and "transfer" not in b.devices
    assert b.spec().kind == "physical"
