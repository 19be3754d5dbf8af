"""A campaign drives a lab that is already running (issue 15, item 7): an orchestrator and a worker
started as separate processes from a lab file, reached through the client only."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from transport_helpers import free_port

from ppu.transport.client import PPUClient

BACKENDS = ("robot-1", "robot-2", "xrd-1", "sorption-1")


def _ppu(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ppu.cli", *args], capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def _started(tmp_path: Path, lab: dict[str, Any], names: set[str]) -> Iterator[Path]:
    """``lab`` written to a file and started as two processes (an orchestrator, a worker) until every
    backend in ``names`` has registered; stopped (SIGTERM, then SIGKILL) afterwards."""
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(lab))
    procs = [subprocess.Popen([sys.executable, "-m", "ppu.cli", cmd, "-c", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for cmd in ("orchestrator", "worker")]
    client = PPUClient(lab["orchestrator"]["bind"], timeout=10)
    try:
        for _ in range(600):  # bounded: the orchestrator up and every backend registered
            try:
                st = client.status()
            except Exception:
                st = None
            if st and {b["name"] for b in st["backends"] if b.get("registered")} >= names:
                break
            assert all(p.poll() is None for p in procs), [p.stdout.read() for p in procs if p.stdout]
            time.sleep(0.1)
        else:
            pytest.fail("the worker never registered the lab's backends")
        yield path
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


@pytest.fixture
def running_lab(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    address = f"tcp://127.0.0.1:{free_port()}"
    run = str(tmp_path / "lab")
    phys = {"simulated": True, "time_scale": 100_000, "lab": "real", "run_dir": run, "world": {"seed": 0}}
    lab = {"name": "real", "run_dir": run, "packs": ["mof"], "orchestrator": {"bind": address, "heartbeat_s": 0.5},
           "backends": [{"type": "synthesis_robot", "name": "robot-1", **phys},
                        {"type": "synthesis_robot", "name": "robot-2", **phys},
                        {"type": "xrd", "name": "xrd-1", **phys},
                        {"type": "gas_sorption", "name": "sorption-1", **phys}]}
    with _started(tmp_path, lab, set(BACKENDS)) as path:
        yield path, address


def _campaign(tmp_path: Path, lab: Path, **extra: object) -> Path:
    raw = {"name": "on-real", "seed": 0, "time_scale": 100_000, "simulated": False, "lab_config": str(lab),
           "world": {"pool_size": 30}, "objective": {"purity_min": 0.85}, "budget": {"max_syntheses": 4},
           "screening": {"enabled": False}, "parallel": {"synthesis_robots": 2, "n_init": 2}, **extra}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_campaign_runs_on_a_lab_started_as_separate_processes(tmp_path: Path,
                                                                   running_lab: tuple[Path, str]) -> None:
    lab, address = running_lab
    out = _ppu("campaign", "run", str(_campaign(tmp_path, lab)), "--run-dir", str(tmp_path / "run"),
               "--no-prefect", "--no-dashboard")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["physical_experiments"] == 4 and "true_optimum" not in summary  # no truth read
    assert len((tmp_path / "run" / "decisions.jsonl").read_text().splitlines()) == 4
    client = PPUClient(address, timeout=10)
    try:  # the work is in the running lab's own journal, tagged with the campaign
        tasks = client.tasks(None, "on-real", limit=100)
    finally:
        client.close()
    caps = {t.capability for t in tasks}
    assert "synthesize" in caps and "characterize.xrd" in caps


def test_a_step_the_running_lab_does_not_offer_is_named(tmp_path: Path, running_lab: tuple[Path, str]) -> None:
    lab, _ = running_lab
    wf = {"steps": [{"name": "synthesise", "capability": "synthesize", "inputs": {"recipe": "$candidate"}},
                    {"name": "xrd", "capability": "characterize.xrd", "inputs": {"sample_id": "$synthesise.sample_id"}},
                    {"name": "gap", "capability": "measure.uvvis", "inputs": {"sample_id": "$synthesise.sample_id"}}],
          "outputs": {"purity": "xrd.purity", "co2_uptake": "gap.band_gap_ev"}}
    out = _ppu("campaign", "run", str(_campaign(tmp_path, lab, workflow=wf)), "--run-dir", str(tmp_path / "run"),
               "--no-prefect", "--no-dashboard")
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "workflow.steps.2.capability" in text and "Traceback" not in text, text


def test_no_running_lab_is_a_clear_error(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(yaml.safe_dump({"name": "gone", "run_dir": str(tmp_path / "lab"), "packs": ["mof"],
                                   "orchestrator": {"bind": f"tcp://127.0.0.1:{free_port()}"}}))
    out = _ppu("campaign", "run", str(_campaign(tmp_path, lab)), "--run-dir", str(tmp_path / "run"), "--no-prefect",
               "--no-dashboard")
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "no orchestrator answers" in text and "Traceback" not in text, text


def test_a_declared_campaign_runs_on_a_flow_lab_started_as_separate_processes(tmp_path: Path) -> None:
    """The flow lab's own campaign file (VOCS, workflow, twin screen) with ``simulated: false``: the same
    loop drives an orchestrator and a worker started from the lab file, and reads no simulated truth."""
    root = Path(__file__).resolve().parent.parent
    lab = yaml.safe_load((root / "labs" / "flowchem-sim.yaml").read_text())
    address = f"tcp://127.0.0.1:{free_port()}"
    run = str(tmp_path / "lab")
    lab.update({"run_dir": run, "orchestrator": {"bind": address, "heartbeat_s": 0.5},
                "autonomy": {"default": "autonomous"}})  # the lab's people approve nothing in a test
    for b in lab["backends"]:
        if "run_dir" in b:
            b.update({"run_dir": run, "time_scale": 1e6})
    campaign = yaml.safe_load((root / "campaigns" / "flowchem.yaml").read_text())
    campaign.update({"name": "flow-on-real", "simulated": False, "budget": {"experiments": 5},
                     "optimiser": {"generator": "botorch", "n_init": 3, "in_flight": 2},
                     "screening": {**campaign["screening"], "size": 64}})
    with _started(tmp_path, lab, {"reactor", "hplc", "twin"}) as lab_path:
        campaign["lab"] = str(lab_path)
        path = tmp_path / "campaign.yaml"
        path.write_text(yaml.safe_dump(campaign))
        out = _ppu("campaign", "run", str(path), "--run-dir", str(tmp_path / "run"), "--no-prefect",
                   "--no-dashboard")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        client = PPUClient(address, timeout=10)
        try:  # the work is in the running lab's own journal, tagged with the campaign
            tasks = client.tasks(None, "flow-on-real", limit=200)
        finally:
            client.close()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["experiments"] == 5 and "true_optimum" not in summary, summary  # no truth read
    lines = [json.loads(x) for x in (tmp_path / "run" / "decisions.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(line["status"] in ("measured", "clogged") for line in lines)
    by_cap: dict[str, int] = {}
    for t in tasks:
        by_cap[t.capability] = by_cap.get(t.capability, 0) + 1
    # each step once: a reaction per experiment, an analysis per reaction that gave a fraction (how many
    # clog depends on the recipes the optimiser picks, which depends on the order results come back in)
    measured = sum(line["status"] == "measured" for line in lines)
    assert by_cap.get("react.flow") == 5 and by_cap.get("measure.hplc", 0) == measured >= 1, (by_cap, measured)
    assert by_cap.get("predict.yield", 0) >= 1  # the screen ran on the lab's twin
