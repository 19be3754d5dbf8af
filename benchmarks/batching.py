"""Batching efficiency (DESIGN.md promise 5): tasks that arrive one by one reach the model as batches.

Three ways to push the same N candidates through the same MLP, measured in this one run:

- ``dynamic``: every task is its own ``TorchBackend.run([task])`` call (what a scheduler with
  batch_size 1 and many slots does), ``concurrency`` of them in flight at once; the backend's
  MicroBatcher groups them into forward passes of at most the best batch size. Includes
  validation, featurisation and Result building per task: the whole serving path. Each caller
  sends its next task only when its last one is answered, so with one forward batch's worth in
  flight the model would wait while the loop answers and refills; the default is two batches'
  worth (with one model instance one batch computes while the next fills; with two, both compute,
  and 1,536 in flight measured no faster on 2 cores: README, batching).
- ``best batch``: direct forward passes on ready feature tensors at each batch size; the best.
  At the best size, also as many streams side by side as the backend serves model instances (each
  stream on its own thread with its share of torch's threads, as the instances run): the ceiling
  is whichever way the plain model goes fastest, so the backend's instances are not compared
  with a slower way of running the same model.
- ``one by one``: direct forward passes of a single row each (what no batching would give).

The machine may be shared, so the best batch size's direct passes and the dynamic path then take
turns for ``--rounds`` rounds: the ceiling is the best direct figure of the whole run (search and
rounds), ``ppu`` the best dynamic round, and each round's own ratio (dynamic over the direct passes
just before it) is printed too, to show the spread. The process runs as a PPU worker does
(``import ppu`` before torch: OpenMP workers sleep between passes instead of spinning).

Last line: one JSON object with device, best_batched_per_s, ppu_per_s (dynamic), naive_per_s
(one by one), efficiency (ppu / best) and efficiency_rounds (each round's ratio).

    python benchmarks/batching.py [--n 16000] [--hidden 1024] [--layers 4] [--concurrency 2xbest] [--rounds 3]
"""

from __future__ import annotations

# isort: off
import ppu  # noqa: F401  (first, as in a worker: it sets the OpenMP wait policy before torch loads)
# isort: on
import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _streams import direct_streams, sync_device

from ppu.backends.base import TaskRun
from ppu.backends.registry import build_backend
from ppu.digital.nets import mlp
from ppu.digital.torch_backend import TorchBackend, default_instances, select_device
from ppu.drivers.mof.featurize import N_FEATURES, featurize

ELEMENTS = ["Mg", "Zn", "Cu", "Co", "Ni", "Fe", "Mn", "Al", "Ti", "Zr"]


