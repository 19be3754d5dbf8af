"""TorchBackend and its MicroBatcher: grouping, routing, per-item failure, device, provenance."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time

import pytest
import torch

from ppu.backends.base import TaskRun
from ppu.backends.registry import build_backend
from ppu.digital.batcher import MicroBatcher
from ppu.digital.nets import mlp
from ppu.digital.torch_backend import TorchBackend, select_device
from ppu.drivers.mof.featurize import N_FEATURES, featurize_one
from ppu.errors import ConfigError
from ppu.models import ResultStatus

ELEMENTS = ["Mg", "Zn", "Cu", "Co", "Ni", "Fe", "Mn", "Al"]


def _noop(*_a):
    return None


def candidate(i: int) -> dict:
    rng = random.Random(i)
    a, b = rng.sample(ELEMENTS, 2)
    f = round(rng.uniform(0.1, 0.9), 3)
    return {"composition": {a: f, b: round(1 - f, 3)}, "anneal_temperature_c": rng.uniform(200, 900),
            "anneal_time_h": rng.uniform(1, 12)}


def task(i: int, cap: str = "predict.co2_uptake", cand: dict | None = None) -> TaskRun:
    return TaskRun(task_id=f"t{i}", attempt=1, capability=cap, inputs={"candidate": cand or candidate(i)})


@pytest.fixture()
def weights(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(mlp(N_FEATURES, hidden=32, seed=3).state_dict(), path)
    return path


def make_backend(weights, **kw) -> TorchBackend:
    raw = {"type": "torch", "name": "surrogate", "batch_size": 8, "slots": 4, "max_wait_ms": 20,
           "models": {"predict.co2_uptake": {"factory": "ppu.digital.nets:mlp",
                                             "kwargs": {"n_features": N_FEATURES, "hidden": 32},
                                             "weights": str(weights), "version": "7"},
                      "predict.band_gap": {"factory": "ppu.digital.nets:mlp",
                                           "kwargs": {"n_features": N_FEATURES, "hidden": 32, "seed": 5}}},
           **kw}
    b = build_backend(raw)
    assert isinstance(b, TorchBackend)
    return b


def reference(weights, cand: dict) -> tuple[float, float]:
    m = mlp(N_FEATURES, hidden=32)
    m.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        out = m(torch.tensor([featurize_one(cand)], dtype=torch.float32))
    return float(out[0, 0]), float(out[0, 1])


# ---- MicroBatcher ------------------------------------------------------------------------------


def test_microbatcher_groups_routes_and_caps():
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(items)
        return [x * 10 for x in items]

    async def main():
        mb: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=16, max_wait_s=0.05)
        sizes = [1, 5, 3, 9, 2, 20]  # mixed sizes, 40 items, arriving concurrently
        start = 0
        groups = []
        for s in sizes:
            groups.append(list(range(start, start + s)))
            start += s
        outs = await asyncio.gather(*(mb.submit_many(g) for g in groups))
        for g, o in zip(groups, outs, strict=True):
            assert o == [x * 10 for x in g]
        await mb.close()
        return mb.batch_sizes

    batch_sizes = asyncio.run(main())
    assert sum(batch_sizes) == 40 and max(batch_sizes) <= 16
    assert len(batch_sizes) == 3  # 40 rows in as few 16-row forward passes as possible


def test_microbatcher_failure_fails_its_batch_only():
    def fn(items: list[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("boom")
        return items

    async def main():
        mb: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=4, max_wait_s=0.0)
        bad = await mb.submit_many([13])
        good = await mb.submit_many([1, 2])
        await mb.close()
        return bad, good

    bad, good = asyncio.run(main())
    assert isinstance(bad[0], RuntimeError) and good == [1, 2]


@pytest.mark.parametrize("depth", [1, 2])
def test_microbatcher_depth_bounds_the_batches_out_at_once(depth: int) -> None:
    """Two executor threads and a first batch that blocks: with depth 2 a second, full batch is handed to
    fn while the first still runs, and a partial one fills until the first ends; with depth 1 nothing
    goes out meanwhile. Every item gets its own result either way; a failing batch fails alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    release = threading.Event()
    started: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        started.append(list(items))
        if 0 in items:
            release.wait(10)
        if 99 in items:
            raise RuntimeError("boom")
        return [x * 2 for x in items]

    async def main() -> tuple[list[int | BaseException], list[int], int]:
        pool = ThreadPoolExecutor(max_workers=2)
        mb: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=4, max_wait_s=0.001, executor=pool, depth=depth)
        first = asyncio.ensure_future(mb.submit_many([0]))
        await asyncio.sleep(0.05)  # the first batch is out and blocked
        rest = asyncio.ensure_future(mb.submit_many([1, 2, 3, 4]))  # a full batch
        more = asyncio.ensure_future(mb.submit_many([5]))  # a partial one: it waits for the first to end
        await asyncio.sleep(0.1)
        seen_while_blocked = len(started)
        release.set()
        out = await first + await rest + await more
        bad = await mb.submit_many([99])
        await mb.close()
        pool.shutdown()
        return bad, out, seen_while_blocked

    bad, out, seen = asyncio.run(main())
    assert out == [0, 2, 4, 6, 8, 10] and isinstance(bad[0], RuntimeError)
    assert seen == depth  # depth 2: [1, 2, 3, 4] went out while [0] ran, [5] did not; depth 1: nothing did
    assert started[1] == [1, 2, 3, 4] and started[2] == [5]


