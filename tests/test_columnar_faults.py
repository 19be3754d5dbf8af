"""Columnar tasks under faults: an input block that cannot be read, a backend that takes no blocks, and
an assignment that waits for its block while a later one is ready (issue 17, from a user trial)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_digital_columnar import CAP, candidates, torch_entry
from transport_helpers import lab_config

from ppu import protocol as p
from ppu.digital.nets import mlp
from ppu.drivers.mof.featurize import N_FEATURES, candidate_columns
from ppu.errors import PPUError
from ppu.models import Task, TaskState
from ppu.transport.lab import EmbeddedLab
from ppu.transport.server import OrchestratorServer


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.pt"
    torch.save(mlp(N_FEATURES, hidden=32, seed=3).state_dict(), path)
    return path


def _artifact(run_dir: Path, sha: str) -> Path:
    return run_dir / "artifacts" / sha[:2] / f"{sha}.npz"


@pytest.mark.parametrize("damage", ["gone", "corrupt"])
def test_a_block_that_cannot_be_read_fails_alone_and_its_batch_mates_run(tmp_path: Path, weights: Path,
                                                                         damage: str) -> None:
    """Its file deleted or one byte flipped before it is assigned: the task fails at once, not retried
    (no attempt could read it), naming why; a good block and a row task in the same batch succeed.
    Before, the whole assignment was requeued as undelivered without counting an attempt: forever."""
    lab = lab_config(tmp_path, [torch_entry(weights, batch_size=8, batch_wait_s=0.05)])
    cols = candidate_columns(candidates(40, seed=1))

    async def go() -> tuple[Task, Task, Task, dict[str, int]]:
        async with EmbeddedLab(lab) as client:
            await client.hold("surrogate")
            [bad] = await client.submit_block(CAP, cols)
            [good] = await client.submit_block(CAP, cols | {"anneal_time_h": cols["anneal_time_h"] + 1})
            [row] = await client.submit([{"capability": CAP, "inputs": {"candidate": candidates(1, seed=2)[0]}}])
            task = await client.task(bad)
            assert task.block is not None
            path = _artifact(tmp_path, task.block.sha256)
            if damage == "gone":
                path.unlink()
            else:
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
            await client.resume("surrogate")
            done = await client.wait([bad, good, row], timeout=60)
            counters = (await client.status())["counters"]
            return *done, counters

    bad_t, good_t, row_t, counters = asyncio.run(go())
    assert bad_t.state is TaskState.failed and bad_t.attempts == 1
    assert bad_t.error is not None and "input block cannot be read" in bad_t.error
    assert ("no artifact" if damage == "gone" else "sha256") in bad_t.error
    assert good_t.state is TaskState.succeeded and row_t.state is TaskState.succeeded
    assert counters.get("unrunnable") == 1 and not counters.get("assign_undelivered")


def test_a_block_no_backend_of_its_capability_runs_is_refused_at_the_door(tmp_path: Path) -> None:
    """echo reads a task's inputs; a block's are empty. It used to "succeed" with y=0.0 and no columns,
    then to fail on the worker; now the door says so, and stores nothing."""
    lab = lab_config(tmp_path)  # one echo backend

    async def go() -> Task:
        async with EmbeddedLab(lab) as client:
            with pytest.raises(PPUError) as err:
                await client.submit_block("echo", {"x": np.arange(10, dtype=np.float64)})
            assert err.value.field == "block" and "no backend that offers echo runs columnar blocks" in str(err.value)
            [row] = await client.run([{"capability": "echo", "inputs": {"x": 1.0}}], timeout=30)
            return row

    assert asyncio.run(go()).state is TaskState.succeeded
    assert not list((tmp_path / "artifacts").rglob("*.npz"))


def test_blocks_go_only_to_a_backend_that_runs_them_where_another_offers_the_capability_too(
        tmp_path: Path, weights: Path) -> None:
    """An echo backend offers the capability too, and by the default policy (earliest completion) it is
    the first choice: blocks must still all go to the torch backend, rows to either."""
    lab = lab_config(tmp_path, [torch_entry(weights, slots=1),
                                {"type": "echo", "name": "echo-1", "duration_s": 0.0, "slots": 8,
                                 "capabilities": [{"name": CAP, "duration_s": 0.001}]}])
    cols = candidate_columns(candidates(60, seed=5))

    async def go() -> list[Task]:
        async with EmbeddedLab(lab) as client:
            blocks = await client.submit_block(CAP, cols, block_rows=10)
            return await client.wait(blocks, timeout=60)

    done = asyncio.run(go())
    assert len(done) == 6 and all(t.state is TaskState.succeeded for t in done), [t.error for t in done]
    assert {t.backend for t in done} == {"surrogate"} and all(t.attempts == 1 for t in done)


def test_a_block_that_waits_for_its_rows_is_not_overtaken_by_the_next_assignment(
        tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a block from the artifact store takes time (a large one, seconds). The worker's heartbeat
    names the last assignment number it got, and the scheduler takes an earlier batch the worker does
    not hold for lost: so a row task assigned meanwhile must leave after the block, not before (it
    did: the block then lost an attempt to "no longer holds it" and was computed twice)."""
    lab = lab_config(tmp_path, [torch_entry(weights, batch_size=1, slots=4)])
    cols = candidate_columns(candidates(20, seed=3))
    slow = OrchestratorServer.block_arrays

    async def slow_block_arrays(self: OrchestratorServer, runs: list[Any]) -> Any:
        await asyncio.sleep(0.5)
        return await slow(self, runs)

    sent: list[int] = []
    send = OrchestratorServer.send_to_backend

    async def record(self: OrchestratorServer, backend: str, msg: Any) -> None:
        if isinstance(msg, p.Assign):
            sent.append(msg.seq)
        await send(self, backend, msg)

    monkeypatch.setattr(OrchestratorServer, "block_arrays", slow_block_arrays)
    monkeypatch.setattr(OrchestratorServer, "send_to_backend", record)

    async def go() -> list[Task]:
        async with EmbeddedLab(lab) as client:
            [block] = await client.submit_block(CAP, cols)
            await asyncio.sleep(0.1)  # the block's assignment is reading its rows
            rows = await client.submit([{"capability": CAP, "inputs": {"candidate": c}}
                                        for c in candidates(3, seed=4)])
            return await client.wait([block, *rows], timeout=60)

    done = asyncio.run(go())
    assert all(t.state is TaskState.succeeded and t.attempts == 1 for t in done)
    assert len(sent) == 4 and sent == sorted(sent)


