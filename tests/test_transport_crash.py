"""Real processes, real SIGKILL: a worker dies mid-task; the orchestrator dies and restarts.

Promises 1 and 2 of DESIGN.md over the wire: nothing acknowledged is lost, a `repeatable` task
comes back on another backend, a `once` task goes to needs_review and never runs twice (every
run is counted in a file the test backend appends to).
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from store_backends import store_url_fixture  # noqa: F401  (store_url: SQLite and PostgreSQL)
from transport_helpers import HB, SYNTH, free_port, run, until

from ppu.backends.registry import build_backend
from ppu.config import parse_lab
from ppu.models import TaskState
from ppu.orchestrator import Orchestrator
from ppu.store import Store
from ppu.transport import AsyncPPUClient, OrchestratorServer, Worker

TESTS = Path(__file__).parent
RECIPE = {"recipe": {"composition": {"Cu": 0.5, "O": 0.5}}}


def _write_lab(tmp: Path, port: int, backends: list[dict[str, Any]], store: str | None = None) -> Path:
    raw = {"name": "crash", "run_dir": str(tmp), "store": store or f"sqlite:///{tmp / 'ppu.sqlite'}",
           "orchestrator": {"bind": f"tcp://127.0.0.1:{port}", "heartbeat_s": HB, "missed_heartbeats": 6,
                            "backoff_base_s": 0.0, "restart_grace_s": 2.0},
           "backends": backends}
    path = tmp / "lab.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "ppu.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def _runs(log: Path) -> collections.Counter[str]:
    if not log.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in log.read_text().splitlines() if line.strip())


def test_worker_killed_mid_task(tmp_path: Path):
    log = tmp_path / "runs.log"
    port = free_port()
    cfg = _write_lab(tmp_path, port, [
        {"type": SYNTH, "name": "doomed", "slots": 2, "duration_s": 3000.0, "time_scale": 100.0,
         "log_path": str(log)},
        {"type": SYNTH, "name": "spare", "duration_s": 1.0, "time_scale": 100.0, "log_path": str(log)}])
    lab = parse_lab(yaml.safe_load(cfg.read_text()))

    async def body() -> None:
        store = Store(lab.store_url())
        orch = Orchestrator(store, lab.orchestrator, lab.autonomy)
        await orch.start()
        server = OrchestratorServer(orch, lab.orchestrator.bind)
        addr = await server.start()
        client = AsyncPPUClient(addr, timeout=5)
        proc = _spawn("worker", "--config", str(cfg), "--backend", "doomed")
        spare: Worker | None = None
        try:
            await until(lambda: "doomed" in server.backend_peer, 15, "the worker subprocess to register")
            rep, once = await client.submit([{"capability": "echo", "inputs": {"x": 4}},
                                             {"capability": "synthesize", "inputs": RECIPE}])
            await until(lambda: len(_runs(log)) == 2, 10, "both tasks running on the doomed worker")
            _kill(proc)
            spare = Worker(addr, [build_backend(lab.backend_entry("spare"))], heartbeat_s=HB)
            await spare.start()
            [t] = await client.wait([rep], timeout=10)
            assert t.state is TaskState.succeeded and t.backend == "spare" and t.attempts == 2
            await until(lambda: orch.view.get_task(once).state is TaskState.needs_review, 5, "once -> needs_review")
            await asyncio.sleep(5 * HB)  # time in which a wrong scheduler would re-run it
            assert (await client.task(once)).state is TaskState.needs_review
            assert _runs(log)[once] == 1 and _runs(log)[rep] == 2
            audit = [a for a in await client.audit() if a.action == "backend_lost"]
            assert [a.target for a in audit] == ["doomed"]
            assert "doomed" not in server.backend_peer
        finally:
            _kill(proc)
            await client.close()
            if spare is not None:
                await spare.close()
            await server.close()
            await orch.close()
            store.close()
    run(body(), 60)


def test_orchestrator_killed_and_restarted_loses_nothing(tmp_path: Path, store_url: str):
    """On SQLite and on PostgreSQL (the store_url fixture)."""
    log = tmp_path / "runs.log"
    port = free_port()
    cfg = _write_lab(tmp_path, port, [
        {"type": SYNTH, "name": "robot", "slots": 2, "duration_s": 5.0, "time_scale": 100.0,
         "log_path": str(log)}], store=store_url)
    lab = parse_lab(yaml.safe_load(cfg.read_text()))
    addr = lab.orchestrator.bind

    async def body() -> None:
        orch_proc = _spawn("orchestrator", "--config", str(cfg))
        worker = Worker(addr, [build_backend(lab.backend_entry("robot"))], heartbeat_s=HB)
        client = AsyncPPUClient(addr, timeout=2)
        try:
            await worker.start()
            await worker.wait_registered(15)
            specs: list[dict[str, Any]] = []
            for i in range(40):
                specs.append({"capability": "synthesize", "inputs": RECIPE} if i % 4 == 0
                             else {"capability": "echo", "inputs": {"x": i}})
            ids = await client.submit(specs)
            await until(lambda: sum(_runs(log).values()) >= 8, 10, "some tasks to run")
            _kill(orch_proc)
            assert sum(_runs(log).values()) < 40  # killed mid-way
            await asyncio.sleep(0.3)  # the worker keeps running and keeps its results unacked
            orch_proc = _spawn("orchestrator", "--config", str(cfg))
            await until(lambda: worker.reconnects >= 1 and worker.registered, 20, "the worker to re-register")

            async def settled() -> bool:
                try:
                    tasks = await client.tasks(limit=1000)
                except Exception:
                    return False
                return len(tasks) == 40 and all(
                    t.state in (TaskState.succeeded, TaskState.needs_review) for t in tasks)
            await until(settled, 30, "every task to settle")
            tasks = {t.id: t for t in await client.tasks(limit=1000)}
            assert set(tasks) == set(ids)  # nothing lost
            runs = _runs(log)
            synth = [i for i, s in zip(ids, specs, strict=True) if s["capability"] == "synthesize"]
            for tid in synth:  # never twice; and a succeeded one ran exactly once
                assert runs[tid] <= 1, (tid, runs[tid])
                if tasks[tid].state is TaskState.succeeded:
                    assert runs[tid] == 1
                    assert (await client.result(tid)) is not None
            for tid in ids:
                if tasks[tid].state is TaskState.succeeded:
                    assert (await client.result(tid)) is not None
            assert all(tasks[t].state is TaskState.succeeded for t in ids if t not in synth)
        finally:
            await client.close()
            await worker.close()
            if orch_proc.poll() is None:
                orch_proc.send_signal(signal.SIGTERM)
                try:
                    assert orch_proc.wait(10) == 0  # a clean stop on SIGTERM
                    out = orch_proc.stdout.read().decode() if orch_proc.stdout else ""
                    assert "Traceback" not in out and "stopping" in out
                finally:
                    _kill(orch_proc)
    run(body(), 80)