def test_microbatcher_parallel_runs_batches_side_by_side() -> None:
    """parallel: a batch leaves when its wait is up even while another is out, and the executor's
    threads run them at once (fn waits at a barrier that only two batches inside at once pass)."""
    from concurrent.futures import ThreadPoolExecutor

    both_in = threading.Barrier(2, timeout=10)
    threads: list[str] = []

    def fn(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        both_in.wait()  # BrokenBarrierError (the batch fails) unless the other batch is in fn too
        return [x + 1 for x in items]

    async def main() -> list[int | BaseException]:
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inst")
        mb: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=4, max_wait_s=0.001, executor=pool, depth=2,
                                                  parallel=True)
        first = asyncio.ensure_future(mb.submit_many([1]))
        await asyncio.sleep(0.05)  # [1] is out, waiting at the barrier
        out = await mb.submit_many([2, 3]) + await first
        await mb.close()
        pool.shutdown()
        return out

    assert asyncio.run(main()) == [3, 4, 2]
    assert len(set(threads)) == 2


# ---- TorchBackend ------------------------------------------------------------------------------


def test_model_instances_each_get_their_share_of_torch_threads(weights):
    """Two instances: two threads, each with half of torch's CPU threads (per thread, as OpenMP
    sets them); the event loop's thread keeps its own."""
    backend = make_backend(weights, instances=2, device="cpu")
    assert backend.instances == 2
    here = torch.get_num_threads()
    both_in = threading.Barrier(2, timeout=10)

    def probe() -> tuple[str, int]:
        both_in.wait()  # both threads of the pool, not one twice
        return threading.current_thread().name, torch.get_num_threads()

    seen = [f.result(10) for f in [backend._executor.submit(probe) for _ in range(2)]]
    backend._executor.shutdown()
    assert len({name for name, _ in seen}) == 2
    assert all(n == max(1, here // 2) for _, n in seen)
    assert torch.get_num_threads() == here
    default = make_backend(weights, device="cpu")
    assert default.instances == (2 if here >= 2 else 1)
    default._executor.shutdown()




def test_concurrent_runs_share_forward_passes_and_route_back(weights):
    backend = make_backend(weights)

    async def main():
        await backend.start()
        sizes = [1, 3, 1, 7, 2, 1, 5, 1, 4, 1]
        batches, i = [], 0
        for s in sizes:
            batches.append([task(j) for j in range(i, i + s)])
            i += s
        results = await asyncio.gather(*(backend.run(b, _noop) for b in batches))
        await backend.close()
        return batches, results

    batches, results = asyncio.run(main())
    for b, rs in zip(batches, results, strict=True):
        assert [r.task_id for r in rs] == [t.task_id for t in b]
        for t, r in zip(b, rs, strict=True):
            assert r.status is ResultStatus.succeeded, r.error
            mean, std = reference(weights, t.inputs["candidate"])
            assert r.outputs["mean"] == pytest.approx(mean, rel=1e-5, abs=1e-6)
            assert r.outputs["std"] == pytest.approx(std, rel=1e-5, abs=1e-6)
            assert r.outputs["model_version"] == "7"
    sizes = backend.served["predict.co2_uptake"].batcher.batch_sizes
    assert sum(sizes) == 26 and len(sizes) < 10  # ten run() calls, fewer forward passes
    assert max(sizes) <= 32  # batch_size x slots


def test_failing_item_fails_only_its_own_task(weights):
    backend = make_backend(weights)
    bad = {"composition": {"Mg": 0.5, "Unobtainium": 0.5}}
    batch = [task(0), task(1, cand=bad), task(2), task(3, cap="predict.band_gap"), task(4, cap="echo")]
    results = asyncio.run(backend.run(batch, _noop))
    assert [r.status for r in results] == [ResultStatus.succeeded, ResultStatus.failed, ResultStatus.succeeded,
                                           ResultStatus.succeeded, ResultStatus.failed]
    assert "Unobtainium" in (results[1].error or "") and results[1].retryable is False
    assert "does not serve echo" in (results[4].error or "")
    asyncio.run(backend.close())


def test_provenance_hash_is_sha256_of_weights_file(weights):
    backend = make_backend(weights)
    [r, g] = asyncio.run(backend.run([task(0), task(1, cap="predict.band_gap")], _noop))
    p = r.provenance
    assert p is not None and p.kind == "digital"
    assert p.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (p.model_name, p.model_version, p.device) == ("ppu.digital.nets:mlp", "7", "cpu")
    assert p.extra["forward_batch"] >= 1 and p.extra["dtype"] == "float32"
    assert g.provenance is not None and g.provenance.weights_sha256 is None  # factory with no weights file
    assert g.outputs["model_version"] == "unversioned"
    asyncio.run(backend.close())


def test_device_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        select_device("cuda")


def test_half_precision_is_ignored_on_cpu(weights):
    backend = make_backend(weights, half=True, device="cpu")
    [r] = asyncio.run(backend.run([task(0)], _noop))
    assert r.provenance is not None and r.provenance.extra["dtype"] == "float32"
    asyncio.run(backend.close())


def test_bad_configs_are_refused(weights):
    with pytest.raises(ConfigError, match="exactly one"):
        build_backend({"type": "torch", "name": "x", "models": {"predict.purity": {}}})
    with pytest.raises(ConfigError, match="echo declares no encoder"):  # nothing says how to make its features
        build_backend({"type": "torch", "name": "x",
                       "models": {"echo": {"factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": 2}}}})


class _Sleepy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.2)  # a slow model: the loop must keep running meanwhile
        return x[:, :2].abs()


