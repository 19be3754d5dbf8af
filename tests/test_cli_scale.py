"""The CLI on a lab at scale: thousands of tasks listed, thousands running (a user trial's defects).

``ppu tasks`` in a pipe printed a table wrapped to 80 columns, several lines per task, and took a
minute for 60,000 tasks (rich measured every cell); ``ppu status`` printed one row per running
task; nothing printed JSON. Driven as ``tests/test_cli_core.py`` drives it: typer's runner, whose
stdout is not a terminal, as in a pipe.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from ppu import cli
from ppu.backends.base import ProgressFn, TaskRun
from ppu.backends.echo import EchoBackend, EchoConfig
from ppu.cli import app
from ppu.config import load_lab
from ppu.models import BackendKind, CapabilityOffer, Result, TaskSpec
from ppu.transport.client import PPUClient
from ppu.transport.lab import LabThread
from ppu.transport.serve import private_orchestrator

runner = CliRunner()
LISTED = 2500  # three pages of the protocol's 1,000 rows


def _lab_file(tmp_path: Path) -> Path:
    p = tmp_path / "lab.yaml"
    p.write_text(yaml.safe_dump({"name": "scale", "run_dir": str(tmp_path / "run")}))
    return p


@pytest.fixture(scope="module")
def listed_lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A lab whose store holds LISTED ready tasks (no backend runs them); their ids, newest first."""
    lab_file = _lab_file(tmp_path_factory.mktemp("listed"))
    lab = load_lab(lab_file)
    lab.load_packs()
    ids: list[str] = []
    with private_orchestrator(lab) as address, PPUClient(address, timeout=60) as c:
        for start in range(0, LISTED, 1000):
            ids += c.submit([TaskSpec(capability="echo", inputs={"x": float(i)}, campaign=f"c{i % 3}")
                             for i in range(start, min(LISTED, start + 1000))])
    return lab_file, ids[::-1]


def test_piped_tasks_print_one_whole_line_per_task(listed_lab: tuple[Path, list[str]]):
    lab, ids = listed_lab
    r = runner.invoke(app, ["tasks", "--limit", str(LISTED + 100), "-c", str(lab)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == LISTED, lines[:5]  # no title, no header, no wrapped rows
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == len(cli.TASK_COLUMNS) for row in rows)
    assert [row[0] for row in rows] == ids  # whole ids, newest first
    assert {(row[1], row[2]) for row in rows} == {("echo", "ready")}
    assert Counter(row[6] for row in rows) == Counter(f"c{i % 3}" for i in range(LISTED))


def test_tasks_json_lines_hold_every_task_asked_for(listed_lab: tuple[Path, list[str]]):
    lab, ids = listed_lab
    r = runner.invoke(app, ["tasks", "--json", "--limit", str(LISTED + 100), "-c", str(lab)])
    assert r.exit_code == 0, r.output
    docs = [json.loads(line) for line in r.stdout.splitlines()]  # nothing else on stdout
    assert [d["id"] for d in docs] == ids
    assert all(d["state"] == "ready" and d["capability"] == "echo" for d in docs)
    r = runner.invoke(app, ["tasks", "--json", "--limit", "1200", "--campaign", "c1", "-c", str(lab)])
    assert r.exit_code == 0, r.output
    in_c1 = [tid for tid, d in zip(ids, docs, strict=True) if d["campaign"] == "c1"]
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == in_c1  # all 833 of them


def test_plain_gives_piped_lines_and_does_not_mix_with_json(listed_lab: tuple[Path, list[str]]):
    lab, ids = listed_lab
    r = runner.invoke(app, ["tasks", "--plain", "--limit", "30", "-c", str(lab)])
    assert r.exit_code == 0, r.output
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ids[:30]
    r = runner.invoke(app, ["tasks", "--plain", "--json", "-c", str(lab)])
    assert r.exit_code == 2 and "--plain and --json" in r.output and r.stdout == ""


class _Anneal(EchoBackend):
    """A physical instrument that says what it is doing, then takes its time (echo's inputs and outputs)."""

    kind: ClassVar[BackendKind] = BackendKind.physical

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="echo", fidelity=1.0, duration_s=3600.0)]

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        for run in batch:
            said = progress(run.task_id, 0.4, "annealing at 180 C")
            if inspect.isawaitable(said):
                await said
        await asyncio.sleep(3600)
        raise AssertionError("the test ends first")


def _slow_echo(name: str, slots: int) -> EchoBackend:
    return EchoBackend(EchoConfig(type="echo", name=name, slots=slots, batch_size=100, batch_wait_s=0.05,
                                  duration_s=3600.0, time_scale=1.0))


