"""``ppu``: the command line. Errors say what was wrong and what to do; exit codes are non-zero on error.

Client commands act on the lab named by ``--config`` (default ``$PPU_CONFIG`` or ``./lab.yaml``).
When no orchestrator answers, they open the lab's store with an in-process orchestrator, act
through the same journaled path, and exit (the next orchestrator to start rebuilds from it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ppu.config import LabConfig, load_lab
from ppu.errors import PPUError
from ppu.models import TaskSpec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="PPU: one scheduler for digital and physical compute.")
console = Console()
err = Console(stderr=True)
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="lab YAML (default $PPU_CONFIG or ./lab.yaml)")]
# CLI-READY


def _lab(config: Path | None) -> LabConfig:
    path = config or (Path(os.environ["PPU_CONFIG"]) if os.environ.get("PPU_CONFIG") else Path("lab.yaml"))
    if path.exists():
        return load_lab(path)
    if config is not None:
        return load_lab(path)  # raises a ConfigError naming the missing file
    return LabConfig()


def _fail(exc: PPUError) -> None:
    err.print(f"[bold red]error:[/] {exc.message}")
    if exc.field:
        err.print(f"  field: {exc.field}")
    if exc.hint:
        err.print(f"  [yellow]what to do:[/] {exc.hint}")
    raise typer.Exit(2)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(fn())  # type: ignore[arg-type]
    except PPUError as exc:
        _fail(exc)
        raise AssertionError("unreachable") from None


async def _with_orchestrator(lab: LabConfig, body: Callable[[Any], Any]) -> Any:
    """Open the lab's store with an in-process orchestrator, run ``body(orch)``, close cleanly."""
    from ppu.orchestrator import Orchestrator
    from ppu.store import Store

    store = Store(lab.store_url())
    orch = Orchestrator(store, lab.orchestrator, lab.autonomy)
    await orch.start()
    try:
        out = body(orch)
        if asyncio.iscoroutine(out):
            out = await out
        return out
    finally:
        await orch.close()
        store.close()


def _parse_json(text: str, what: str) -> Any:
    if text.startswith("@"):
        p = Path(text[1:])
        if not p.exists():
            raise PPUError(f"{what} file {p} does not exist", hint=f"pass {what} as JSON or @path/to/file.json")
        text = p.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PPUError(f"{what} is not valid JSON: {exc}", hint="example: --input '{\"x\": 1}'") from None


# ---- commands ----------------------------------------------------------------------------------


@app.command()
def status(config: ConfigOpt = None) -> None:
    """Backends, queue depth per capability, utilisation."""
    lab = _lab(config)
    st = _run(lambda: _with_orchestrator(lab, lambda o: o.status()))
    _print_status(st)


def _print_status(st: dict[str, Any]) -> None:
    t = Table(title="backends")
    for col in ("name", "kind", "state", "slots", "used", "utilisation", "capabilities"):
        t.add_column(col)
    for b in st["backends"]:
        t.add_row(b["name"], b["kind"], b["state"] + (" (held)" if b.get("held") else ""), str(b["slots"]),
                  str(b["used"]), f"{b.get('utilisation', 0):.0%}", ", ".join(b["capabilities"]))
    console.print(t)
    q = Table(title="queues (live tasks by state)")
    q.add_column("capability")
    q.add_column("states")
    for cap, states in sorted(st["queues"].items()):
        q.add_row(cap, ", ".join(f"{k}={v}" for k, v in sorted(states.items())))
    console.print(q)
    console.print("tasks in the store: " + ", ".join(f"{k}={v}" for k, v in sorted(st["tasks"].items())) or "none")
    if st.get("counters"):
        console.print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(st["counters"].items())))