def sleepy() -> torch.nn.Module:
    return _Sleepy()


def test_forward_runs_off_the_event_loop(monkeypatch):
    import ppu.digital.loading as loading

    monkeypatch.setattr(loading, "_import", lambda path: sleepy)
    backend = build_backend({"type": "torch", "name": "slow", "warmup": False,
                             "models": {"predict.purity": {"factory": "tests.x:sleepy"}}})
    ticks = 0

    async def ticker(stop: asyncio.Event):
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def main():
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        [r] = await backend.run([task(0, cap="predict.purity")], _noop)
        stop.set()
        await t
        assert threading.current_thread() is threading.main_thread()
        await backend.close()
        return r

    r = asyncio.run(main())
    assert r.status is ResultStatus.succeeded
    assert ticks >= 10


def test_serves_a_torch_export_archive(tmp_path):
    m = mlp(N_FEATURES, hidden=8, seed=2).eval()
    x = torch.zeros(2, N_FEATURES)
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path / "mlp.pt2"
    torch.export.save(ep, path)
    backend = build_backend({"type": "torch", "name": "exp", "models": {"predict.purity": {"exported": str(path)}}})
    [r] = asyncio.run(backend.run([task(0, cap="predict.purity")], _noop))
    assert r.status is ResultStatus.succeeded, r.error
    assert r.outputs["model_version"] == "sha-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    with torch.no_grad():
        ref = m(torch.tensor([featurize_one(task(0).inputs["candidate"])]))
    assert r.outputs["mean"] == pytest.approx(float(ref[0, 0]), rel=1e-5, abs=1e-6)
    asyncio.run(backend.close())


