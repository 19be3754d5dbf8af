"""The Prefect flow runs the campaign as a subprocess, with a clean stderr and Prefect's home in the run dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_only_repeatable_steps_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPU_RUN_DIR", str(tmp_path))  # where Prefect's home goes if this import is first
    import importlib

    flow_mod = importlib.import_module("ppu.flows.campaign")
    assert flow_mod.workflow_step.retries == 0  # declared workflow steps are physical: never re-run
    assert flow_mod.screen.retries > 0 and flow_mod.learn.retries > 0 and flow_mod.propose.retries > 0
    assert flow_mod.closed_loop.name == "closed-loop-campaign"
    assert issubclass(flow_mod.FlowLoop, flow_mod.CampaignLoop)
