"""One writer per store (issue 12 item 6, issue 13 item 2).

A second orchestrator on a held store refuses to start; the CLI's offline mode (a private
orchestrator reached through the same client) works only while no orchestrator holds the store;
a refused or unanswered request is an error with a non-zero exit, never a local write.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from store_backends import store_url_fixture  # noqa: F401  (store_url: SQLite and PostgreSQL)
from transport_helpers import free_port, run

from ppu.errors import StoreHeld
from ppu.models import ApprovalState
from ppu.orchestrator import Orchestrator
from ppu.store import Store
from ppu.transport import EmbeddedLab, generate_keys
from ppu.transport.client import PPUClient

TESTS = Path(__file__).parent


def test_a_second_orchestrator_on_a_held_store_refuses_to_start(store_url: str):
    async def body() -> None:
        first, second = Store(store_url), Store(store_url)
        a, b = Orchestrator(first), Orchestrator(second)
        await a.start()
        try:
            first.announce_writer("tcp://127.0.0.1:5999")
            with pytest.raises(StoreHeld) as refused:
                await b.start()
            assert f"pid {os.getpid()}" in refused.value.message
            assert "tcp://127.0.0.1:5999" in refused.value.message
            assert second.writer() is not None and second.writer()["address"] == "tcp://127.0.0.1:5999"
        finally:
            await a.close()
        assert second.writer() is None  # let go on close (and by the OS / server on a crash)
        await b.start()
        await b.close()
        first.close()
        second.close()
    run(body(), 30)


def _write_lab(tmp: Path, port: int, **extra: Any) -> Path:
    raw = {"name": "writer", "run_dir": str(tmp), "store": f"sqlite:///{tmp / 'ppu.sqlite'}",
           "orchestrator": {"bind": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.2},
           "autonomy": {"default": "manual"}, **extra}
    path = tmp / "lab.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(cfg: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               COLUMNS="250")
    if key is not None:
        env["PPU_KEY"] = key
    return subprocess.run([sys.executable, "-m", "ppu.cli", *args, "-c", str(cfg)], env=env, capture_output=True,
                          text=True, timeout=60)


def test_offline_mode_works_through_the_client_only_while_nobody_holds_the_store(tmp_path: Path):
    port = free_port()
    cfg = _write_lab(tmp_path, port)
    from ppu.config import load_lab

    lab = load_lab(cfg)
    # Nobody runs: the CLI answers through a private orchestrator, journaled like any other.
    r = _cli(cfg, "submit", "echo", "-i", '{"x": 1}')
    assert r.returncode == 0, r.stderr
    tid = r.stdout.strip().splitlines()[-1]
    assert Store(lab.store_url()).get_task(tid) is not None

    async def body() -> None:
        # An orchestrator holds the store but serves elsewhere: the lab's address does not answer.
        other = f"tcp://127.0.0.1:{free_port()}"
        async with EmbeddedLab(lab, bind=other) as client:
            assert (await client.task(tid)).approval is ApprovalState.waiting
            r = await asyncio.to_thread(_cli, cfg, "approve", tid)
            assert r.returncode != 0
            err = " ".join(r.stderr.split())
            assert f"an orchestrator holds the store but does not answer at tcp://127.0.0.1:{port}" in err, err
            assert "Traceback" not in r.stderr + r.stdout
            assert (await client.task(tid)).approval is ApprovalState.waiting  # nothing was written
            assert not [a for a in await client.audit() if a.action == "approve"]
    run(body(), 90)
    # Let go again: offline works again, and what it does is on the store.
    r = _cli(cfg, "approve", tid)
    assert r.returncode == 0, r.stderr
    t = Store(lab.store_url()).get_task(tid)
    assert t is not None and t.approval is ApprovalState.approved


def test_a_refused_key_is_an_error_and_never_a_local_write(tmp_path: Path):
    keys = tmp_path / "keys"
    for name in ("orchestrator", "worker", "client", "admin", "intruder"):
        generate_keys(name, keys)
    port = free_port()
    cfg = _write_lab(tmp_path, port, security={"curve": True, "keys_dir": str(keys), "clients": ["client"],
                                              "admins": ["admin"], "workers": {}})
    from ppu.config import load_lab

    lab = load_lab(cfg)

    async def body() -> None:
        async with EmbeddedLab(lab, bind=lab.orchestrator.bind, client_key="admin") as client:
            [tid] = await client.submit([{"capability": "echo", "inputs": {"x": 1}}])
            assert (await client.task(tid)).approval is ApprovalState.waiting
            r = await asyncio.to_thread(_cli, cfg, "approve", tid, key="intruder")
            assert r.returncode != 0, r.stdout
            assert "approved" not in r.stdout and "Traceback" not in r.stderr + r.stdout
            assert "does not answer" in " ".join(r.stderr.split())
            assert (await client.task(tid)).approval is ApprovalState.waiting  # still waiting
            assert not [a for a in await client.audit() if a.action == "approve"]
            # the same command with a key the orchestrator knows goes through
            r = await asyncio.to_thread(_cli, cfg, "approve", tid, key="admin")
            assert r.returncode == 0, r.stderr
            assert (await client.task(tid)).approval is ApprovalState.approved
    run(body(), 90)


def test_the_offline_client_is_the_same_client(tmp_path: Path):
    """The private orchestrator speaks the protocol: a plain PPUClient works against it."""
    from ppu.config import load_lab
    from ppu.transport.serve import private_orchestrator

    lab = load_lab(_write_lab(tmp_path, free_port()))
    with private_orchestrator(lab) as address, PPUClient(address) as client:
        assert address.startswith("ipc://")
        [tid] = client.submit([{"capability": "echo", "inputs": {"x": 3}}])
        assert client.approvals()[0]["task_id"] == tid
        with pytest.raises(StoreHeld):  # while it runs, it holds the store like any orchestrator
            with private_orchestrator(lab):
                pass
    assert Store(lab.store_url()).writer() is None
