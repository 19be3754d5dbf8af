"""Plain forward passes as the torch backend's model instances run them: side by side, a thread each.

Shared by ``batching.py`` and ``screening.py`` (a helper, not a benchmark: ``make bench`` skips
files whose name starts with ``_``). Their ceiling is whichever way the plain model goes fastest on
the device, one stream over all of torch's threads or as many streams as the backend serves
instances, so that the backend is never compared with a slower way of running the same model.
"""

from __future__ import annotations

import threading
import time

import torch


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def direct_streams(model: torch.nn.Module, x: torch.Tensor, batch: int, device: torch.device,
                   streams: int, repeats: int = 1) -> float:
    """Items per second of ``streams`` threads doing plain forward passes side by side over ``x``, each
    with its share of torch's threads (the backend's instances, without the backend); the best of
    ``repeats``."""
    return max(_once(model, x, batch, device, streams) for _ in range(repeats))


def _once(model: torch.nn.Module, x: torch.Tensor, batch: int, device: torch.device, streams: int) -> float:
    assert streams >= 2, "one stream is the benchmark's own direct()"
    share = max(1, torch.get_num_threads() // streams) if device.type == "cpu" else None
    parts = list(x.chunk(streams))
    ready = threading.Barrier(streams + 1)

    def stream(part: torch.Tensor) -> None:
        if share is not None:
            torch.set_num_threads(share)  # this thread only (OpenMP)
        with torch.inference_mode():
            model(part[:batch])  # warm this shape on this thread
            sync_device(device)
            ready.wait()
            for i in range(0, part.shape[0], batch):
                model(part[i:i + batch])
            sync_device(device)

    threads = [threading.Thread(target=stream, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return x.shape[0] / (time.perf_counter() - t0)