@app.command()
def tasks(
    config: ConfigOpt = None,
    state: Annotated[str | None, typer.Option(help="only tasks in this state")] = None,
    campaign: Annotated[str | None, typer.Option(help="only tasks of this campaign")] = None,
    limit: int = 50,
) -> None:
    """List tasks, newest first."""
    from ppu.models import TaskState

    if state is not None and state not in TaskState.__members__:
        _fail(PPUError(f"unknown state {state!r}", hint=f"one of {', '.join(TaskState.__members__)}"))
    lab = _lab(config)
    rows = _run(lambda: _with_orchestrator(lab, lambda o: o.store.list_tasks(state, campaign, limit=limit)))
    t = Table(title=f"tasks ({len(rows)})")
    for col in ("id", "capability", "state", "prio", "attempts", "backend", "campaign", "error"):
        t.add_column(col)
    for task in rows:
        t.add_row(task.id, task.capability, task.state.value, str(task.priority), str(task.attempts),
                  task.backend or "", task.campaign or "", (task.error or "")[:60])
    console.print(t)


@app.command()
def submit(
    capability: str,
    input: Annotated[str, typer.Option("--input", "-i", help="inputs as JSON or @file.json")] = "{}",
    config: ConfigOpt = None,
    priority: int = 0,
    campaign: str | None = None,
    depends_on: Annotated[list[str] | None, typer.Option(help="task id this one waits for")] = None,
) -> None:
    """Submit one task; prints its id."""
    lab = _lab(config)
    try:
        spec = TaskSpec(capability=capability, inputs=_parse_json(input, "--input"), priority=priority,
                        campaign=campaign, depends_on=depends_on or [])
    except PPUError as exc:
        _fail(exc)
    ids = _run(lambda: _with_orchestrator(lab, lambda o: o.submit([spec], actor="cli")))
    console.print(ids[0])


@app.command()
def cancel(task_id: str, config: ConfigOpt = None, reason: str = "") -> None:
    """Cancel a queued or running task."""
    lab = _lab(config)
    _run(lambda: _with_orchestrator(lab, lambda o: o.cancel(task_id, "cli", reason)))
    console.print(f"cancelled {task_id}")


@app.command()
def approve(task_id: str, config: ConfigOpt = None, note: str = "") -> None:
    """Approve a task that waits for a person."""
    lab = _lab(config)
    _run(lambda: _with_orchestrator(lab, lambda o: o.approve(task_id, "cli", note)))
    console.print(f"approved {task_id}")


@app.command()
def reject(task_id: str, reason: Annotated[str, typer.Option(help="why (kept in the audit log)")],
           config: ConfigOpt = None) -> None:
    """Reject a task that waits for approval; it never runs."""
    lab = _lab(config)
    _run(lambda: _with_orchestrator(lab, lambda o: o.reject(task_id, "cli", reason)))
    console.print(f"rejected {task_id}")


@app.command()
def review(
    task_id: str,
    config: ConfigOpt = None,
    retry: Annotated[bool, typer.Option("--retry", help="run it again")] = False,
    fail: Annotated[str | None, typer.Option("--fail", help="fail it, with this reason")] = None,
    result: Annotated[str | None, typer.Option("--result", help="enter the outputs by hand (JSON or @file)")] = None,
) -> None:
    """Decide on an interrupted physical task (needs_review): retry, fail, or enter its result."""
    chosen = [x for x in (retry, fail is not None, result is not None) if x]
    if len(chosen) != 1:
        _fail(PPUError("choose exactly one of --retry, --fail REASON, --result JSON",
                       hint=f"ppu review {task_id} --fail 'sample cracked'"))
    lab = _lab(config)
    if retry:
        _run(lambda: _with_orchestrator(lab, lambda o: o.review(task_id, "retry", "cli")))
    elif fail is not None:
        _run(lambda: _with_orchestrator(lab, lambda o: o.review(task_id, "fail", "cli", fail)))
    else:
        try:
            outputs = _parse_json(result or "{}", "--result")
        except PPUError as exc:
            _fail(exc)
        _run(lambda: _with_orchestrator(lab, lambda o: o.review(task_id, "result", "cli", "", outputs)))
    console.print(f"reviewed {task_id}")


@app.command()
def demo(
    tasks_n: Annotated[int, typer.Option("--tasks", help="how many tasks to run")] = 300,
    run_dir: Annotated[Path, typer.Option(help="folder for the store")] = Path("runs/demo-core"),
) -> None:
    """Run the orchestrator in-process with simulated digital backends and show what happened."""
    from ppu.demo import run_core_demo

    try:
        run_core_demo(tasks_n, run_dir, console)
    except PPUError as exc:
        _fail(exc)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
