"""A scientist's own plan as a task: listed by `ppu plans`, submitted with `ppu submit bluesky.plan`, approved
by a person (the lab's autonomy says manual for it), run on the instrument's RunEngine, documents kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from transport_helpers import free_port

from ppu.models import TaskState
from ppu.transport import PPUClient

TESTS = Path(__file__).parent


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                PPU_TEST_TILED_KEY="secret")  # the worker's key for the lab's Tiled server


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ppu.cli", *args], env=_env(), capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def lab(tmp_path: Path, tiled_server: str) -> Iterator[dict[str, Any]]:
    port = free_port()
    phys = {"simulated": True, "time_scale": 1e5, "lab": "plans-lab", "run_dir": str(tmp_path / "run"),
            "world": {"seed": 5}, "seed": 1}
    raw = {"name": "plans-lab", "run_dir": str(tmp_path), "store": f"sqlite:///{tmp_path / 'ppu.sqlite'}",
           "orchestrator": {"bind": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.2},
           "autonomy": {"default": "autonomous", "capabilities": {"bluesky.plan": "manual"}},
           "backends": [{"type": "synthesis_robot", "name": "robot", **phys},
                        {"type": "xrd", "name": "xrd", **phys, "metadata": {"beamline": "test-bench"},
                         "plans": ["count", "user_plans:repeat_pattern"],
                         "tiled": {"uri": tiled_server, "api_key_env": "PPU_TEST_TILED_KEY"}}]}
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(raw))
    procs = [subprocess.Popen([sys.executable, "-m", "ppu.cli", *a, "-c", str(path)], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for a in (["orchestrator"], ["worker"])]
    try:
        _until_registered(f"tcp://127.0.0.1:{port}", {"robot", "xrd"})
        yield {"path": path, "address": f"tcp://127.0.0.1:{port}", "docs": tmp_path / "run" / "documents",
               "tiled": tiled_server}
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)


def _until_registered(address: str, names: set[str]) -> None:
    with PPUClient(address, timeout=5) as client:
        for _ in range(600):
            try:
                rows = client.status()["backends"]
            except Exception:  # the orchestrator is still starting
                rows = []
            if names <= {r["name"] for r in rows if r.get("registered", True) and r.get("state") != "offline"}:
                return
            time.sleep(0.1)
    raise AssertionError(f"backends {names} did not register")


def test_ppu_plans_lists_the_allowed_plans_with_parameters(lab: dict[str, Any]) -> None:
    out = _cli("plans", "-c", str(lab["path"]))
    assert out.returncode == 0, out.stderr
    assert "repeat_pattern" in out.stdout and "sample_id" in out.stdout and "num" in out.stdout
    assert "count" in out.stdout and "detectors" in out.stdout


def test_a_user_plan_is_submitted_approved_run_and_its_documents_kept(lab: dict[str, Any]) -> None:
    with PPUClient(lab["address"], timeout=30) as client:
        for _ in range(8):  # the rare chemical failure: a chemist tries again
            [synth] = client.run([{"capability": "synthesize", "inputs": {"recipe": {
                "composition": {"Mg": 0.5, "Zn": 0.5}}}}], timeout=60)
            if synth.state == TaskState.succeeded:
                break
        sample = client.result(synth.id).outputs["sample_id"]  # type: ignore[union-attr]
        args = json.dumps({"plan": "repeat_pattern", "args": {"xrd": "xrd", "sample_id": sample, "num": 3}})
        sub = _cli("submit", "bluesky.plan", "--backend", "xrd", "--input", args, "-c", str(lab["path"]))
        assert sub.returncode == 0, sub.stderr
        task_id = sub.stdout.strip().split()[-1]
        waiting = _cli("approvals", "-c", str(lab["path"]))
        assert task_id in waiting.stdout
        pending = client.task(task_id)
        assert pending.state == TaskState.pending and pending.approval == "waiting"
        ok = _cli("approve", task_id, "--note", "drift check ok", "-c", str(lab["path"]))
        assert ok.returncode == 0, ok.stderr
        [done] = client.wait([task_id], timeout=60)
        assert done.state == TaskState.succeeded, client.result(task_id)
        res = client.result(task_id)
        assert res is not None and res.outputs["events"] == 3 and res.outputs["plan"] == "repeat_pattern"
        docs = [json.loads(line) for uid in res.outputs["run_uids"]
                for line in (lab["docs"] / f"{uid}.jsonl").read_text().splitlines()]
        [start] = [d for n, d in docs if n == "start"]
        assert start["plan_name"] == "count" and start["sample_id"] == sample
        assert start["task_id"] == task_id and start["beamline"] == "test-bench"
        assert sum(1 for n, _ in docs if n == "event") == 3
    # ... and the same run read back from the lab's Tiled server
    from tiled.client import from_uri

    tiled = from_uri(lab["tiled"], api_key="secret")
    try:
        [uid] = res.outputs["run_uids"]
        run = tiled[uid]
        assert run.metadata["start"]["task_id"] == task_id and run.metadata["start"]["sample_id"] == sample
        assert run.metadata["stop"]["exit_status"] == "success"
        pattern = run["primary"]["xrd_intensity"].read()  # three patterns, as numbers
        assert pattern.shape[0] == 3 and pattern.dtype.kind == "f"
    finally:
        tiled.context.close()


def test_a_plan_or_device_the_lab_does_not_allow_is_refused_before_anything_moves(lab: dict[str, Any]) -> None:
    with PPUClient(lab["address"], timeout=30) as client:
        ids = client.submit([
            {"capability": "bluesky.plan", "pin_backend": "xrd", "inputs": {"plan": "fly_everything", "args": {}}},
            {"capability": "bluesky.plan", "pin_backend": "xrd",
             "inputs": {"plan": "count", "args": {"detectors": ["robot"], "num": 1}}},
            {"capability": "bluesky.plan", "pin_backend": "xrd",
             "inputs": {"plan": "count", "args": {"detectors": ["xrd"], "bogus": 1}}}])
        for tid in ids:
            client.approve(tid, note="test")
        tasks = client.wait(ids, timeout=60)
        errors = [str(client.result(t.id).error) for t in tasks]  # type: ignore[union-attr]
    assert all(t.state == TaskState.failed for t in tasks), [t.state for t in tasks]
    assert "not allowed" in errors[0] and "fly_everything" in errors[0]
    assert "'robot' is not a device of this instrument" in errors[1]
    assert "bogus" in errors[2]
    assert all("nothing moved" in e for e in errors)


def test_the_shipped_epics_lab_lists_its_plans() -> None:
    out = _cli("plans", "-c", str(TESTS.parent / "labs" / "sim-lab-epics.yaml"))
    assert out.returncode == 0, out.stderr
    assert "rel_scan" in out.stdout and "xrd" in out.stdout and "sorption" in out.stdout
