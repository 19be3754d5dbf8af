"""``store: {durability: process}``: the orchestrator process is SIGKILLed mid-stream, nothing acknowledged is lost.

Real processes: the orchestrator and a worker are ``ppu`` subprocesses, the client submits and waits
from this process. With synchronous=NORMAL a commit is in the operating system's page cache, not
fsynced; a killed process leaves it there, so every submission that was acknowledged is in the
store, every result a wait returned is recorded, and after a restart every task ends exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from transport_helpers import HB, free_port, run, until

from ppu.errors import PPUError
from ppu.models import TaskState
from ppu.store import Store
from ppu.transport import AsyncPPUClient

TESTS = Path(__file__).parent


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "ppu.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_sigkill_of_the_orchestrator_loses_no_acknowledged_task(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'ppu.sqlite'}"
    port = free_port()
    cfg = tmp_path / "lab.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "process-durability", "run_dir": str(tmp_path),
        "store": {"url": url, "durability": "process"},
        "orchestrator": {"bind": f"tcp://127.0.0.1:{port}", "heartbeat_s": HB, "missed_heartbeats": 5,
                         "backoff_base_s": 0.0, "restart_grace_s": 2.0},
        "backends": [{"type": "echo", "name": "e1", "slots": 4, "duration_s": 0.0}]}))
    addr = f"tcp://127.0.0.1:{port}"

    async def body() -> None:
        orch = _spawn("orchestrator", "--config", str(cfg))
        worker = _spawn("worker", "--config", str(cfg), "--backend", "e1")
        client = AsyncPPUClient(addr, timeout=2)
        acked: list[str] = []
        finished: dict[str, TaskState] = {}
        stop = asyncio.Event()

        async def submitter() -> None:  # one task per request, as fast as they are acknowledged
            i = 0
            while not stop.is_set():
                try:
                    acked.extend(await client.submit([{"capability": "echo", "inputs": {"x": i}}]))
                except PPUError:  # not answering: the orchestrator is gone; that one was never acknowledged
                    return
                i += 1

        async def waiter() -> None:  # results acknowledged to the client while it runs
            seen = 0
            while not stop.is_set():
                if seen < len(acked):
                    try:
                        [t] = await client.wait([acked[seen]], timeout=1)
                    except PPUError:
                        return
                    finished[t.id] = t.state
                    seen += 1
                else:
                    await asyncio.sleep(0.005)

        try:
            await until(client.ping, 20, "the orchestrator to answer")
            jobs = [asyncio.ensure_future(submitter()), asyncio.ensure_future(waiter())]
            await until(lambda: len(acked) >= 60 and len(finished) >= 20, 30, "a stream of tasks under way")
            _kill(orch)  # mid-stream: submissions and results are in flight
            stop.set()
            await asyncio.gather(*jobs)
            assert finished and all(s is TaskState.succeeded for s in finished.values())

            store = Store(url, "process")  # read what the killed process left
            try:
                kept = store.get_tasks(acked)
                assert set(kept) == set(acked)  # every acknowledged submission is there
                for tid in finished:  # and every result a client was given
                    assert kept[tid].state is TaskState.succeeded
                    assert [r.status.value for r in store.results_for(tid)] == ["succeeded"]
            finally:
                store.close()

            orch = _spawn("orchestrator", "--config", str(cfg))  # restart: the rest ends, each exactly once
            await client.close()
            client = AsyncPPUClient(addr, timeout=5)
            await until(client.ping, 20, "the restarted orchestrator to answer")
            done = await client.wait(acked, timeout=30)
            assert [t.state for t in done] == [TaskState.succeeded] * len(acked)
            store = Store(url, "process")
            try:
                for tid in acked:
                    ends = [j["dst"] for j in store.journal_for(tid) if j["dst"] == "succeeded"]
                    assert ends == ["succeeded"], (tid, store.journal_for(tid))
                    assert len([r for r in store.results_for(tid) if r.status.value == "succeeded"]) == 1
            finally:
                store.close()
        finally:
            await client.close()
            _kill(worker)
            _kill(orch)
    run(body(), 120)
