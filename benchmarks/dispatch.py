"""Dispatch overhead: client -> orchestrator -> worker -> result through PPU, against baselines.

PPU runs as a real deployment in miniature (EmbeddedLab: ROUTER server, DEALER worker and client
over loopback tcp, SQLite store with synchronous=FULL), echo backend with duration 0. Baselines,
measured in the same run: a raw pyzmq DEALER/ROUTER round trip on loopback, and plain Prefect
tasks (in a subprocess, as Prefect starts its own runtime; null when Prefect is unavailable).
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
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
N_RAW = 5000
N_PREFECT = int(os.environ.get("PPU_BENCH_PREFECT_N", "50"))


async def raw_zmq_roundtrip_us() -> float:
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
    t0 = time.perf_counter()
    for _ in range(N_RAW):
        await dealer.send_multipart(msg)
        await dealer.recv_multipart()
    dt = time.perf_counter() - t0
    server.cancel()
    router.close()
    dealer.close()
    ctx.term()
    return dt / N_RAW * 1e6


async def ppu_figures(tmp: Path) -> dict[str, float]:
    lab = parse_lab({"name": "bench", "run_dir": str(tmp), "store": f"sqlite:///{tmp / 'bench.sqlite'}",
                     "backends": [{"type": "echo", "name": "echo-1", "duration_s": 0.0, "slots": 8}]})
    async with EmbeddedLab(lab) as client:
        for i in range(20):  # warm up
            await client.run({"capability": "echo", "inputs": {"x": i}}, timeout=30)
        t0 = time.perf_counter()
        for i in range(N_LATENCY):
            await client.run({"capability": "echo", "inputs": {"x": i}}, timeout=30)
        latency = (time.perf_counter() - t0) / N_LATENCY
        t0 = time.perf_counter()
        ids: list[str] = []
        for start in range(0, N_THROUGHPUT, SUBMIT_CHUNK):
            ids += await client.submit([{"capability": "echo", "inputs": {"x": i}}
                                        for i in range(start, min(N_THROUGHPUT, start + SUBMIT_CHUNK))])
        done = await client.wait(ids, timeout=600)
        throughput = len(done) / (time.perf_counter() - t0)
        assert all(t.state.value == "succeeded" for t in done)
    return {"latency_s": latency, "tasks_per_s": throughput}


PREFECT_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from prefect import flow, task

    @task
    def echo(x):
        return 2 * x

    @flow
    def many(n):
        return [echo(i) for i in range(n)]

    many(2)  # start the runtime first
    n = int(sys.argv[1])
    t0 = time.perf_counter()
    many(n)
    print(json.dumps({"tasks_per_s": n / (time.perf_counter() - t0)}))
""")


def prefect_tasks_per_s(tmp: Path) -> tuple[float | None, str]:
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
            return float(json.loads(line)["tasks_per_s"]), f"{N_PREFECT} sequential task runs in one flow"
    return None, "prefect failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:200]


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        raw_us = asyncio.run(raw_zmq_roundtrip_us())
        ppu = asyncio.run(ppu_figures(tmp))
        prefect, prefect_note = (None, "skipped (PPU_BENCH_PREFECT_N=0)") if N_PREFECT <= 0 \
            else prefect_tasks_per_s(tmp)
    overhead_ms = ppu["latency_s"] * 1e3
    rows: list[tuple[str, str, str]] = [
        ("raw pyzmq DEALER/ROUTER round trip", f"{raw_us:.1f} us", f"{1e6 / raw_us:,.0f} round trips/s"),
        ("PPU submit+wait, one task at a time", f"{overhead_ms:.2f} ms/task", f"{1 / ppu['latency_s']:,.0f} tasks/s"),
        (f"PPU {N_THROUGHPUT} tasks, submitted in chunks of {SUBMIT_CHUNK}",
         f"{1e3 / ppu['tasks_per_s']:.3f} ms/task", f"{ppu['tasks_per_s']:,.0f} tasks/s"),
        (f"Prefect: {prefect_note}", "-" if prefect is None else f"{1e3 / prefect:.2f} ms/task",
         "-" if prefect is None else f"{prefect:,.0f} tasks/s"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'path':<{w}}  {'per task':>14}  {'rate':>22}")
    for name, per, rate in rows:
        print(f"{name:<{w}}  {per:>14}  {rate:>22}")
    print("PPU latency includes 4 journaled transactions per task (submit, assign, start, result), "
          "each fsynced (SQLite synchronous=FULL).")
    figures: dict[str, Any] = {
        "ppu_tasks_per_s": round(ppu["tasks_per_s"], 1),
        "ppu_overhead_ms_per_task": round(overhead_ms, 3),
        "ppu_throughput_ms_per_task": round(1e3 / ppu["tasks_per_s"], 3),
        "raw_zmq_roundtrip_us": round(raw_us, 2),
        "overhead_ratio_vs_raw_zmq": round(overhead_ms * 1e3 / raw_us, 1),
        "prefect_tasks_per_s": None if prefect is None else round(prefect, 1),
        "ppu_vs_prefect_throughput": None if prefect is None else round(ppu["tasks_per_s"] / prefect, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
