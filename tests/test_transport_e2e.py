"""End to end over real loopback sockets: client -> orchestrator -> worker -> result."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from transport_helpers import HB, SYNTH, lab_config, run, until

from ppu.errors import UnknownCapabilityError, UnknownTaskError, ValidationFailed
from ppu.models import TaskState
from ppu.protocol import NotAnswering, WaitTimeout
from ppu.transport import EmbeddedLab, PPUClient


def test_submit_runs_on_a_remote_worker_and_comes_back(tmp_path: Path):
    async def body() -> None:
        async with EmbeddedLab(lab_config(tmp_path)) as client:
            ids = await client.submit([{"capability": "echo", "inputs": {"x": i}} for i in range(20)])
            done = await client.wait(ids, timeout=10)
            assert [t.state for t in done] == [TaskState.succeeded] * 20
            r = await client.result(ids[3])
            assert r is not None and r.outputs["y"] == 6.0
            assert (await client.task(ids[3])).state is TaskState.succeeded
            st = await client.status()
            assert st["backends"][0]["name"] == "echo-1" and st["workers"] == 1
            assert len(await client.tasks(state="succeeded")) == 20
            assert any(a.action == "register" for a in await client.audit())
    run(body())


def test_typed_errors_come_back_as_their_classes(tmp_path: Path):
    async def body() -> None:
        async with EmbeddedLab(lab_config(tmp_path)) as client:
            with pytest.raises(UnknownCapabilityError):
                await client.submit({"capability": "nope"})
            with pytest.raises(ValidationFailed) as e:
                await client.submit({"capability": "echo", "inputs": {"x": "not a number"}})
            assert e.value.field and "x" in e.value.field
            with pytest.raises(UnknownTaskError):
                await client.task("missing")
    run(body())


def test_events_stream_and_wait_timeout(tmp_path: Path):
    lab = lab_config(tmp_path, backends=[{"type": "echo", "name": "slow", "duration_s": 50.0,
                                          "time_scale": 100.0}])

    async def body() -> None:
        async with EmbeddedLab(lab) as client:
            seen: list[dict] = []

            async def watch() -> None:
                async for ev in client.events():
                    seen.append(ev)
                    if ev.get("dst") == "succeeded":
                        return
            watcher = asyncio.create_task(watch())
            await until(lambda: client._queues, what="subscription")
            await asyncio.sleep(0.05)
            [tid] = await client.submit({"capability": "echo", "inputs": {"x": 1}})
            with pytest.raises(WaitTimeout):
                await client.wait([tid], timeout=0.05)
            await asyncio.wait_for(watcher, 5)
            assert [e["dst"] for e in seen if e["type"] == "transition"][-1] == "succeeded"
            assert {"pending", "ready", "assigned", "running"} <= {e.get("dst") for e in seen}
    run(body())


def test_sync_client_from_a_thread(tmp_path: Path):
    async def body() -> None:
        async with EmbeddedLab(lab_config(tmp_path)) as client:
            def sync() -> list:
                with PPUClient(client.address, timeout=5) as c:
                    return c.run([{"capability": "echo", "inputs": {"x": 2}}], timeout=5)
            [t] = await asyncio.to_thread(sync)
            assert t.state is TaskState.succeeded
    run(body())


def test_sync_client_waits_without_a_timeout(tmp_path: Path):
    """A wait with no timeout asks the socket for 1e9 s: more than zmq's poll takes in one call
    (2**31 ms), which raised OverflowError before the blocking client polled in slices."""
    async def body() -> None:
        async with EmbeddedLab(lab_config(tmp_path)) as client:
            def sync() -> list:
                with PPUClient(client.address, timeout=5) as c:
                    return c.run([{"capability": "echo", "inputs": {"x": 3}}])
            [t] = await asyncio.to_thread(sync)
            assert t.state is TaskState.succeeded and t.inputs["x"] == 3
    run(body())


def test_client_says_who_to_start_when_nobody_answers():
    with PPUClient("tcp://127.0.0.1:1", timeout=0.2) as c:
        with pytest.raises(NotAnswering) as e:
            c.status()
    assert "tcp://127.0.0.1:1" in str(e.value) and "ppu orchestrator" in str(e.value)


def test_two_workers_share_the_queue(tmp_path: Path):
    lab = lab_config(tmp_path, backends=[
        {"type": SYNTH, "name": "a", "duration_s": 1.0, "time_scale": 100.0},
        {"type": SYNTH, "name": "b", "duration_s": 1.0, "time_scale": 100.0}])

    async def body() -> None:
        async with EmbeddedLab(lab, workers=[["a"], ["b"]]) as client:
            ids = await client.submit([{"capability": "echo", "inputs": {"x": i}} for i in range(10)])
            done = await client.wait(ids, timeout=10)
            assert {t.backend for t in done} == {"a", "b"}
            assert HB > 0
    run(body())
