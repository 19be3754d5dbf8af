"""Block results across an orchestrator restart, and block results too large to travel (a user trial).

1. Restarting the orchestrator during a screen failed the whole screen: the worker re-registered with its
   unacknowledged block result inside the registration, as JSON without its output columns, and the
   orchestrator judged the block's summary against the capability's one-row output model ("mean: Field
   required"), failing the block for good. Here with real processes: an orchestrator killed (SIGKILL, then
   SIGTERM) and restarted while a block runs and while its result waits for an ack.
2. A block whose output columns were over ``orchestrator.max_blob_bytes`` never ended: the worker re-sent
   the refused result every 10 s for ever, holding the backend's slot. Now the door refuses a block whose
   outputs cannot fit, and a result that still comes too large ends its attempt, failed, not retried. So
   does any result whose json is over ``orchestrator.max_message_bytes``: the worker knows both limits from
   its registration's answer and never sends a result over them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import yaml
from pydantic import Field
from test_digital_columnar import CAP, candidates, torch_entry
from transport_helpers import free_port, lab_config, run, until

from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.backends.echo import EchoBackend, EchoConfig
from ppu.digital.nets import mlp
from ppu.digital.torch_backend import TorchBackend, TorchConfig
from ppu.drivers.mof.featurize import N_FEATURES, candidate_columns, features_from_columns
from ppu.errors import PPUError
from ppu.models import BackendKind, CapabilityOffer, Result, ResultStatus, TaskState
from ppu.store import Store
from ppu.transport import AsyncPPUClient
from ppu.transport.lab import EmbeddedLab

TESTS = Path(__file__).parent


# ---- test backends ---------------------------------------------------------------------------------


class GatedConfig(TorchConfig):
    gate_dir: str = Field(description="'start'/'done' lines go to <gate_dir>/runs.log; a block waits for go-<task id>")


class GatedTorch(TorchBackend):
    """The torch backend, each block held until the test lets it go: the test knows when a block runs and
    when its result is made (the worker then holds it unacknowledged: nothing awaits between the two)."""

    Config: ClassVar[type[BackendConfig]] = GatedConfig

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        cfg = self.config
        assert isinstance(cfg, GatedConfig)
        gate = Path(cfg.gate_dir)
        _note(gate, [f"start {r.task_id} {r.attempt}" for r in batch])
        while not all((gate / f"go-{r.task_id}").exists() for r in batch):
            await asyncio.sleep(0.01)
        results = await super().run(batch, progress)
        _note(gate, [f"done {r.task_id} {r.attempt} {r.status.value}" for r in results])
        return results


def _note(gate: Path, lines: list[str]) -> None:
    with open(gate / "runs.log", "a") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


class BlockConfig(BackendConfig):
    extra_columns: int = Field(0, ge=0, description="float64 output columns beside mean and std")
    with_columns: bool = Field(True, description="False: a success without its output columns (a backend's bug)")


class SumBlocks(Backend):
    """A columnar backend of predict.co2_uptake for the transport's sake: mean = the sum of a row's columns."""

    kind = BackendKind.digital
    Config: ClassVar[type[BackendConfig]] = BlockConfig
    columnar = True

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name=CAP, duration_s=0.01)]

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        cfg = self.config
        assert isinstance(cfg, BlockConfig)
        started = time.time()
        out = []
        for r in batch:
            x = sum(c.astype(np.float64) for c in r.columns().values())
            cols = {"mean": x, "std": np.zeros_like(x)} | {f"extra{i}": x + i for i in range(cfg.extra_columns)}
            res = self.ok(r, {"rows": len(x), "columns": list(cols), "non_finite_rows": 0, "model_version": "1"},
                          started)
            out.append(res.with_columns(cols) if cfg.with_columns else res)
        return out


# ---- 1. an orchestrator restarted during a screen, with real processes ------------------------------


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.pt"
    torch.save(mlp(N_FEATURES, hidden=32, seed=3).state_dict(), path)
    return path


def _spawn(out: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    with open(out, "ab") as log:  # a file, not a pipe: a pipe nobody reads would block the process when full
        return subprocess.Popen([sys.executable, "-m", "ppu.cli", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(30)


def _lines(gate: Path, what: str) -> list[str]:
    log = gate / "runs.log"
    if not log.exists():
        return []
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith(what + " ")]


async def _registrations(client: AsyncPPUClient) -> int:
    try:
        return sum(a.action == "register" and a.target == "gated" for a in await client.audit())
    except PPUError:  # not answering yet
        return -1


def test_a_screen_survives_orchestrator_restarts_with_a_block_running_and_a_result_unacked(
        tmp_path: Path, weights: Path) -> None:
    """Block 1 runs when the orchestrator is killed (SIGKILL) and ends while it is down: the worker holds its
    result, unacknowledged, when it registers with the new one. Block 2 runs across a SIGTERM and restart and
    ends after the worker registered again. Every block ends succeeded, once, with the model's numbers."""
    gate = tmp_path / "gate"
    gate.mkdir()
    address = f"tcp://127.0.0.1:{free_port()}"
    raw: dict[str, Any] = {"name": "restart", "run_dir": str(tmp_path), "store": f"sqlite:///{tmp_path / 'ppu.sqlite'}",
                           # a long grace: the restarted orchestrator waits for the worker, however slow
                           "orchestrator": {"bind": address, "heartbeat_s": 0.1, "missed_heartbeats": 20,
                                            "backoff_base_s": 0.0, "restart_grace_s": 120.0},
                           "backends": [torch_entry(weights, type="test_columnar_restart:GatedTorch", name="gated",
                                                    slots=1, batch_size=1, gate_dir=str(gate))]}
    cfg = tmp_path / "lab.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    cols = candidate_columns(candidates(2000, seed=7))
    out = tmp_path / "processes.log"

    async def body() -> tuple[list[str], dict[str, Any]]:
        procs = {"orchestrator": _spawn(out, "orchestrator", "--config", str(cfg)),
                 "worker": _spawn(out, "worker", "--config", str(cfg), "--backend", "gated")}
        client = AsyncPPUClient(address, timeout=5)

        async def wait_for(pred: Any, what: str, timeout: float = 120) -> None:
            async def check() -> Any:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise AssertionError(f"the {name} exited ({proc.returncode}) while waiting for {what}:\n"
                                             + out.read_text()[-4000:])
                r = pred()
                return (await r) if asyncio.iscoroutine(r) else r
            await until(check, timeout, what)

        async def registered(more_than: int) -> bool:
            return await _registrations(client) > more_than

        try:
            await wait_for(lambda: registered(0), "the worker to register")
            ids = await client.submit_block(CAP, cols, block_rows=500)
            assert len(ids) == 4
            b1, b2, *rest = ids
            await wait_for(lambda: b1 in _lines(gate, "start"), "block 1 to run")

            _stop(procs.pop("orchestrator"))  # SIGKILL while block 1 runs
            (gate / f"go-{b1}").touch()
            await wait_for(lambda: b1 in _lines(gate, "done"), "block 1's result (held, unacknowledged)")
            procs["orchestrator"] = _spawn(out, "orchestrator", "--config", str(cfg))
            await wait_for(lambda: b2 in _lines(gate, "start"), "block 1 to be recorded and block 2 to run")

            seen = await _registrations(client)
            _stop(procs.pop("orchestrator"), signal.SIGTERM)  # a clean stop while block 2 runs
            procs["orchestrator"] = _spawn(out, "orchestrator", "--config", str(cfg))
            await wait_for(lambda: registered(seen), "the worker to register with the new orchestrator")
            for tid in (b2, *rest):
                (gate / f"go-{tid}").touch()
            done = await client.wait(ids, timeout=120)
            assert [t.state for t in done] == [TaskState.succeeded] * 4, [t.error for t in done]
            assert all(t.attempts == 1 for t in done)
            parts: dict[str, Any] = {}
            for tid in ids:
                res = await client.result(tid)
                assert res is not None and res.artifact is not None and res.artifact.rows == 500
                parts[tid] = await client.artifact(res.artifact)
            return ids, parts
        finally:
            await client.close()
            for proc in procs.values():
                _stop(proc, signal.SIGTERM)

    ids, parts = run(body(), 600)
    assert sorted(_lines(gate, "start")) == sorted(ids)  # each block ran once: none was failed or retried
    store = Store(f"sqlite:///{tmp_path / 'ppu.sqlite'}")
    try:
        for tid in ids:  # accepted exactly once
            [res] = store.results_for(tid)
            assert res.status is ResultStatus.succeeded and res.attempt == 1 and res.artifact is not None
    finally:
        store.close()
    model = mlp(N_FEATURES, hidden=32, seed=3)
    model.load_state_dict(torch.load(weights, weights_only=True))
    with torch.inference_mode():
        want = model(torch.from_numpy(features_from_columns(cols)).float()).numpy()
    got = np.concatenate([parts[tid]["mean"] for tid in ids])
    np.testing.assert_allclose(got, want[:, 0], rtol=1e-5, atol=1e-6)


