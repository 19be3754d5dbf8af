"""Surrogate (GP): calibration, agreement with BoTorch, training as a task, registry, hot swap."""

from __future__ import annotations

import asyncio
import json
import math
import threading

import numpy as np
import pytest
import torch

from ppu.backends.base import TaskRun
from ppu.backends.registry import build_backend
from ppu.digital.model_registry import ModelRegistry, file_sha256
from ppu.digital.nets import mlp
from ppu.digital.surrogate import Z90, fit_gp
from ppu.digital.torch_backend import TorchBackend
from ppu.drivers.mof.featurize import FEATURIZER_VERSION, N_FEATURES, layout
from ppu.models import ResultStatus


def _noop(*_a):
    return None


def smooth(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(5 * x[:, 0]) + 0.5 * torch.cos(3 * x[:, 1]) + x[:, 2] ** 2


def test_gp_intervals_are_calibrated():
    torch.manual_seed(0)
    np.random.seed(0)
    noise = 0.1
    x = torch.rand(80, 3, dtype=torch.float64)
    y = smooth(x) + noise * torch.randn(80, dtype=torch.float64)
    fit = fit_gp(x, y, seed=0)
    xt = torch.rand(500, 3, dtype=torch.float64)
    yt = smooth(xt) + noise * torch.randn(500, dtype=torch.float64)
    out = fit.predictor(xt)
    z = (yt - out[:, 0]) / out[:, 1]
    coverage = float((z.abs() <= Z90).double().mean())
    assert 0.75 <= coverage <= 0.99, coverage
    assert 0.75 <= fit.metrics["loo_coverage90"] <= 1.0
    assert fit.metrics["loo_rmse"] < 0.3


def test_exported_predictor_equals_botorch_posterior():
    torch.manual_seed(1)
    x = torch.rand(30, 4, dtype=torch.float64)
    x[:, 3] = 0.25  # a constant column is dropped from the GP inputs
    y = smooth(x) + 0.05 * torch.randn(30, dtype=torch.float64)
    fit = fit_gp(x, y, seed=1)
    assert fit.kwargs["n_active"] == 3
    xt = torch.rand(50, 4, dtype=torch.float64)
    p = fit.predictor
    with torch.no_grad():
        post = fit.botorch_model.posterior((xt[:, p.cols] - p.lo) / p.span, observation_noise=True)
        mean, std = post.mean.reshape(-1), post.variance.reshape(-1).sqrt()
        out = p(xt)
    torch.testing.assert_close(out[:, 0], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[:, 1], std, rtol=1e-4, atol=1e-5)


def _train_task(i: int, target: str, n: int, seed: int) -> TaskRun:
    rng = np.random.default_rng(seed)
    cands, vals = [], []
    for _ in range(n):
        a = float(rng.uniform(0, 1))
        t = float(rng.uniform(200, 900))
        cands.append({"composition": {"Mg": round(a, 4), "Zn": round(1 - a, 4)}, "anneal_temperature_c": t})
        vals.append(math.sin(4 * a) + t / 1000 + float(rng.normal(0, 0.05)))
    return TaskRun(task_id=f"train-{i}", attempt=1, capability="train.surrogate",
                   inputs={"target": target, "candidates": cands, "values": vals, "seed": seed})


def _predict_task(i: int, a: float = 0.4) -> TaskRun:
    return TaskRun(task_id=f"p{i}", attempt=1, capability="predict.co2_uptake",
                   inputs={"candidate": {"composition": {"Mg": a, "Zn": round(1 - a, 4)}}})


def test_training_is_a_task_and_predictions_follow_the_newest_version(tmp_path):
    root = tmp_path / "models"
    trainer = build_backend({"type": "surrogate_trainer", "name": "trainer", "registry": str(root)})
    server = build_backend({"type": "torch", "name": "gp", "models": {"predict.co2_uptake": {"registry": str(root)}}})

    async def main():
        # before any training: a clear, retryable failure
        [early] = await server.run([_predict_task(0)], _noop)
        [t1] = await trainer.run([_train_task(1, "co2_uptake", 25, seed=1)], _noop)
        [p1] = await server.run([_predict_task(1)], _noop)
        [t2] = await trainer.run([_train_task(2, "co2_uptake", 40, seed=2)], _noop)
        [p2] = await server.run([_predict_task(2)], _noop)
        bad = _train_task(3, "co2_uptake", 5, seed=3)
        bad.inputs["candidates"][0]["composition"] = {"Qq": 1.0}
        [t3] = await trainer.run([bad], _noop)
        await server.close()
        await trainer.close()
        return early, t1, p1, t2, p2, t3

    early, t1, p1, t2, p2, t3 = asyncio.run(main())
    assert early.status is ResultStatus.failed and early.retryable and "train.surrogate" in (early.error or "")
    assert t1.status is ResultStatus.succeeded, t1.error
    assert (t1.outputs["version"], t1.outputs["n_train"]) == ("v0001", 25)
    assert p1.outputs["model_version"] == "v0001" and p1.provenance.model_version == "v0001"
    assert t2.outputs["version"] == "v0002"
    assert p2.outputs["model_version"] == "v0002"
    assert p2.provenance.model_name == "gp-co2_uptake"
    assert t3.status is ResultStatus.failed and not t3.retryable and "Qq" in (t3.error or "")
    v2 = root / "co2_uptake" / "v0002"
    assert sorted(p.name for p in v2.iterdir()) == ["data.json", "meta.json", "metrics.json", "model.pt"]
    assert p2.provenance.weights_sha256 == file_sha256(v2 / "model.pt")
    assert len(json.loads((v2 / "data.json").read_text())["values"]) == 40
    assert json.loads((v2 / "meta.json").read_text())["featurizer"] == FEATURIZER_VERSION
    assert "loo_rmse" in json.loads((v2 / "metrics.json").read_text())


def _publish(reg: ModelRegistry, seed: int) -> str:
    m = mlp(N_FEATURES, hidden=16, seed=seed)
    ver = reg.publish("co2_uptake", state_dict=m.state_dict(), factory="ppu.digital.nets:mlp",
                      kwargs={"n_features": N_FEATURES, "hidden": 16, "seed": None}, name="mlp", metrics={}, data={},
                      extra_meta=layout())
    return ver.version


def test_hot_swap_happens_between_batches_never_mid_batch(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    assert _publish(reg, seed=1) == "v0001"
    server = build_backend({"type": "torch", "name": "gp", "batch_size": 4, "max_wait_ms": 50,
                            "models": {"predict.co2_uptake": {"registry": str(reg.root)}}})
    assert isinstance(server, TorchBackend)
    entered, release = threading.Event(), threading.Event()

    async def main():
        await server.start()
        inner = server._forward_model
        first = True

        def gated(m, x):  # the first real batch stops mid-forward until v0002 is published
            nonlocal first
            if first:
                first = False
                entered.set()
                assert release.wait(10)
            return inner(m, x)

        server._forward_model = gated  # type: ignore[method-assign]
        batch_a = asyncio.create_task(server.run([_predict_task(i, 0.1 * i) for i in range(1, 5)], _noop))
        await asyncio.to_thread(entered.wait, 10)
        assert _publish(reg, seed=2) == "v0002"  # lands while batch A is inside its forward pass
        release.set()
        a = await batch_a
        b = await server.run([_predict_task(i, 0.1 * i) for i in range(1, 5)], _noop)
        await server.close()
        return a, b

    a, b = asyncio.run(main())
    assert {r.outputs["model_version"] for r in a} == {"v0001"}
    assert {r.outputs["model_version"] for r in b} == {"v0002"}
    assert all(ra.outputs["mean"] != rb.outputs["mean"] for ra, rb in zip(a, b, strict=True))
    assert all(r.provenance.weights_sha256 == file_sha256(reg.get("co2_uptake", "v0002").weights_path) for r in b)


def test_registry_numbers_versions_and_refuses_bad_targets(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert reg.latest("band_gap") is None
    assert [_publish(reg, s) for s in range(3)] == ["v0001", "v0002", "v0003"]
    assert [v.version for v in reg.versions("co2_uptake")] == ["v0001", "v0002", "v0003"]
    from ppu.errors import ConfigError

    with pytest.raises(ConfigError):
        reg.latest("../etc")


def test_a_broken_new_version_does_not_replace_the_served_one(tmp_path, caplog):
    reg = ModelRegistry(tmp_path / "models")
    _publish(reg, seed=1)
    server = build_backend({"type": "torch", "name": "gp",
                            "models": {"predict.co2_uptake": {"registry": str(reg.root)}}})

    async def main():
        [a] = await server.run([_predict_task(1)], _noop)
        _publish(reg, seed=2)
        (reg.root / "co2_uptake" / "v0002" / "model.pt").write_bytes(b"tampered")
        [b] = await server.run([_predict_task(1)], _noop)
        [c] = await server.run([_predict_task(1)], _noop)
        await server.close()
        return a, b, c

    a, b, c = asyncio.run(main())
    assert a.outputs == b.outputs == c.outputs and b.outputs["model_version"] == "v0001"
    assert sum("cannot load" in r.message for r in caplog.records) == 1  # tried once, not every batch


def test_training_on_extra_columns_and_a_given_box_and_the_errors_that_name_the_field(tmp_path):
    """A campaign's learn step trains on the features plus the twin's columns, scaled from the pool's
    box; the result carries the kernel in feature units. Rows or a box of the wrong shape fail, not retried."""
    trainer = build_backend({"type": "surrogate_trainer", "name": "trainer", "registry": str(tmp_path)})
    ok = _train_task(1, "co2_uptake_measured", 12, seed=4)
    ok.inputs["extra_features"] = [[float(v) + 0.1] for v in ok.inputs["values"]]
    ok.inputs["extra_feature_names"] = ["twin"]
    n_all = N_FEATURES + 1
    ok.inputs["feature_bounds"] = [[0.0] * n_all, [1000.0] * n_all]  # a box around every feature
    short = _train_task(2, "co2_uptake_measured", 12, seed=4)
    short.inputs["extra_features"] = [[0.0]] * 11
    box = _train_task(3, "co2_uptake_measured", 12, seed=4)
    box.inputs["feature_bounds"] = [[0.0] * 3, [1.0] * 3]

    async def main():
        out = [(await trainer.run([t], _noop))[0] for t in (ok, short, box)]
        await trainer.close()
        return out

    good, bad_rows, bad_box = asyncio.run(main())
    assert good.status is ResultStatus.succeeded, good.error
    kernel = good.outputs["kernel"]
    assert len(kernel["lengthscale"]) == n_all and kernel["lengthscale"][-1] is not None
    meta = json.loads((tmp_path / "co2_uptake_measured" / "v0001" / "meta.json").read_text())
    assert meta["feature_names"][-1] == "twin" and meta["kwargs"]["n_features"] == n_all
    for res, field in ((bad_rows, "extra_features"), (bad_box, "feature_bounds")):
        assert res.status is ResultStatus.failed and not res.retryable and field in (res.error or ""), res.error
