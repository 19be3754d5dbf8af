"""Issue 12.9: cancelling the campaign's Prefect flow run winds the campaign down.

A real flow run (``python -m ppu.flows.campaign``, Prefect in local ephemeral mode, its home under
the run folder) is cancelled with ``prefect flow-run cancel`` while syntheses run. Afterwards the
store holds no live task of the campaign (running plans were aborted, queued work cancelled), the
flow run is Cancelled in Prefect, ``summary.json`` says what was done, and nothing printed a
traceback. Before the fix the store kept ``ready`` and ``running`` tasks and there was no summary.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LIVE = ("pending", "ready", "assigned", "running")


def _states(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return list(conn.execute("SELECT capability, state FROM tasks"))
    except sqlite3.OperationalError:  # created but not yet migrated
        return []


def _prefect_env(run_dir: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"HOME": str(home), "PREFECT_HOME": str(run_dir / "prefect-home"),
                "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING"})
    return env


def _stop_while_running(cfg: Path, run_dir: Path, home: Path, db: Path, capability: str,
                        how: str) -> tuple[subprocess.Popen[str], str, str, str]:
    """The campaign's flow run started as a process; once a ``capability`` task runs (in the store
    ``db``), cancelled through Prefect or sent SIGTERM. (process, flow run id, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["HOME"] = str(home)
    proc = subprocess.Popen([sys.executable, "-m", "ppu.flows.campaign", str(cfg), "--run-dir", str(run_dir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(c == capability and s == "running" for c, s in _states(db)):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"no {capability} task started"
            time.sleep(0.3)
        flow_run = json.loads((run_dir / "flow_run.json").read_text())["id"]
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            cancel = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "cancel", flow_run],
                                    cwd=cfg.parent, env=_prefect_env(run_dir, home), capture_output=True, text=True,
                                    timeout=120)
            assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, flow_run, out, err


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["prefect flow-run cancel", "SIGTERM"])
def test_cancelling_or_killing_the_flow_run_winds_the_campaign_down(tmp_path: Path, how: str) -> None:
    """`prefect flow-run cancel`: on_cancellation, run while the lab is up, ends Cancelled. SIGTERM of the
    flow's process: Prefect's on_crashed hook, after the lab went down, through its store offline."""
    cfg = tmp_path / "cancel.yaml"
    # A synthesis takes about 3 s of wall time: the cancel lands while plans run and more are queued.
    cfg.write_text("name: canceltest\ntime_scale: 5000\nworld: {pool_size: 40}\nbudget: {max_syntheses: 30}\n"
                   "screening: {enabled: false}\nparallel: {synthesis_robots: 2, queue_ahead: 2}\n")
    run_dir = tmp_path / "run"
    home = tmp_path / "home"
    proc, flow_run, out, err = _stop_while_running(cfg, run_dir, home, run_dir / "ppu.sqlite", "synthesize", how)
    if how == "SIGTERM":
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "stopped by signal" in err and "summary.json" in err, err[-3000:]
    else:
        assert proc.returncode == 1, err[-3000:]
        assert "ended Cancelled" in err and "summary.json" in err, err[-3000:]
    assert "Traceback" not in err + out and "CancelledError" not in err + out, err[-3000:]

    states = _states(run_dir / "ppu.sqlite")
    assert states and not [s for s in states if s[1] in LIVE], states  # nothing left behind
    assert ("synthesize", "cancelled") in states  # the running (or queued) syntheses were cancelled
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["campaign"] == "canceltest"
    assert summary["ended"] == ("Crashed" if how == "SIGTERM" else "Cancelling")
    assert summary["cancelled"] and all(h["state"] == "needs_review" for h in summary["handed_over"])
    assert sum(summary["tasks_by_state"].values()) == len(states)

    inspect = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "inspect", flow_run], cwd=tmp_path,
                             env=_prefect_env(run_dir, home), capture_output=True, text=True, timeout=120)
    expected = "CRASHED" if how == "SIGTERM" else "CANCELLED"
    assert expected in inspect.stdout, inspect.stdout[-2000:] + inspect.stderr[-2000:]
    assert not (home / ".prefect").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["prefect flow-run cancel", "SIGTERM"])
def test_a_declared_lab_campaign_is_wound_down_the_same_way(tmp_path: Path, how: str) -> None:
    """The flow lab's declared campaign (its own loop, each step a task run): cancelled while reactions
    run, no task of it stays live, the flow run ends Cancelled (or Crashed), summary.json says what was
    done; its lab's store is in the run folder (cancelled: the run ended and its files joined) or in
    the run's stage folder (SIGTERM: the lab went down with the process)."""
    import yaml

    raw = yaml.safe_load((ROOT / "campaigns" / "flowchem.yaml").read_text())
    raw.update(name="fc-cancel", time_scale=300, lab=str(ROOT / "labs" / "flowchem-sim.yaml"),
               budget={"experiments": 30}, optimiser={"generator": "random", "in_flight": 2})
    raw.pop("screening", None)
    cfg = tmp_path / "fc-cancel.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    stage_db = run_dir / ".lab-run" / "ppu.sqlite"
    home = tmp_path / "home"
    proc, _, out, err = _stop_while_running(cfg, run_dir, home, stage_db, "react.flow", how)
    if how == "SIGTERM":
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    else:
        assert proc.returncode == 1 and "ended Cancelled" in err, err[-3000:]
    assert "Traceback" not in err + out and "CancelledError" not in err + out, err[-3000:]
    db = stage_db if how == "SIGTERM" else run_dir / "ppu.sqlite"
    states = _states(db)
    assert states and not [s for s in states if s[1] in LIVE], states  # nothing left behind
    assert ("react.flow", "cancelled") in states
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["campaign"] == "fc-cancel" and summary["cancelled"], summary
    assert summary["ended"] == ("Crashed" if how == "SIGTERM" else "Cancelling")
    assert all(h["state"] == "needs_review" for h in summary["handed_over"])
    reacted = [s for c, s in states if c == "react.flow"]
    assert len(reacted) < 30  # it stopped: no new experiment was proposed after the cancel