# ---- 2. block results larger than max_blob_bytes -----------------------------------------------------


def _bytes_columns(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"b{i}": rng.integers(0, 255, rows, dtype=np.uint8) for i in range(8)}


def test_a_block_whose_outputs_cannot_fit_is_refused_at_the_door(tmp_path: Path) -> None:
    """8 uint8 columns x 200,000 rows is 1.6 MB in, but mean and std come back as 3.2 MB of float64: over a
    max_blob_bytes of 2,000,000, so the submit is refused naming block_rows and the limit (it used to be
    accepted and its result refused at every re-send, for ever). Blocks that fit still run."""
    lab = lab_config(tmp_path, orchestrator={"heartbeat_s": 0.1, "missed_heartbeats": 3, "backoff_base_s": 0.0,
                                             "restart_grace_s": 1.0, "max_blob_bytes": 2_000_000})
    cols = _bytes_columns(200_000)

    async def go() -> tuple[PPUError, list[Any]]:
        async with EmbeddedLab(lab, backends=[SumBlocks(BlockConfig(type="sum", name="sum"))]) as client:
            with pytest.raises(PPUError) as refused:
                await client.submit_block(CAP, cols, block_rows=200_000)
            out, results = await client.screen(CAP, cols, block_rows=100_000, timeout=60)
            np.testing.assert_array_equal(out["mean"], sum(c.astype(np.float64) for c in cols.values()))
            return refused.value, results

    err, results = asyncio.run(go())
    assert err.field is not None and err.field.endswith("block.rows"), err.field
    assert "orchestrator.max_blob_bytes" in str(err) and "block_rows=125000" in str(err.hint), (str(err), err.hint)
    assert len(results) == 2