# ---- the vectorised serving path: one encoder call, one pass and one Provenance per forward batch ----


class _Picky(torch.nn.Module):
    """mean = the first feature; std NaN where that feature is above 0.5 (a model that misbehaves per row)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = torch.where(x[:, 0] > 0.5, torch.full_like(x[:, 0], float("nan")), torch.full_like(x[:, 0], 0.1))
        return torch.stack([x[:, 0], std], dim=1)


def picky() -> torch.nn.Module:
    return _Picky()


def test_bad_rows_fail_alone_inside_a_shared_forward_batch(weights):
    n, unknown, negative = 16, 3, 11
    cands = [candidate(i) for i in range(n)]
    cands[unknown] = {"composition": {"Mg": 0.5, "Unobtainium": 0.5}, "anneal_temperature_c": 300.0,
                      "anneal_time_h": 2.0}
    cands[negative] = {"composition": {"Mg": -0.5, "Zn": 1.5}, "anneal_temperature_c": 300.0, "anneal_time_h": 2.0}
    # one forward batch of all n rows: it leaves when full (the wait is far longer than the test)
    backend = make_backend(weights, max_batch=n, max_wait_ms=60_000)

    async def main():
        await backend.start()
        out = await asyncio.gather(*(backend.run([task(i, cand=c)], _noop) for i, c in enumerate(cands)))
        await backend.close()
        return [r for [r] in out]

    results = asyncio.run(main())
    assert backend.served["predict.co2_uptake"].batcher.batch_sizes == [n]  # every row was in the same batch
    for i, r in enumerate(results):
        assert r.task_id == f"t{i}"
        if i in (unknown, negative):
            assert r.status is ResultStatus.failed and r.retryable is False
            assert (r.error or "").startswith("cannot encode the inputs: inputs.candidate")  # names the field
        else:
            assert r.status is ResultStatus.succeeded, r.error
            mean, std = reference(weights, cands[i])
            assert r.outputs["mean"] == pytest.approx(mean, rel=1e-5, abs=1e-6)
            assert r.outputs["std"] == pytest.approx(std, rel=1e-5, abs=1e-6)
            assert r.provenance is not None and r.provenance.extra["forward_batch"] == n - 2
            assert r.provenance is results[0].provenance  # one Provenance per forward batch
    assert "Unobtainium" in (results[unknown].error or "")


def test_a_row_the_model_answers_with_nan_fails_alone(monkeypatch):
    import ppu.digital.loading as loading

    monkeypatch.setattr(loading, "_import", lambda path: picky)
    backend = build_backend({"type": "torch", "name": "picky", "max_batch": 4, "max_wait_ms": 60_000,
                             "models": {"predict.purity": {"factory": "tests.x:picky", "version": "1"}}})
    li_rich = {"composition": {"Li": 0.9, "Mg": 0.1}, "anneal_temperature_c": 300.0, "anneal_time_h": 2.0}
    runs = [task(0, "predict.purity"), task(1, "predict.purity", li_rich), task(2, "predict.purity"),
            task(3, "predict.purity")]

    async def main():
        out = await asyncio.gather(*(backend.run([r], _noop) for r in runs))
        await backend.close()
        return [r for [r] in out]

    results = asyncio.run(main())
    assert [r.status for r in results] == [ResultStatus.succeeded, ResultStatus.failed, ResultStatus.succeeded,
                                           ResultStatus.succeeded]
    assert "std=nan" in (results[1].error or "") and results[1].retryable is False
    assert results[1].provenance is not None and results[1].provenance.model_version == "1"
    assert results[0].outputs == {"mean": 0.0, "std": pytest.approx(0.1), "model_version": "1"}
