"""How the CLI's listings read (a user trial's defects).

- ``ppu tasks`` at an 80-column terminal: columns shrank to 3 characters, words broke mid-word and
  one long error wrapped over 20 lines.
- An empty ``ppu tasks`` in a pipe printed nothing, not even on stderr (approvals, review and samples
  said "nothing ..." there).
- ``ppu tasks --state running`` listed nothing while ``ppu status`` counted a task running: the store
  journals a start with the task's next change (often its result), so it still had it as assigned.

Driven through typer's runner, as ``tests/test_cli_core.py`` is: its stdout is a pipe, unless a test
makes the listing's terminal a fixed-width recording console.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from ppu import cli, cli_output
from ppu.backends.echo import EchoBackend, EchoConfig
from ppu.cli import app
from ppu.config import load_lab
from ppu.models import TaskSpec, TaskState
from ppu.store import Store
from ppu.transport.client import PPUClient
from ppu.transport.lab import LabThread
from ppu.transport.serve import cli_actor

runner = CliRunner()
WHY = ("the operator saw the sample holder crack while loading, so every sample of this rack must be "
       "made again from a fresh precursor batch before anything is measured on it") * 2


def _lab_file(tmp_path: Path) -> Path:
    p = tmp_path / "lab.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path / "run")}))
    return p


@pytest.fixture()
def terminal(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Console]:
    """From now on, the CLI's stdout is a terminal this many columns wide, recorded."""
    def at(width: int) -> Console:
        screen = Console(record=True, width=width, file=io.StringIO())
        monkeypatch.setattr(cli_output, "console", screen)
        monkeypatch.setattr(cli, "console", screen)
        monkeypatch.setattr(cli_output, "is_terminal", lambda stream: True)
        return screen

    return at


def _submit(lab: Path, n: int) -> list[str]:
    out = []
    for i in range(n):
        r = runner.invoke(app, ["submit", "echo", "-i", f'{{"x": {i}}}', "--campaign", "screen-2024-rack-7",
                                "-c", str(lab)])
        assert r.exit_code == 0, r.output
        out.append(r.stdout.split()[-1])
    return out


# ---- C. a table at 80 columns: one line per task, whole words, the error cut --------------------------

def test_tasks_at_an_80_column_terminal_give_one_readable_line_per_task(
        tmp_path: Path, terminal: Callable[[int], Console]):
    lab = _lab_file(tmp_path)
    ids = _submit(lab, 3)
    for tid in ids:
        assert runner.invoke(app, ["cancel", tid, "--reason", WHY, "-c", str(lab)]).exit_code == 0
    screen = terminal(80)
    r = runner.invoke(app, ["tasks", "--state", "cancelled", "-c", str(lab)])
    assert r.exit_code == 0, r.output
    lines = screen.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    header = lines[1].split()
    assert header[:3] == ["id", "capability", "state"] and "error" in header  # whole words, never 'capab' 'ility'
    rows = [line for line in lines if line.startswith("t-")]
    assert len(rows) == 3 and len(lines) <= 6, lines  # title, header, a line per task, what was left out
    for tid, row in zip(reversed(ids), rows, strict=True):
        cells = row.split()
        assert cells[:3] == [tid, "echo", "cancelled"], row  # the id whole, the state whole
        assert row.endswith("…") and "cancelled by" in row  # the error, cut on its one line
    assert "left out at this width:" in lines[-1] and "--plain" in lines[-1]


def test_a_listing_at_a_wide_terminal_shows_every_column_whole(tmp_path: Path, terminal: Callable[[int], Console]):
    lab = _lab_file(tmp_path)
    [tid] = _submit(lab, 1)
    screen = terminal(250)
    r = runner.invoke(app, ["tasks", "-c", str(lab)])
    assert r.exit_code == 0, r.output
    lines = screen.export_text().splitlines()
    assert lines[1].split() == [name for name, _ in cli.TASK_COLUMNS]
    assert lines[2].split() == [tid, "echo", "ready", "0", "0", "screen-2024-rack-7", cli_actor()]
    assert "left out" not in screen.export_text()


@pytest.mark.parametrize("room", [40, 60, 80, 100, 120])
def test_fit_never_cuts_the_ids_nor_a_column_below_its_header(room: int):
    columns = cli.TASK_COLUMNS
    rows = [("t-1a25248e2dbcd54c95152107", "predict.co2_uptake_at_high_pressure", "needs_review", "0", "3",
             "torch-gpu-0", "screen-2024", "alice", WHY)]
    shown, width, left_out = cli_output.fit(columns, rows, room, cli.TASK_OPTIONAL)
    assert shown[0] == 0 and width[0] == len(rows[0][0])
    assert all(width[i] >= len(columns[i][0]) for i in shown)
    assert sum(width[i] for i in shown) + cli_output.GAP * (len(shown) - 1) <= max(room, width[0])
    assert set(left_out) == {columns[i][0] for i in range(len(columns)) if i not in shown}
    if room >= 80:
        assert {"capability", "state", "error"} <= {columns[i][0] for i in shown}
        assert width[2] == len("needs_review")  # a state is never cut


# ---- D. an empty listing says so on stderr in a pipe, as every listing does -------------------------

def test_an_empty_task_listing_says_so_on_stderr_in_a_pipe(tmp_path: Path):
    lab = _lab_file(tmp_path)
    for argv in (["tasks", "--state", "ready"], ["tasks"], ["approvals"], ["review"], ["samples"], ["audit"]):
        r = runner.invoke(app, [*argv, "-c", str(lab)])
        assert r.exit_code == 0, (argv, r.output)
        assert r.stdout == "" and r.stderr.strip(), (argv, r.stdout, r.stderr)  # rows only on stdout
    assert runner.invoke(app, ["tasks", "--state", "ready", "-c", str(lab)]).stderr.strip() == "tasks: none"
    r = runner.invoke(app, ["tasks", "--json", "-c", str(lab)])
    assert r.exit_code == 0 and r.stdout == ""