def _too_large_then_next(lab: Any, backend: Backend, big: Callable[[AsyncPPUClient], Awaitable[Any]],
                         nxt: Callable[[AsyncPPUClient], Awaitable[Any]]) -> tuple[Any, Any, dict[str, Any], int]:
    """In a lab served in this process: the task ``big`` runs (its result too large to send), then the task
    ``nxt`` runs on the same slot; both ended tasks, the orchestrator's counters, and how many results its
    worker still holds unacknowledged."""
    async def go() -> tuple[Any, Any, dict[str, Any], int]:
        lab_ = EmbeddedLab(lab, backends=[backend])
        client = await lab_.start()
        try:
            first = await big(client)
            second = await nxt(client)
            counters = (await client.status())["counters"]
            held = sum(len(h.unacked) for w in lab_.workers for h in w.hosts.values())
            return first, second, counters, held
        finally:
            await lab_.close()

    return asyncio.run(go())


def test_a_block_result_over_max_blob_bytes_ends_its_attempt_and_frees_the_slot(tmp_path: Path) -> None:
    """A decoder answering with more columns than the door counts (here 4 float64 columns, 3.2 MB for 100,000
    rows) passes the door; its result is then too large to send. The worker knows the orchestrator's limit
    (its registration's answer names it) and sends the result as its failure, never over the limit: the
    attempt ends failed, not retried, with an error naming max_blob_bytes and block_rows, and the backend's
    only slot is free for the next block."""
    lab = lab_config(tmp_path, orchestrator={"heartbeat_s": 0.1, "missed_heartbeats": 3, "backoff_base_s": 0.0,
                                             "restart_grace_s": 1.0, "max_blob_bytes": 2_000_000})
    backend = SumBlocks(BlockConfig(type="sum", name="sum", slots=1, extra_columns=2))

    async def block(client: AsyncPPUClient, rows: int) -> Any:
        [tid] = await client.submit_block(CAP, _bytes_columns(rows), block_rows=rows)
        return (await client.wait([tid], timeout=60))[0]

    t_big, t_small, counters, held = _too_large_then_next(
        lab, backend, lambda c: block(c, 100_000), lambda c: block(c, 1000))
    assert t_big.state is TaskState.failed and t_big.attempts == 1, (t_big.state, t_big.error)
    assert "orchestrator.max_blob_bytes" in (t_big.error or "") and "block_rows=" in (t_big.error or ""), t_big.error
    assert t_small.state is TaskState.succeeded
    assert held == 0  # acknowledged: nothing left to re-send
    assert counters.get("protocol_oversize", 0) == 0  # never sent over the limit


