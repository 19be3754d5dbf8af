"""The ray backend on a local Ray (2 CPUs, one per session): blocks over actors; a dead actor is a retried attempt."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_digital_columnar import CAP, candidates
from test_digital_ray_config import start
from transport_helpers import lab_config

from ppu.backends.base import TaskRun
from ppu.backends.registry import build_backend
from ppu.digital.nets import mlp
from ppu.drivers.mof.featurize import N_FEATURES, candidate_columns, features_from_columns
from ppu.models import ResultStatus, TaskState
from ppu.transport.lab import EmbeddedLab

pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("ray_local")


def _noop(*_a: Any) -> None:
    return None


def ray_entry(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    weights = tmp_path / "mlp.pt"
    torch.save(mlp(N_FEATURES, hidden=32, seed=3).state_dict(), weights)
    return {"type": "ray", "name": "cluster", "actors": 2, "max_batch": 64, "part_rows": 100,
            "models": {CAP: {"factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": N_FEATURES, "hidden": 32},
                             "weights": str(weights), "version": "7"}}, **kw}


def slow_echo_entry(delay_s: float, **kw: Any) -> dict[str, Any]:
    return {"type": "ray", "name": "slow", "actors": 1, "batch_size": 4,
            "models": {"echo": {"factory": "ppu.corepack:slow_doubler", "kwargs": {"delay_s": delay_s},
                                "encoder": "ppu.corepack:encode_echo", "decoder": "ppu.corepack:decode_echo",
                                "version": "1"}}, "warmup": False, **kw}  # a warm-up pass would sleep too


def test_slots_are_the_actors_capacity(tmp_path: Path) -> None:
    b = build_backend(ray_entry(tmp_path, actors=3))
    assert b.spec().slots == 6
    assert build_backend(ray_entry(tmp_path, actors=3, slots=1)).spec().slots == 1


def test_a_bad_address_is_refused_naming_the_field(tmp_path: Path) -> None:
    from ppu.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        build_backend(ray_entry(tmp_path, address="nowhere"))
    assert "address" in str(err.value)


def test_a_block_spread_over_actors_gives_the_model_numbers(tmp_path: Path) -> None:
    cands = candidates(730)
    cols = candidate_columns(cands)
    backend = build_backend(ray_entry(tmp_path))
    seen: list[float] = []
    run = TaskRun(task_id="b", attempt=1, capability=CAP, block={"rows": 730, "columns": list(cols)}).with_columns(cols)
    rows = [TaskRun(task_id=f"r{i}", attempt=1, capability=CAP, inputs={"candidate": c})
            for i, c in enumerate(cands[:5])]
    bad = TaskRun(task_id="bad", attempt=1, capability=CAP, inputs={"candidate": {"composition": {"Xx": 1.0}}})

    async def go() -> list[Any]:
        try:
            return await backend.run([run, *rows[:2], bad, *rows[2:]], lambda t, f, m: seen.append(f))
        finally:
            await backend.close()

    block, *others = asyncio.run(go())
    assert block.status is ResultStatus.succeeded, block.error
    assert block.provenance.extra["parts"] == 8 and block.provenance.extra["ray_actors"] == 2
    model = mlp(N_FEATURES, hidden=32, seed=3)
    model.load_state_dict(torch.load(tmp_path / "mlp.pt", weights_only=True))
    with torch.inference_mode():
        want = model(torch.from_numpy(features_from_columns(cols)).float()).numpy()
    np.testing.assert_allclose(block.columns()["mean"], want[:, 0], rtol=1e-5, atol=1e-6)
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert [r.status for r in others] == ["succeeded"] * 2 + ["failed"] + ["succeeded"] * 3
    assert others[2].retryable is False and "Xx" in (others[2].error or "")
    np.testing.assert_allclose([r.outputs["mean"] for r in others[:2]], want[:2, 0], rtol=1e-5, atol=1e-6)


def test_an_actor_killed_mid_batch_fails_the_attempt_as_retryable_and_is_replaced() -> None:
    import ray

    backend = build_backend(slow_echo_entry(30.0))
    runs = [TaskRun(task_id=f"e{i}", attempt=1, capability="echo", inputs={"x": float(i)}) for i in range(3)]

    async def go() -> tuple[list[Any], Any, Any]:
        await backend.start()
        try:
            victim = backend.actors[0]  # type: ignore[attr-defined]
            fut = asyncio.ensure_future(backend.run(runs, _noop))
            while backend.load[0] == 0:  # type: ignore[attr-defined]  # the batch is on the actor
                await asyncio.sleep(0.01)
            ray.kill(victim)
            results = await fut
            return results, victim, backend.actors[0]  # type: ignore[attr-defined]
        finally:
            await backend.close()

    results, victim, now = asyncio.run(go())
    assert all(r.status is ResultStatus.failed and r.retryable for r in results), results
    assert "Ray lost the work" in (results[0].error or "")
    assert now is not victim  # replaced for the next attempt


def test_the_scheduler_retries_an_attempt_whose_actor_died(tmp_path: Path) -> None:
    import ray

    backend = build_backend(slow_echo_entry(1.0))
    # Heartbeats generous enough that a loaded machine (Ray restarting an actor on 2 cores) is not
    # taken for a lost worker: the one failed attempt here must be the killed actor's.
    lab = lab_config(tmp_path, [], orchestrator={"heartbeat_s": 1.0, "missed_heartbeats": 5, "backoff_base_s": 0.0})

    async def go() -> Any:
        async with EmbeddedLab(lab, backends=[backend]) as client:
            [tid] = await client.submit([{"capability": "echo", "inputs": {"x": 2.0}}])
            while backend.load[0] == 0:  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
            ray.kill(backend.actors[0])  # type: ignore[attr-defined]
            [task] = await client.wait([tid], timeout=60)
            return task, await client.result(tid)

    task, result = asyncio.run(go())
    assert task.state is TaskState.succeeded and task.attempts == 2
    assert result is not None and result.outputs["y"] == 4.0


def test_screen_through_the_lab_on_ray(tmp_path: Path) -> None:
    cands = candidates(450, seed=2)
    cols = candidate_columns(cands)
    lab = lab_config(tmp_path, [ray_entry(tmp_path)])

    async def go() -> tuple[dict[str, np.ndarray], list[Any]]:
        async with EmbeddedLab(lab) as client:
            return await client.screen(CAP, cols, block_rows=200)

    out, results = asyncio.run(go())
    assert [r.artifact.rows for r in results] == [200, 200, 50]  # type: ignore[union-attr]
    assert len(out["mean"]) == 450 and np.isfinite(out["mean"]).all()


def _block(task_id: str, cols: dict[str, np.ndarray]) -> TaskRun:
    rows = len(next(iter(cols.values())))
    return TaskRun(task_id=task_id, attempt=1, capability=CAP,
                   block={"rows": rows, "columns": list(cols)}).with_columns(cols)


def test_a_block_its_encoder_refuses_fails_like_on_torch_naming_rows_from_the_blocks_start(tmp_path: Path) -> None:
    good = candidate_columns(candidates(250, seed=4))
    nan, inf = dict(good, anneal_time_h=good["anneal_time_h"].copy()), dict(good)
    nan["anneal_time_h"][230] = np.nan
    inf["anneal_temperature_c"] = good["anneal_temperature_c"].copy()
    inf["anneal_temperature_c"][230] = np.inf
    missing = {k: v for k, v in good.items() if k != "anneal_time_h"}
    unknown = dict(good, colour=np.zeros(250))
    backend = build_backend(ray_entry(tmp_path))  # part_rows 100: row 230 is row 30 of the third part

    async def go() -> list[Any]:
        try:
            return await backend.run([_block("nan", nan), _block("inf", inf), _block("missing", missing),
                                      _block("unknown", unknown), _block("good", good)], _noop)
        finally:
            await backend.close()

    *bad, fine = asyncio.run(go())
    assert fine.status is ResultStatus.succeeded, fine.error
    for r in bad:
        assert r.status is ResultStatus.failed and r.retryable is False, r
        assert (r.error or "").startswith("cannot encode the block: "), r.error
        assert "ray::" not in (r.error or "") and "Traceback" not in (r.error or "") and "File " not in (r.error or "")
    assert "anneal_time_h" in (bad[0].error or "") and "row(s) 230" in (bad[0].error or "")
    assert "anneal_temperature_c" in (bad[1].error or "") and "row(s) 230" in (bad[1].error or "")
    assert "anneal_time_h" in (bad[2].error or "")
    assert "colour" in (bad[3].error or "")


def test_a_block_for_an_encoder_without_a_columnar_form_is_refused_without_a_traceback() -> None:
    backend = build_backend(slow_echo_entry(0.0))
    run = TaskRun(task_id="b", attempt=1, capability="echo",
                  block={"rows": 3, "columns": ["x"]}).with_columns({"x": np.arange(3.0)})

    async def go() -> Any:
        try:
            return await backend.run([run], _noop)
        finally:
            await backend.close()

    [r] = asyncio.run(go())
    assert r.status is ResultStatus.failed and r.retryable is False
    assert "cannot encode the block:" in (r.error or "") and "columnar form" in (r.error or "")
    assert "ray::" not in (r.error or "")


@pytest.mark.parametrize("weights", ["missing", "misfit"])
def test_weights_that_are_missing_or_do_not_fit_fail_the_start_naming_the_field(tmp_path: Path,
                                                                               weights: str) -> None:
    from ppu.errors import ConfigError

    entry = ray_entry(tmp_path, actors=1)
    if weights == "missing":
        entry["models"][CAP]["weights"] = str(tmp_path / "nowhere.pt")
    else:
        entry["models"][CAP]["kwargs"]["hidden"] = 16  # the file holds a 32-wide net
    backend = build_backend(entry)
    with pytest.raises(ConfigError) as err:
        start(backend)
    assert err.value.field == f"models.{CAP}.weights"
    assert ("does not exist" if weights == "missing" else "does not fit") in str(err.value)
    assert "ray::" not in str(err.value) and not backend.actors  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["exported", "torchscript"])
def test_a_damaged_model_file_fails_the_start_naming_the_field(tmp_path: Path, kind: str) -> None:
    from ppu.errors import ConfigError

    damaged = tmp_path / "model.pt2"
    damaged.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)  # a zip's first bytes, then nothing a zip holds
    entry = ray_entry(tmp_path, actors=1)
    entry["models"][CAP] = {kind: str(damaged)}
    backend = build_backend(entry)
    with pytest.raises(ConfigError) as err:
        start(backend)
    assert err.value.field == f"models.{CAP}.{kind}" and "torch can load" in str(err.value)
    assert "ray::" not in str(err.value) and not backend.actors  # type: ignore[attr-defined]