# ---- B. a running task the store still has as assigned is listed as running --------------------------

def _slow_echo() -> EchoBackend:
    return EchoBackend(EchoConfig(type="echo", name="gpu-a", slots=4, batch_size=10, batch_wait_s=0.01,
                                  duration_s=3600.0, time_scale=1.0))


@pytest.fixture
def one_running(tmp_path: Path) -> Iterator[tuple[Path, str, PPUClient, str]]:
    """A lab served in this process with one task running (for an hour) and one waiting for approval:
    the lab file, the address, a client, the running task's id."""
    lab_file = _lab_file(tmp_path)
    lab = load_lab(lab_file)
    with LabThread(lab, "tcp://127.0.0.1:0", backends=[_slow_echo()]) as lt, lt.client(timeout=30) as c:
        [tid] = c.submit([TaskSpec(capability="echo", inputs={"x": 1.0})])
        deadline = time.monotonic() + 30
        while c.status()["queues"].get("echo", {}).get("running", 0) < 1:
            assert time.monotonic() < deadline, c.status()
            time.sleep(0.05)
        yield lab_file, lt.address, c, tid


def test_tasks_state_running_lists_a_task_the_store_still_has_as_assigned(
        one_running: tuple[Path, str, PPUClient, str]):
    lab, address, _, tid = one_running
    assert _stored_states(lab) == {tid: "assigned"}, "the premise: the store journals the start with the next change"
    r = runner.invoke(app, ["tasks", "--state", "running", "--connect", address, "-c", str(lab)])
    assert r.exit_code == 0, r.output
    [row] = [line.split("\t") for line in r.stdout.splitlines()]
    assert row[:3] == [tid, "echo", "running"] and row[5] == "gpu-a"
    r = runner.invoke(app, ["tasks", "--connect", address, "-c", str(lab)])  # no filter: its live state too
    assert [line.split("\t")[2] for line in r.stdout.splitlines()] == ["running"]
    r = runner.invoke(app, ["tasks", "--state", "assigned", "--connect", address, "-c", str(lab)])
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == "tasks: none\n"
    r = runner.invoke(app, ["tasks", "--json", "--state", "running", "--connect", address, "-c", str(lab)])
    assert r.exit_code == 0 and '"state":"running"' in r.stdout.replace(" ", "")


def _stored_states(lab_file: Path) -> dict[str, str]:
    """Each task's state as the store holds it, read from the file by a second connection."""
    store = Store(load_lab(lab_file).store_url())
    try:
        return {tid: state for _, tid, state, _ in store.list_task_rows()}
    finally:
        store.close()


def test_the_orchestrator_lists_running_tasks_the_store_has_as_assigned_across_pages(tmp_path: Path):
    """The live state is the orchestrator's answer, not a CLI patch: a Python client's ``tasks`` sees it,
    and a page whose stored rows are all left out reads on (``assigned`` here: every stored
    ``assigned`` row is running)."""
    lab_file = _lab_file(tmp_path)
    with LabThread(load_lab(lab_file), "tcp://127.0.0.1:0", backends=[_slow_echo()]) as lt, \
            lt.client(timeout=30) as c:
        ids = c.submit([TaskSpec(capability="echo", inputs={"x": float(i)}) for i in range(5)])
        deadline = time.monotonic() + 30
        while c.status()["queues"].get("echo", {}).get("running", 0) < 5:
            assert time.monotonic() < deadline, c.status()
            time.sleep(0.05)
        assert set(_stored_states(lab_file).values()) == {"assigned"}, "the premise"
        newest_first = ids[::-1]
        assert [t.id for t in c.tasks("running")] == newest_first
        assert {t.state.value for t in c.tasks("running")} == {"running"}
        assert [t.id for t in c.tasks("running", limit=2)] == newest_first[:2]
        assert [t.state.value for t in c.tasks(None)] == ["running"] * 5
        orch = lt.embedded.orch
        assert orch is not None

        async def rows_of(state: TaskState) -> tuple[list[tuple[int, str, str]], bool]:
            assert orch is not None
            return orch.view.task_rows(state, None, None, limit=2)  # on the lab's own loop

        rows, more = asyncio.run_coroutine_threadsafe(rows_of(TaskState.assigned), lt._loop).result(10)
        assert rows == [] and more is False  # 5 stored as assigned, read in two chunks, none kept
        rows, more = asyncio.run_coroutine_threadsafe(rows_of(TaskState.running), lt._loop).result(10)
        assert [tid for _, tid, _ in rows] == newest_first[:2] and more is True
        assert c.tasks("assigned") == []


def test_status_counts_a_running_task_the_store_has_as_assigned_as_running(
        one_running: tuple[Path, str, PPUClient, str], monkeypatch: pytest.MonkeyPatch):
    """The orchestrator counts tasks per state as they are now, not as the store last wrote them."""
    lab, address, c, tid = one_running
    assert _stored_states(lab) == {tid: "assigned"}, "the premise: the store journals the start with the next change"
    assert c.status()["tasks"] == {"running": 1}
    screen = Console(record=True, width=200, file=io.StringIO())
    monkeypatch.setattr(cli, "console", screen)
    r = runner.invoke(app, ["status", "--connect", address, "-c", str(lab)])
    assert r.exit_code == 0, r.output
    text = screen.export_text()
    assert "tasks: running=1" in text and "assigned" not in text, text