def test_a_refused_block_submit_stores_nothing(tmp_path: Path, weights: Path) -> None:
    """A block for an unknown capability, a physical one, one with inputs beside it, and a second
    block whose blob is missing: each refused, naming the field, and no rows left in the artifact
    store (they used to be stored before the door's checks)."""
    lab = lab_config(tmp_path, [torch_entry(weights)])
    cols = {"anneal_time_h": np.arange(3, dtype=np.float64)}
    base = {"capability": CAP, "block": {"rows": 3, "columns": ["anneal_time_h"]}}

    async def go() -> list[str]:
        fields = []
        async with EmbeddedLab(lab) as client:
            for tasks, blobs in [
                ([{**base, "capability": "predict.co2_uptak"}], {"0:anneal_time_h": cols["anneal_time_h"]}),
                ([{**base, "capability": "synthesize"}], {"0:anneal_time_h": cols["anneal_time_h"]}),
                ([{**base, "inputs": {"x": 1}}], {"0:anneal_time_h": cols["anneal_time_h"]}),
                ([base, base], {"0:anneal_time_h": cols["anneal_time_h"]}),  # the second block's blob is missing
            ]:
                with pytest.raises(PPUError) as refused:
                    await client.request(p.Submit(tasks=tasks).carrying(blobs))
                fields.append(str(refused.value.field))
        return fields

    assert asyncio.run(go()) == ["capability", "block", "inputs", "tasks.1.block.columns"]
    assert not list((tmp_path / "artifacts").rglob("*.npz"))
