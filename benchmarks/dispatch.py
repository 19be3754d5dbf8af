"""Dispatch overhead: client -> orchestrator -> worker -> result through PPU, against baselines.

PPU runs as a real deployment in miniature (EmbeddedLab: ROUTER server, DEALER worker and client
over loopback tcp, SQLite store with synchronous=FULL), echo backend with duration 0. Baselines,
measured in the same run: a raw pyzmq DEALER/ROUTER round trip on loopback, and plain Prefect
tasks (in a subprocess, as Prefect starts its own runtime; null when Prefect is unavailable).
The last line is one JSON object with the figures (keys as issue 3 names them).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from ppu.config import parse_lab
from ppu.transport import EmbeddedLab

N_LATENCY = int(os.environ.get("PPU_BENCH_LATENCY_N", "200"))
N_THROUGHPUT = int(os.environ.get("PPU_BENCH_N", "2000"))
SUBMIT_CHUNK = 100
BATCH = 100
N_RAW = 5000
N_PREFECT = int(os.environ.get("PPU_BENCH_PREFECT_N", "50"))


async def raw_zmq_roundtrip_us() -> list[float]:
    """Microseconds per DEALER -> ROUTER -> DEALER echo, one sample per round trip."""
    ctx = zmq.asyncio.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")

    async def echo() -> None:
        while True:
            frames = await router.recv_multipart()
            await router.send_multipart(frames)

    server = asyncio.create_task(echo())
    msg = [b"PPU1", json.dumps({"type": "status", "req": "0123456789abcdef"}).encode()]
    for _ in range(200):  # warm up
        await dealer.send_multipart(msg)
        await dealer.recv_multipart()
    samples = []
    for _ in range(N_RAW):
        t0 = time.perf_counter()
        await dealer.send_multipart(msg)
        await dealer.recv_multipart()
        samples.append((time.perf_counter() - t0) * 1e6)
    server.cancel()
    router.close()
    dealer.close()
    ctx.term()
    return samples


def _lab(tmp: Path, name: str, **echo: Any) -> Any:
    return parse_lab({"name": name, "run_dir": str(tmp / name), "store": f"sqlite:///{tmp / name / 'ppu.sqlite'}",
                      "backends": [{"type": "echo", "name": "echo-1", "duration_s": 0.0, **echo}]})


async def ppu_figures(tmp: Path) -> dict[str, Any]:
    # One at a time: a backend that takes single tasks (batching would only add its wait).
    async with EmbeddedLab(_lab(tmp, "latency", slots=8)) as client:
        for i in range(20):  # warm up
            await client.run({"capability": "echo", "inputs": {"x": i}}, timeout=30)
        latencies = []
        for i in range(N_LATENCY):
            t0 = time.perf_counter()
            await client.run({"capability": "echo", "inputs": {"x": i}}, timeout=30)
            latencies.append((time.perf_counter() - t0) * 1e6)
    # Many in flight: the scheduler hands the worker batches of up to BATCH tasks (issue 2's
    # digital batching), so assignment, results and the journal move in bursts.
    async with EmbeddedLab(_lab(tmp, "throughput", slots=4, batch_size=BATCH, batch_wait_s=0.002)) as client:
        await client.wait(await client.submit([{"capability": "echo", "inputs": {"x": i}} for i in range(200)]),
                          timeout=60)  # warm up
        t0 = time.perf_counter()
        ids: list[str] = []
        for start in range(0, N_THROUGHPUT, SUBMIT_CHUNK):
            ids += await client.submit([{"capability": "echo", "inputs": {"x": i}}
                                        for i in range(start, min(N_THROUGHPUT, start + SUBMIT_CHUNK))])
        done = await client.wait(ids, timeout=600)
        throughput = len(done) / (time.perf_counter() - t0)
        assert all(t.state.value == "succeeded" for t in done)
    return {"latencies_us": latencies, "tasks_per_s": throughput}


PREFECT_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from prefect import flow, task

    @task
    def echo(x):
        return 2 * x

    @flow
    def many(n):
        per = []
        for i in range(n):
            t0 = time.perf_counter()
            echo(i)
            per.append((time.perf_counter() - t0) * 1e6)
        return per

    many(2)  # start the runtime first
    n = int(sys.argv[1])
    t0 = time.perf_counter()
    per = many(n)
    print(json.dumps({"tasks_per_s": n / (time.perf_counter() - t0), "per_task_us": per}))
""")


