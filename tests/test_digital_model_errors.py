"""A model that does not fit its capability, or that raises while it is built or warmed up, is the lab file's
mistake: a ConfigError naming ``models.<capability>.<source>`` with what was expected and what came, never a
traceback; at run time (``warmup: false``) the same words fail the attempt, not retryable.

Each case goes through the real loading path (``build_backend`` then ``start``) on ``torch``, the ``ray``
backend's actors on the session's Ray, and ``ppu worker`` as a process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_digital_ray_config import start
from transport_helpers import lab_config

from ppu import capabilities as caps
from ppu.backends.base import TaskRun
from ppu.backends.registry import build_backend
from ppu.digital.nets import mlp
from ppu.drivers.mof.featurize import N_FEATURES
from ppu.errors import ConfigError
from ppu.models import ResultStatus, TaskState
from ppu.transport.lab import EmbeddedLab

CAP = "predict.co2_uptake"
WIDTH = N_FEATURES  # what the capability's encoder makes


class BrokenForward(torch.nn.Module):
    """A model whose forward pass raises something that says nothing about shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("no calibration table loaded")


def broken_forward() -> BrokenForward:
    return BrokenForward()


def _export(path: Path, n_features: int, batch: int, dynamic: bool) -> str:
    model = mlp(n_features, hidden=8)
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    torch.export.save(torch.export.export(model, (torch.zeros(batch, n_features),), dynamic_shapes=shapes), path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Model files made the ways users make them by mistake."""
    d = tmp_path_factory.mktemp("models")
    with warnings.catch_warnings():  # torch deprecates TorchScript (files made with it still load)
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(torch.nn.Linear(5, 2))
        torch.jit.save(scripted, str(d / "narrow.ts"))
    return {"fixed4": _export(d / "fixed4.pt2", WIDTH, 4, dynamic=False),
            "fixed2": _export(d / "fixed2.pt2", WIDTH, 2, dynamic=False),  # the warm-up's own batch size
            "narrow": _export(d / "narrow.pt2", 5, 4, dynamic=True),
            "good": _export(d / "good.pt2", WIDTH, 4, dynamic=True),
            "narrow_ts": str(d / "narrow.ts")}


# name: (model spec, its field less "models.<cap>.", words the error must show)
CASES: dict[str, tuple[dict[str, Any], str, list[str]]] = {
    "factory-width": ({"factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": 5}}, "factory",
                      ["takes rows of 5 features", f"makes rows of {WIDTH} features"]),
    "exported-fixed-batch": ({"exported": "{fixed4}"}, "exported",
                             ["batch size fixed to 4", "dynamic_shapes", "Dim('batch')"]),
    "exported-fixed-to-the-warm-up-batch": ({"exported": "{fixed2}"}, "exported", ["batch size fixed to 2"]),
    "exported-width": ({"exported": "{narrow}"}, "exported", ["takes rows of 5 features", f"makes rows of {WIDTH}"]),
    "torchscript-width": ({"torchscript": "{narrow_ts}"}, "torchscript", ["takes rows of 5 features"]),
    "unknown-kwargs": ({"factory": "ppu.digital.nets:mlp", "kwargs": {"dim": 5}}, "kwargs",
                       ["takes no 'dim'", "n_features"]),
    "three-outputs": ({"factory": "torch.nn:Linear", "kwargs": {"in_features": WIDTH, "out_features": 3}}, "factory",
                      ["returned shape [2, 3]", "[B, 2] (mean, std)"]),
    "factory-raises": ({"factory": "torch.nn:Linear", "kwargs": {"in_features": -1, "out_features": 2}}, "factory",
                       ["raised RuntimeError", "negative dimension"]),
    "not-a-module": ({"factory": "builtins:dict"}, "factory", ["returned dict, not a torch nn.Module"]),
    "forward-raises": ({"factory": "test_digital_model_errors:broken_forward"}, "factory",
                       ["ValueError: no calibration table loaded"]),
}


def _spec(case: str, files: dict[str, str]) -> dict[str, Any]:
    return {k: v.format(**files) if isinstance(v, str) else v for k, v in CASES[case][0].items()}


def _task(i: int = 0) -> TaskRun:
    return TaskRun(task_id=f"t{i}", attempt=1, capability=CAP, inputs=caps.get(CAP).example)


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_that_does_not_fit_or_raises_fails_the_torch_start_naming_the_field(case: str,
                                                                                     files: dict[str, str]) -> None:
    _, source, says = CASES[case]
    with pytest.raises(ConfigError) as err:
        start({"type": "torch", "name": "t", "models": {CAP: _spec(case, files)}})
    assert err.value.field == f"models.{CAP}.{source}", str(err.value)
    for words in says:
        assert words in str(err.value), f"{words!r} not in {err.value}"
    assert "Traceback" not in str(err.value) and "\n" not in err.value.message


def test_a_fitting_exported_model_with_a_dynamic_batch_serves(files: dict[str, str]) -> None:
    backend = build_backend({"type": "torch", "name": "t", "models": {CAP: {"exported": files["good"]}}})

    async def go() -> list[Any]:
        try:
            return await backend.run([_task()], lambda *a: None)
        finally:
            await backend.close()

    [r] = asyncio.run(go())
    assert r.status is ResultStatus.succeeded, r.error


@pytest.mark.parametrize(("case", "words"), [("factory-width", "takes rows of 5 features"),
                                             ("exported-fixed-batch", "batch size fixed to 4"),
                                             ("three-outputs", "returned shape [1, 3] for 1 rows")])
def test_without_warm_up_a_misfit_fails_its_tasks_not_retryable_in_the_same_words(case: str, words: str,
                                                                                   files: dict[str, str]) -> None:
    source = CASES[case][1]
    with pytest.raises(ConfigError) as at_start:
        start({"type": "torch", "name": "t", "models": {CAP: _spec(case, files)}})
    backend = build_backend({"type": "torch", "name": "t", "warmup": False, "models": {CAP: _spec(case, files)}})

    async def go() -> list[Any]:
        try:
            one = await backend.run([_task(0)], lambda *a: None)  # a batch of one
            return one + await backend.run([_task(1), _task(2), _task(3)], lambda *a: None)
        finally:
            await backend.close()

    first, *rest = asyncio.run(go())
    assert words in (first.error or ""), first.error
    for r in [first, *rest]:
        assert r.status is ResultStatus.failed and r.retryable is False, r
        assert f"models.{CAP}.{source}" in (r.error or "") and (at_start.value.hint or "?") in (r.error or ""), \
            (at_start.value, r.error)


def test_the_scheduler_does_not_retry_a_model_that_does_not_fit(tmp_path: Path) -> None:
    backend = build_backend({"type": "torch", "name": "t", "warmup": False,
                             "models": {CAP: {"factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": 5}}}})
    lab = lab_config(tmp_path, [])

    async def go() -> Any:
        async with EmbeddedLab(lab, backends=[backend]) as client:
            [tid] = await client.submit([{"capability": CAP, "inputs": caps.get(CAP).example}])
            [task] = await client.wait([tid], timeout=60)
            return task, await client.result(tid)

    task, result = asyncio.run(go())
    assert task.state is TaskState.failed and task.attempts == 1, task
    assert result is not None and "takes rows of 5 features" in (result.error or "")


# ---- the ray backend: the same words from its actors (the session's Ray, 2 CPUs) ----


@pytest.mark.parametrize("case", ["factory-width", "unknown-kwargs", "not-a-module"])
def test_a_model_that_does_not_fit_or_raises_fails_the_ray_start_naming_the_field(
        case: str, files: dict[str, str], ray_local: Any) -> None:
    _, source, says = CASES[case]
    backend = build_backend({"type": "ray", "name": "cluster", "actors": 1, "models": {CAP: _spec(case, files)}})
    with pytest.raises(ConfigError) as err:
        start(backend)
    assert err.value.field == f"models.{CAP}.{source}", str(err.value)
    for words in says:
        assert words in str(err.value), f"{words!r} not in {err.value}"
    assert "ray::" not in str(err.value) and not backend.actors  # type: ignore[attr-defined]


def test_without_warm_up_a_misfit_on_ray_fails_its_tasks_not_retryable(ray_local: Any) -> None:
    backend = build_backend({"type": "ray", "name": "cluster", "actors": 1, "warmup": False,
                             "models": {CAP: {"factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": 5}}}})

    async def go() -> list[Any]:
        try:
            return await backend.run([_task(0), _task(1)], lambda *a: None)
        finally:
            await backend.close()

    for r in asyncio.run(go()):
        assert r.status is ResultStatus.failed and r.retryable is False, r
        assert f"models.{CAP}.factory" in (r.error or "") and "takes rows of 5 features" in (r.error or "")
        assert "ray::" not in (r.error or "")


# ---- as the user meets it: `ppu worker` ----


def _worker(tmp_path: Path, backend: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path / "run"),
                                                       "backends": [backend]}))
    env = {k: v for k, v in os.environ.items() if k != "PPU_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    try:  # the timeout only turns a hang into a failure
        return subprocess.run([sys.executable, "-m", "ppu.cli", "worker", "-c", str(tmp_path / "lab.yaml")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ppu worker hung: {exc.stdout!r} {exc.stderr!r}")


def test_ppu_worker_with_a_model_of_another_width_says_so_without_a_traceback(tmp_path: Path) -> None:
    proc = _worker(tmp_path, {"type": "torch", "name": "t", "models": {
        CAP: {"factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": 5}}}})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f"field: backends.0.models.{CAP}.factory" in out and "takes rows of 5 features" in out, out
    assert "Traceback" not in out, out