def candidates(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(ELEMENTS, 2)
        f = round(rng.uniform(0.05, 0.95), 3)
        out.append({"composition": {a: f, b: round(1 - f, 3)}, "anneal_temperature_c": rng.uniform(200, 900),
                    "anneal_time_h": rng.uniform(1, 24)})
    return out


def direct(model: torch.nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> float:
    """Items per second of plain forward passes at one batch size."""
    n = x.shape[0]
    with torch.inference_mode():
        model(x[:batch])  # warm this shape
        sync_device(device)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            model(x[i:i + batch])
        sync_device(device)
    return n / (time.perf_counter() - t0)


async def dynamic(backend: TorchBackend, cands: list[dict], concurrency: int) -> tuple[float, float]:
    await backend.start()
    queue = list(enumerate(cands))
    queue.reverse()
    failures = 0

    async def client() -> None:
        nonlocal failures
        while queue:
            i, c = queue.pop()
            [r] = await backend.run([TaskRun(task_id=f"t{i}", attempt=1, capability="predict.co2_uptake",
                                             inputs={"candidate": c})], lambda *a: None)
            failures += r.status != "succeeded"

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    dt = time.perf_counter() - t0
    sizes = backend.served["predict.co2_uptake"].batcher.batch_sizes
    await backend.close()
    if failures:
        raise SystemExit(f"{failures} tasks failed")
    return len(cands) / dt, sum(sizes) / max(len(sizes), 1)


def serve(weights: Path, device: torch.device, args: argparse.Namespace, max_batch: int) -> TorchBackend:
    backend = build_backend({
        "type": "torch", "name": "bench", "device": str(device), "batch_size": 1,
        "slots": args.concurrency, "max_batch": max_batch, "max_wait_ms": args.max_wait_ms,
        "models": {"predict.co2_uptake": {"factory": "ppu.digital.nets:mlp", "weights": str(weights),
                                          "kwargs": {"n_features": N_FEATURES, "hidden": args.hidden,
                                                     "layers": args.layers}}}})
    assert isinstance(backend, TorchBackend)
    return backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16000, help="tasks per mode and round")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=None,
                    help="single-task run() calls in flight; default twice the best batch size")
    ap.add_argument("--rounds", type=int, default=3, help="turns of direct passes and the dynamic path")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = select_device(args.device)
    cands = candidates(args.n)
    model = mlp(N_FEATURES, hidden=args.hidden, layers=args.layers).to(device).eval()
    x = featurize(cands, dtype=torch.float32, device=device)

    rows: list[tuple[str, Any, float]] = []
    one = direct(model, x[: min(args.n, 1000)], 1, device)
    rows.append(("one by one (direct, batch 1)", 1, one))
    best_bs, best = 1, one
    for bs in [8, 32, 64, 128, 256, 512]:
        ips = direct(model, x, bs, device)
        rows.append((f"direct, batch {bs}", bs, ips))
        if ips > best:
            best_bs, best = bs, ips

    streams = default_instances(device)

    def side_by_side(label: str, ceiling: float) -> float:
        """The best batch size's passes as the backend's instances run them, when they are several."""
        if streams == 1:
            return ceiling
        ips = direct_streams(model, x, best_bs, device, streams)
        rows.append((f"{label}direct, batch {best_bs}, {streams} streams side by side", best_bs, ips))
        return max(ceiling, ips)

    best = side_by_side("", best)
    args.concurrency = args.concurrency or 2 * best_bs
    dyn, mean_batch, ratios = 0.0, 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "mlp.pt"
        torch.save(model.state_dict(), weights)
        for r in range(1, args.rounds + 1):
            ceiling = direct(model, x, best_bs, device)
            rows.append((f"round {r}: direct, batch {best_bs}", best_bs, ceiling))
            ceiling = side_by_side(f"round {r}: ", ceiling)
            rate, mb = asyncio.run(dynamic(serve(weights, device, args, best_bs), cands, args.concurrency))
            rows.append((f"round {r}: dynamic ({args.concurrency} single-task runs in flight)", round(mb, 1), rate))
            best = max(best, ceiling)
            ratios.append(rate / ceiling)
            if rate > dyn:
                dyn, mean_batch = rate, mb

    print(f"device {device}; MLP {args.layers}x{args.hidden}; {args.n} tasks; torch threads "
          f"{torch.get_num_threads()}; the backend's model instances {streams}")
    print(f"{'mode':<58} {'batch':>7} {'items/s':>11} {'vs best':>8}")
    for name, bs, ips in rows:
        print(f"{name:<58} {bs:>7} {ips:>11.0f} {ips / best:>8.2f}")
    print(f"best direct batch size: {best_bs}; best dynamic round's mean forward batch: {mean_batch:.1f}")
    print(f"each round, dynamic / the direct passes just before it: {', '.join(f'{q:.2f}' for q in ratios)} "
          f"(median {statistics.median(ratios):.2f})")
    print(f"target: ppu >= 80 % of the best batched throughput; now {dyn / best:.0%} (best dynamic round / "
          "best direct figure)")
    print(json.dumps({"device": str(device), "rows": args.n, "best_batched_per_s": round(best, 1),
                      "ppu_per_s": round(dyn, 1),
                      "naive_per_s": round(one, 1), "efficiency": round(dyn / best, 3),
                      "efficiency_rounds": [round(q, 3) for q in ratios],
                      "best_batch_size": best_bs, "mean_forward_batch": round(mean_batch, 1)}))


if __name__ == "__main__":
    main()
