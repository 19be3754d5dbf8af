"""Scheduling time per decision and memory per queued task, 1,000 backends x up to 100,000 tasks.

A decision is the scheduler handling one event that places work: a result arrives, the slot it
frees is filled with the best ready task the backend can take. Measured at 10k and 100k queued
tasks across 50 capabilities; the growth ratio of the per-decision time shows whether the cost
is flat (heaps: log n) or linear. Target: < 100 us per decision, < 2 KB per task.

Last line: one JSON object with decision_us_p50, decision_us_p99, bytes_per_task, growth_10k_to_100k.
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
import tracemalloc

from rich.console import Console
from rich.table import Table

from ppu.events import Finished, RegisterBackend, Submit
from ppu.models import ActionClass, BackendSpec, CapabilityOffer, Result, ResultStatus, Task
from ppu.scheduler import Scheduler

N_BACKENDS = 1000
N_CAPS = 50
DECISIONS = 5000


def build(n_tasks: int, seed: int = 0) -> tuple[Scheduler, float, random.Random]:
    rng = random.Random(seed)
    s = Scheduler()
    for i in range(N_BACKENDS):
        caps = rng.sample(range(N_CAPS), k=rng.randint(1, 3))
        spec = BackendSpec(
            name=f"b{i}", kind="digital", slots=rng.randint(1, 4),
            capabilities=[CapabilityOffer(name=f"cap{c}", fidelity=rng.uniform(0.5, 1), duration_s=rng.uniform(1, 10),
                                          cost=rng.uniform(0, 5)) for c in caps])
        s.handle(RegisterBackend(spec, 0.0, (), 1e12))
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n_tasks):
        t = Task(id=f"t{i}", capability=f"cap{rng.randrange(N_CAPS)}", action=ActionClass.repeatable,
                 inputs={"x": i}, priority=rng.randint(0, 3),
                 deadline=(1000.0 + rng.random() * 1000 if rng.random() < 0.2 else None))
        s.handle(Submit(t, 1.0))
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return s, used / n_tasks, rng


def decisions(s: Scheduler, rng: random.Random, n: int) -> list[float]:
    times = []
    now = 2.0
    for _ in range(n):
        in_flight = [(tid, b.name) for b in rng.sample(list(s._backends.values()), 8)
                     for tids in b.batches.values() for tid in tids]
        if not in_flight:
            continue
        tid, backend = in_flight[0]
        attempt = s._tasks[tid].attempts
        ev = Finished(Result(task_id=tid, attempt=attempt, status=ResultStatus.succeeded, outputs={}), now, backend)
        t0 = time.perf_counter_ns()
        s.handle(ev)
        times.append((time.perf_counter_ns() - t0) / 1000)
        now += 0.001
    return times


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main() -> None:
    console = Console()
    rows = {}
    for n in (10_000, 100_000):
        t0 = time.perf_counter()
        s, per_task, rng = build(n)
        built = time.perf_counter() - t0
        queued = sum(len(v) for caps in s._ready.values() for v in caps.values())
        ts = decisions(s, rng, DECISIONS)
        rows[n] = {"p50": pct(ts, 50), "p99": pct(ts, 99), "mean": sum(ts) / len(ts), "bytes": per_task,
                   "submit_us": built / n * 1e6, "queued": queued}
    table = Table(title=f"scheduler scale: {N_BACKENDS} backends, {N_CAPS} capabilities, {DECISIONS} decisions")
    for col in ("queued tasks", "decision p50 (us)", "p99 (us)", "mean (us)", "submit (us/task)", "bytes/task"):
        table.add_column(col, justify="right")
    for n, r in rows.items():
        table.add_row(f"{n:,}", f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['mean']:.1f}", f"{r['submit_us']:.1f}",
                      f"{r['bytes']:.0f}")
    console.print(table)
    growth = rows[100_000]["mean"] / rows[10_000]["mean"]
    console.print(f"growth of the mean decision time from 10k to 100k tasks: x{growth:.2f} (1.0 = flat, 10 = linear)")
    console.print("targets: < 100 us per decision, < 2048 bytes per task")
    print(json.dumps({
        "decision_us_p50": round(rows[100_000]["p50"], 2), "decision_us_p99": round(rows[100_000]["p99"], 2),
        "bytes_per_task": round(rows[100_000]["bytes"]), "growth_10k_to_100k": round(growth, 3),
        "submit_us_per_task": round(rows[100_000]["submit_us"], 2), "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