def prefect_tasks(tmp: Path) -> tuple[dict[str, Any] | None, str]:
    script = tmp / "prefect_bench.py"
    script.write_text(PREFECT_SCRIPT)
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), PREFECT_LOGGING_LEVEL="ERROR",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    try:
        out = subprocess.run([sys.executable, str(script), str(N_PREFECT)], capture_output=True, text=True,
                             timeout=180, env=env)
    except subprocess.TimeoutExpired:
        return None, "prefect timed out"
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line), f"{N_PREFECT} sequential task runs in one flow"
    return None, "prefect failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:200]


def pct(xs: list[float], q: float) -> float:
    return float(statistics.quantiles(xs, n=100, method="inclusive")[q - 1]) if len(xs) > 1 else xs[0]


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        raw = asyncio.run(raw_zmq_roundtrip_us())
        ppu = asyncio.run(ppu_figures(tmp))
        prefect, prefect_note = (None, "skipped (PPU_BENCH_PREFECT_N=0)") if N_PREFECT <= 0 else prefect_tasks(tmp)
    raw50, raw99 = pct(raw, 50), pct(raw, 99)
    lat = ppu["latencies_us"]
    p50, p99 = pct(lat, 50), pct(lat, 99)
    pf50 = None if prefect is None else pct(prefect["per_task_us"], 50)
    rows: list[tuple[str, str, str]] = [
        ("raw pyzmq DEALER/ROUTER round trip", f"{raw50:.0f} / {raw99:.0f} us", f"{1e6 / raw50:,.0f} round trips/s"),
        ("PPU submit+wait, one task at a time", f"{p50:,.0f} / {p99:,.0f} us", f"{1e6 / p50:,.0f} tasks/s"),
        (f"PPU {N_THROUGHPUT} tasks in flight (chunks of {SUBMIT_CHUNK}, batches <= {BATCH})",
         f"{1e6 / ppu['tasks_per_s']:,.0f} us/task", f"{ppu['tasks_per_s']:,.0f} tasks/s"),
        (f"Prefect: {prefect_note}", "-" if prefect is None
         else f"{pf50:,.0f} / {pct(prefect['per_task_us'], 99):,.0f} us",
         "-" if prefect is None else f"{prefect['tasks_per_s']:,.0f} tasks/s"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'path':<{w}}  {'p50 / p99':>20}  {'rate':>20}")
    for name, per, rate in rows:
        print(f"{name:<{w}}  {per:>20}  {rate:>20}")
    print("PPU's per-task time includes its journal: submit, assign, start and result, each in an fsynced "
          "SQLite transaction (synchronous=FULL) when one task is in flight.")
    print(f"targets: PPU overhead <= 3x raw round trip (now {p50 / raw50:.1f}x); >= 20x lower than Prefect "
          f"(now {'-' if pf50 is None else f'{pf50 / p50:.1f}x'}); >= 5,000 tasks/s in flight "
          f"(now {ppu['tasks_per_s']:,.0f})")
    figures: dict[str, Any] = {
        "raw_rtt_us_p50": round(raw50, 1),
        "ppu_overhead_us_p50": round(p50, 1),
        "ppu_overhead_us_p99": round(p99, 1),
        "prefect_overhead_us_p50": None if pf50 is None else round(pf50, 1),
        "ppu_tasks_per_s": round(ppu["tasks_per_s"], 1),
        "ratio_vs_raw": round(p50 / raw50, 2),
        "ratio_prefect_vs_ppu": None if pf50 is None else round(pf50 / p50, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