class BigOutputs(EchoBackend):
    """Echo whose outputs carry a payload of x characters: a result as large as the test likes."""

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        started = time.time()
        return [self.ok(r, {"y": 2 * r.inputs["x"], "payload": "n" * int(r.inputs["x"])}, started) for r in batch]


def test_a_result_over_max_message_bytes_ends_its_attempt_and_frees_the_slot(tmp_path: Path) -> None:
    """A result whose json is over the orchestrator's max_message_bytes was refused at every re-send (every
    10 s, for ever): its task never ended and its backend's only slot was never free. Now the worker sends it
    as the failure of its attempt, not retried, naming the limit and what to do; the next task runs."""
    lab = lab_config(tmp_path, orchestrator={"heartbeat_s": 0.1, "missed_heartbeats": 3, "backoff_base_s": 0.0,
                                             "restart_grace_s": 1.0, "max_message_bytes": 65536})
    backend = BigOutputs(EchoConfig(type="echo", name="echo-1", slots=1, duration_s=0.0))

    async def echo(client: AsyncPPUClient, x: int) -> Any:
        return (await client.run([{"capability": "echo", "inputs": {"x": x}}], timeout=60))[0]

    big, small, counters, held = _too_large_then_next(
        lab, backend, lambda c: echo(c, 200_000), lambda c: echo(c, 3))
    assert big.state is TaskState.failed and big.attempts == 1, (big.state, big.attempts, big.error)
    assert "orchestrator.max_message_bytes" in (big.error or "") and "65536" in (big.error or ""), big.error
    assert small.state is TaskState.succeeded, small.error
    assert held == 0 and counters.get("protocol_oversize", 0) == 0, (held, counters)


def test_a_block_success_without_its_columns_is_never_judged_as_one_row(tmp_path: Path) -> None:
    """A backend that answers a block with a summary and no columns: the task must not fail for good on
    "outputs ... are invalid" (the row output model); the worker fails the attempt, naming the missing
    columns, and the block is retried like any repeatable failure."""
    lab = lab_config(tmp_path)
    backend = SumBlocks(BlockConfig(type="sum", name="sum", with_columns=False))

    async def go() -> Any:
        async with EmbeddedLab(lab, backends=[backend]) as client:
            [tid] = await client.submit_block(CAP, _bytes_columns(100), block_rows=100, max_attempts=2)
            [task] = await client.wait([tid], timeout=60)
            return task

    task = asyncio.run(go())
    assert task.state is TaskState.failed and task.attempts == 2, (task.state, task.attempts, task.error)
    assert "without output columns" in (task.error or "") and "invalid" not in (task.error or ""), task.error
