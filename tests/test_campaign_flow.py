"""The Prefect flow runs the campaign as a subprocess, with a clean stderr and Prefect's home in the run dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_flow_runs_cleanly_under_prefect(tmp_path: Path) -> None:
    cfg = tmp_path / "small.yaml"
    cfg.write_text("name: flowtest\ntime_scale: 100000\nworld: {pool_size: 60}\nbudget: {max_syntheses: 4}\n"
                   "screening: {top_k: 20, prior_points: 20}\n")
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["HOME"] = str(tmp_path / "home")  # anything written to ~/.prefect would show up here
    proc = subprocess.run([sys.executable, "-m", "ppu.flows.campaign", str(cfg), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=280, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "CancelledError" not in proc.stderr, proc.stderr[-3000:]
    assert "ERROR" not in proc.stderr, proc.stderr[-3000:]
    assert (run_dir / "summary.json").exists() and (run_dir / "prefect-home").is_dir()
    assert not (tmp_path / "home" / ".prefect").exists()
    # what a user of Prefect looks for: the summary as a markdown artifact, task runs tagged with the
    # campaign and named after the workflow's steps, the flow's result persisted
    got = _what_prefect_holds(run_dir, env)
    art = got["arts"]["campaign-flowtest"]
    assert art[0] == "markdown" and "| best found |" in art[1], art
    assert f"[gantt.png]({(run_dir / 'gantt.png').resolve().as_uri()})" in art[1], art[1]
    assert "campaign:flowtest" in got["tags"]
    assert {"synthesise", "xrd"} <= set(got["names"])
    assert got["results"] == [json.loads((run_dir / "summary.json").read_text())]


@pytest.mark.slow
def test_a_declared_lab_campaign_runs_as_the_flow(tmp_path: Path) -> None:
    """A campaign file that declares its variables and names its lab (flowchem.yaml) runs inside the flow."""
    raw = yaml.safe_load((ROOT / "campaigns/flowchem.yaml").read_text())
    raw.update(name="fc-flow", budget={"experiments": 3})
    raw["optimiser"] = {**raw.get("optimiser", {}), "n_init": 2}
    if raw.get("screening"):
        raw["screening"] = {**raw["screening"], "size": 16}
    (tmp_path / "campaigns").mkdir()
    cfg = tmp_path / "campaigns" / "fc.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "ppu.flows.campaign", str(cfg), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=280, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "CancelledError" not in proc.stderr, proc.stderr[-3000:]
    assert "best measured yield" in proc.stdout  # the loop's own summary table, on the caller's console
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["campaign"] == "fc-flow" and summary["experiments"] == 3
    # the loop's files joined the run folder, beside the flow's own (its Prefect home is still there)
    assert (run_dir / "best_vs_experiments.png").is_file() and (run_dir / "decisions.jsonl").is_file()
    assert not (run_dir / ".lab-run").exists() and (run_dir / "prefect-home").is_dir()
    got = _what_prefect_holds(run_dir, env)
    art = got["arts"]["campaign-fc-flow"]
    assert art[0] == "markdown" and "| experiments | 3 |" in art[1], art
    plot = run_dir / "best_vs_experiments.png"
    assert f"[{plot.name}]({plot.resolve().as_uri()})" in art[1], art[1]
    assert "campaign:fc-flow" in got["tags"]
    assert {"react", "hplc"} <= set(got["names"]), got["names"]  # each workflow step a task run, by its name
    assert got["results"] == [summary]


def _what_prefect_holds(run_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Artifacts, task-run tags and names, and the flow runs' results read back from their storage."""
    probe = ("import asyncio, json\nfrom prefect.client.orchestration import get_client\n"
             "async def main():\n    async with get_client() as c:\n"
             "        arts = await c.read_artifacts()\n        runs = await c.read_task_runs()\n"
             "        flows = await c.read_flow_runs()\n"
             "        print(json.dumps({'arts': {a.key: [a.type, str(a.data)] for a in arts if a.key},\n"
             "                          'tags': sorted({t for r in runs for t in r.tags}),\n"
             "                          'names': sorted({r.name for r in runs}),\n"
             "                          'results': [await f.state.aresult() for f in flows]}))\n"
             "asyncio.run(main())\n")
    env = {**env, "PREFECT_HOME": str(run_dir / "prefect-home"), "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
           "PREFECT_LOGGING_LEVEL": "ERROR"}
    seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert seen.returncode == 0, seen.stderr[-2000:]
    got: dict[str, Any] = json.loads(seen.stdout.strip().splitlines()[-1])
    return got


def test_only_repeatable_steps_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPU_RUN_DIR", str(tmp_path))  # where Prefect's home goes if this import is first
    import importlib

    flow_mod = importlib.import_module("ppu.flows.campaign")
    assert flow_mod.workflow_step.retries == 0  # declared workflow steps are physical: never re-run
    assert flow_mod.screen.retries > 0 and flow_mod.learn.retries > 0 and flow_mod.propose.retries > 0
    assert flow_mod.lab_step.retries == 0 and flow_mod.lab_screen.retries > 0 and flow_mod.lab_propose.retries > 0
    assert issubclass(flow_mod.FlowLabLoop, flow_mod.LabLoop)
    assert flow_mod.closed_loop.name == "closed-loop-campaign"
    assert issubclass(flow_mod.FlowLoop, flow_mod.CampaignLoop)
