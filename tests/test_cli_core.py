"""The CLI against a lab's store: errors say what to do and exit non-zero; actions are journaled."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from ppu import cli
from ppu.cli import app

runner = CliRunner()
cli.console.width = 250  # tables wide enough to show whole ids


def _lab(tmp_path: Path) -> Path:
    p = tmp_path / "lab.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path / "run")}))
    return p


def test_submit_then_list_then_cancel(tmp_path: Path):
    lab = _lab(tmp_path)
    r = runner.invoke(app, ["submit", "echo", "--input", '{"x": 2}', "-c", str(lab)])
    assert r.exit_code == 0, r.output
    tid = r.output.strip().splitlines()[-1]
    r = runner.invoke(app, ["tasks", "-c", str(lab), "--state", "ready"])
    assert tid in r.output
    r = runner.invoke(app, ["cancel", tid, "-c", str(lab)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["tasks", "-c", str(lab), "--state", "cancelled"])
    assert tid in r.output


def test_errors_name_the_problem_and_what_to_do(tmp_path: Path):
    lab = _lab(tmp_path)
    r = runner.invoke(app, ["submit", "teleport", "-c", str(lab)])
    assert r.exit_code == 2 and "unknown capability" in r.output and "what to do" in r.output
    r = runner.invoke(app, ["submit", "echo", "--input", "{x: 1", "-c", str(lab)])
    assert r.exit_code == 2 and "not valid JSON" in r.output
    r = runner.invoke(app, ["submit", "echo", "--input", json.dumps({"x": "a lot"}), "-c", str(lab)])
    assert r.exit_code == 2 and "inputs.x" in r.output
    r = runner.invoke(app, ["cancel", "t-nope", "-c", str(lab)])
    assert r.exit_code == 2 and "unknown task" in r.output
    r = runner.invoke(app, ["status", "-c", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["review", "t-x", "-c", str(lab)])
    assert r.exit_code == 2 and "exactly one" in r.output


def test_humans_in_charge_commands(tmp_path: Path):
    lab = _lab(tmp_path)
    r = runner.invoke(app, ["autonomy", "manual", "--capability", "echo", "-c", str(lab)])
    assert r.exit_code == 0, r.output
    tid = runner.invoke(app, ["submit", "echo", "-i", '{"x": 1}', "-c", str(lab)]).output.strip().splitlines()[-1]
    r = runner.invoke(app, ["approvals", "-c", str(lab)])
    assert tid in r.output and "manual" in r.output
    r = runner.invoke(app, ["reject", tid, "--reason", "not now", "-c", str(lab)])
    assert r.exit_code == 0, r.output
    assert "nothing waits" in runner.invoke(app, ["approvals", "-c", str(lab)]).output
    assert "no task waits for review" in runner.invoke(app, ["review", "-c", str(lab)]).output
    r = runner.invoke(app, ["stop", "-c", str(lab)])
    assert r.exit_code == 0 and "nothing to stop" in r.output  # this lab has no physical backend
    out = tmp_path / "audit.jsonl"
    r = runner.invoke(app, ["audit", "--json", str(out), "-c", str(lab)])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["action"] for x in lines] == ["autonomy", "approval_required", "reject"]
    assert runner.invoke(app, ["samples", "-c", str(lab)]).exit_code == 0
    r = runner.invoke(app, ["samples", "show", "S-nope", "-c", str(lab)])
    assert r.exit_code == 2 and "unknown sample" in r.output
    r = runner.invoke(app, ["autonomy", "reckless", "-c", str(lab)])
    assert r.exit_code == 2 and "manual, supervised or autonomous" in r.output


def test_listings_print_json_lines_or_rows_alone(tmp_path: Path):
    """--json on every listing: one JSON object per line and nothing else on stdout; without it, a pipe gets
    one tab-separated line per row (the remarks for a person, such as an empty list, go to stderr)."""
    lab = _lab(tmp_path)
    assert runner.invoke(app, ["autonomy", "manual", "--capability", "echo", "-c", str(lab)]).exit_code == 0
    ids = [runner.invoke(app, ["submit", "echo", "-i", json.dumps({"x": i}), "-c", str(lab)]).stdout.split()[-1]
           for i in range(3)]
    r = runner.invoke(app, ["approvals", "--json", "-c", str(lab)])
    assert r.exit_code == 0, r.output
    waiting = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(w["task_id"] for w in waiting) == sorted(ids) and {w["capability"] for w in waiting} == {"echo"}
    r = runner.invoke(app, ["approvals", "-c", str(lab)])
    assert sorted(line.split("\t")[0] for line in r.stdout.splitlines()) == sorted(ids)
    assert runner.invoke(app, ["reject", ids[0], "--reason", "not now", "-c", str(lab)]).exit_code == 0
    r = runner.invoke(app, ["audit", "--json", "-", "-c", str(lab)])
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["action"] for line in r.stdout.splitlines()] == \
        ["autonomy", "approval_required", "approval_required", "approval_required", "reject"]
    for argv in (["samples", "--json"], ["review", "--json"], ["review"], ["samples"]):
        r = runner.invoke(app, [*argv, "-c", str(lab)])
        assert r.exit_code == 0 and r.stdout == "", (argv, r.output)  # nothing to list: nothing on stdout
    assert "no task waits for review" in runner.invoke(app, ["review", "-c", str(lab)]).stderr
    r = runner.invoke(app, ["review", ids[1], "--retry", "--json", "-c", str(lab)])
    assert r.exit_code == 2 and "goes with the list" in r.output
