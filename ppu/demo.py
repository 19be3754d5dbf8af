"""The core demo: an in-process orchestrator with simulated digital backends, run for real.

Nothing here is canned: the numbers printed come from the store the run wrote.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ppu.backends import build_backend
from ppu.models import TERMINAL_STATES, TaskSpec
from ppu.orchestrator import LocalWorker, Orchestrator
from ppu.store import Store, sqlite_url


async def _core_demo(n: int, run_dir: Path, console: Console) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    store = Store(sqlite_url(run_dir / "ppu.sqlite"))
    orch = Orchestrator(store)
    await orch.start()
    backends = [
        build_backend({"type": "echo", "name": "gpu-sim", "batch_size": 32, "batch_wait_s": 0.02,
                       "duration_s": 0.5, "time_scale": 50}),
        build_backend({"type": "echo", "name": "cpu-sim", "duration_s": 0.2, "time_scale": 50}),
        build_backend({"type": "echo", "name": "flaky-sim", "duration_s": 0.1, "time_scale": 50,
                       "fail_rate": 0.3, "seed": 7, "fail_when_x": 0.5}),
    ]
    worker = LocalWorker(orch, backends)
    await worker.start()
    events, _ = orch.feed.subscribe()
    t0 = time.time()
    # Half independent tasks, half in chains of three (each waits for the one before), and one
    # chain whose head fails on every backend so its dependents fail with the cause named.
    specs, ids = [], []
    for i in range(n // 2):
        specs.append(TaskSpec(capability="echo", inputs={"x": i}, priority=i % 3))
    ids += orch.submit(specs, actor="demo")
    for c in range(n // 6):
        prev: list[str] = []
        for j in range(3):
            tid = orch.submit([TaskSpec(capability="echo", inputs={"x": 1000 + 3 * c + j}, depends_on=prev)])[0]
            ids.append(tid)
            prev = [tid]
    doomed = orch.submit([TaskSpec(capability="echo", inputs={"x": 0.5}, max_attempts=1,
                                   pin_backend="flaky-sim", id="demo-doomed-head")])
    ids += doomed
    ids += orch.submit([TaskSpec(capability="echo", inputs={"x": 1.5}, depends_on=doomed)])
    with Progress(TextColumn("[bold]tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        job = bar.add_task("tasks", total=len(ids))
        done: set[str] = {i for i in ids if orch.sched.state_of(i) in TERMINAL_STATES}
        bar.update(job, completed=len(done))
        while len(done) < len(ids):
            _, ev = await asyncio.wait_for(events.get(), timeout=60)
            if ev["type"] == "transition" and ev["dst"] in {s.value for s in TERMINAL_STATES}:
                done.add(ev["task_id"])
                bar.update(job, completed=len(done))
    wall = time.time() - t0
    await worker.close()
    await orch.close()

    rows = [store.get_task(i) for i in ids]
    states = Counter(t.state.value for t in rows if t)
    by_backend = Counter(t.backend for t in rows if t and t.backend and t.state.value == "succeeded")
    retried = sum(1 for t in rows if t and t.attempts > 1)
    table = Table(title="what happened")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("tasks submitted", str(len(ids)))
    for k, v in sorted(states.items()):
        table.add_row(f"  {k}", str(v))
    for b in backends:
        sizes = getattr(b, "batches_seen", [])
        mean = sum(sizes) / len(sizes) if sizes else 0
        table.add_row(f"  on {b.name}", f"{by_backend[b.name]} done in {len(sizes)} batches (mean {mean:.1f})")
    table.add_row("tasks retried after a failure", str(retried))
    table.add_row("wall time", f"{wall:.2f} s ({len(ids) / wall:.0f} tasks/s)")
    table.add_row("journal entries", str(sum(1 for _ in store.iter_journal())))
    console.print(table)
    failed = [t for t in rows if t and t.state.value == "failed"]
    for t in failed[:3]:
        console.print(f"[red]failed[/] {t.id}: {t.error}")
    console.print(f"store: {run_dir / 'ppu.sqlite'}  (inspect with: ppu tasks -c <lab.yaml with store: ...>)")
    store.close()


def run_core_demo(n: int, run_dir: Path, console: Console) -> None:
    asyncio.run(_core_demo(n, run_dir, console))