@pytest.fixture
def busy_lab(tmp_path: Path) -> Iterator[tuple[Path, str, PPUClient]]:
    """A lab served in this process with about 2,000 echo tasks running on two backends and two physical
    ones on an instrument that reports progress; the lab file, the address, a client."""
    lab_file = _lab_file(tmp_path)
    lab = load_lab(lab_file)
    backends = [_slow_echo("gpu-a", 14), _slow_echo("gpu-b", 6),
                _Anneal(EchoConfig(type="echo", name="furnace", slots=2))]
    with LabThread(lab, "tcp://127.0.0.1:0", backends=backends) as lt, lt.client(timeout=30) as c:
        c.submit([TaskSpec(capability="echo", inputs={"x": -1.0}, pin_backend="furnace"),
                  TaskSpec(capability="echo", inputs={"x": -2.0}, pin_backend="furnace")])
        for start in range(0, 2000, 1000):
            c.submit([TaskSpec(capability="echo", inputs={"x": float(i)}, pin_backend="gpu-a" if i % 4 else "gpu-b")
                      for i in range(start, start + 1000)])

        def running() -> int:
            return sum(s.get("running", 0) for s in c.status()["queues"].values())

        deadline, last = time.monotonic() + 30, -1
        while (n := running()) != last or n < 1000:  # until the batches have all started
            assert time.monotonic() < deadline, f"only {n} running"
            last = n
            time.sleep(0.3)
        yield lab_file, lt.address, c


def test_status_counts_many_running_tasks_in_a_few_lines(busy_lab: tuple[Path, str, PPUClient]):
    lab, address, c = busy_lab
    listed = c.tasks("running", limit=10_000)
    total = len(listed)
    groups = Counter((t.backend, t.capability) for t in listed)
    assert total > 1000 and set(groups) == {("gpu-a", "echo"), ("gpu-b", "echo"), ("furnace", "echo")}
    cli.console.width = 250
    r = runner.invoke(app, ["status", "--connect", address, "-c", str(lab)])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert len(out.splitlines()) < 60, out  # it printed a row per running task (200 of them, cut by the orchestrator)
    assert f"running ({total})" in out
    for (backend, cap), n in groups.items():
        assert any(line.split()[:3] == [backend, cap, str(n)] for line in
                   (ln.replace("│", " ").replace("┃", " ") for ln in out.splitlines())), (backend, n, out)
    assert out.count("annealing at 180 C") == 2  # the instrument's tasks come first, with what they are doing
    assert f"{total - cli.SHOWN_RUNNING} more: ppu tasks --state running" in out


def test_status_json_is_one_document_and_nothing_else(busy_lab: tuple[Path, str, PPUClient]):
    lab, address, c = busy_lab
    r = runner.invoke(app, ["status", "--json", "--connect", address, "-c", str(lab)])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert {b["name"] for b in st["backends"]} == {"gpu-a", "gpu-b", "furnace"}
    assert st["queues"]["echo"]["running"] == len(c.tasks("running", limit=10_000)) > 1000
    assert {"counters", "tasks", "running", "uptime_s"} <= set(st)


def test_status_counts_a_flood_by_capability_when_too_many_to_list(monkeypatch: pytest.MonkeyPatch):
    """50,000 running tasks: status prints the orchestrator's counts by backend and capability and the
    first few of its list, in a bounded number of lines."""
    from rich.console import Console

    def backend(name: str, kind: str, caps: list[str], used: int) -> dict[str, object]:
        return {"name": name, "kind": kind, "state": "busy", "slots": 8, "used": used, "capabilities": caps}

    running = [{"task_id": f"t-{i:04d}", "capability": "screen", "backend": f"ray-{i % 3}", "held": False,
                "progress": None} for i in range(200)]  # the orchestrator lists 200
    running[150] = {"task_id": "t-xrd", "capability": "characterize.xrd", "backend": "xrd", "held": False,
                    "progress": {"fraction": 0.5, "message": "scanning 2-theta"}}
    st = {"backends": [backend(f"ray-{i}", "digital", ["screen"], 8) for i in range(3)] +
          [backend("xrd", "physical", ["characterize.xrd"], 1), backend("idle", "digital", ["screen"], 0)],
          "queues": {"screen": {"running": 49_999, "ready": 7}, "characterize.xrd": {"running": 1}},
          "tasks": {"running": 50_000, "ready": 7}, "counters": {}, "running": [running[150], *running[:150]],
          "running_groups": [{"backend": f"ray-{i}", "capability": "screen", "running": 16_667 - (i == 2)}
                             for i in range(3)] + [{"backend": "xrd", "capability": "characterize.xrd", "running": 1}]}
    out = Console(record=True, width=200)
    monkeypatch.setattr(cli, "console", out)
    cli._print_status(st)
    text = out.export_text()
    assert len(text.splitlines()) < 60, text
    assert "running (50000)" in text and "ppu tasks --state running" in text
    lines = [" ".join(ln.replace("│", " ").split()) for ln in text.splitlines()]
    assert "ray-0 screen 16667" in lines and "ray-2 screen 16666" in lines and "xrd characterize.xrd 1" in lines
    assert "scanning 2-theta" in text
