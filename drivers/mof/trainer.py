"""``surrogate_trainer``: training a surrogate is a digital task like any other (``train.surrogate``).

Each task fits a GP (see :mod:`ppu.digital.surrogate`) to the candidates and values it carries,
and publishes a new version ``<registry>/<target>/vNNNN/`` (weights, metrics.json, data.json,
meta.json). A :class:`~ppu.digital.torch_backend.TorchBackend` whose spec names the same
registry picks the new version up between batches. The fit runs on this backend's own thread
(``ppu-train-<name>``), one at a time, so the worker's event loop keeps its heartbeats.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import Field

from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.digital.model_registry import ModelRegistry, ModelVersion
from ppu.digital.surrogate import GP_FACTORY, GPPredictor, fit_gp
from ppu.drivers.mof.capabilities import GPKernel, TrainInput, TrainOutput
from ppu.drivers.mof.featurize import FEATURIZER_VERSION, feature_names, featurize
from ppu.errors import PPUError, ValidationFailed
from ppu.models import BackendKind, CapabilityOffer, Result


def train_surrogate(registry: str | Path, inputs: TrainInput) -> tuple[ModelVersion, dict[str, float], GPKernel]:
    """Fit a GP to ``inputs`` and publish it as the next version of ``inputs.target``. Blocking."""
    x = featurize(inputs.candidates)
    names = feature_names()
    if inputs.extra_features is not None:
        extra = torch.tensor(inputs.extra_features, dtype=torch.float64).reshape(len(inputs.extra_features), -1)
        if extra.shape[0] != x.shape[0]:
            raise ValidationFailed(f"{extra.shape[0]} rows of extra_features for {x.shape[0]} candidates",
                                   field="inputs.extra_features")
        if len(inputs.extra_feature_names) not in (0, extra.shape[1]):
            raise ValidationFailed(f"{len(inputs.extra_feature_names)} names for {extra.shape[1]} extra columns",
                                   field="inputs.extra_feature_names")
        x = torch.cat([x, extra], dim=-1)
        names = names + (inputs.extra_feature_names or [f"extra_{k}" for k in range(extra.shape[1])])
    y = torch.tensor(inputs.values, dtype=torch.float64)
    bounds = None if inputs.feature_bounds is None else torch.tensor(inputs.feature_bounds, dtype=torch.float64)
    fit = fit_gp(x, y, seed=inputs.seed, bounds=bounds)
    data = {"target": inputs.target, "seed": inputs.seed, "values": inputs.values,
            "candidates": [c.model_dump(mode="json") for c in inputs.candidates],
            "extra_features": inputs.extra_features}
    ver = ModelRegistry(registry).publish(
        inputs.target, state_dict=fit.predictor.state_dict(), factory=GP_FACTORY, kwargs=fit.kwargs,
        name=f"gp-{inputs.target}", metrics=fit.metrics, data=data,
        extra_meta={"featurizer": FEATURIZER_VERSION, "feature_names": names, "surrogate": "gp"})
    return ver, fit.metrics, kernel_of(fit.predictor)


def kernel_of(pred: GPPredictor) -> GPKernel:
    """The exported GP's hyperparameters in feature units (its lengthscales were on the unit cube of
    the columns that varied in its training data)."""
    ls: list[float | None] = [None] * pred.n_features
    for c, length, span in zip(pred.cols.tolist(), pred.lengthscale.tolist(), pred.span.tolist(), strict=True):
        ls[c] = float(length * span)
    return GPKernel(lengthscale=ls, outputscale=float(pred.outputscale), noise=float(pred.noise),
                    constant=float(pred.const))


class TrainerConfig(BackendConfig):
    registry: str = Field("runs/models", description="model registry root shared with the serving backends")
    fidelity: float = Field(1.0, ge=0, le=1)
    duration_s: float = Field(2.0, gt=0, description="expected lab seconds per training task")


class SurrogateTrainerBackend(Backend):
    kind = BackendKind.digital
    Config: ClassVar[type[BackendConfig]] = TrainerConfig

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        assert isinstance(config, TrainerConfig)
        self.cfg = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ppu-train-{config.name}")

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="train.surrogate", fidelity=self.cfg.fidelity,
                                duration_s=self.cfg.duration_s)]

    async def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        loop = asyncio.get_running_loop()
        out = []
        for run in batch:
            started = time.time()
            if run.capability != "train.surrogate":
                out.append(self.fail(run, f"{self.name} does not serve {run.capability}", started,
                                     retryable=False))
                continue
            try:
                inputs = TrainInput.model_validate(run.inputs)
                ver, metrics, kernel = await loop.run_in_executor(self._executor, train_surrogate,
                                                                  self.cfg.registry, inputs)
            except (PPUError, ValueError) as exc:  # bad data: running it again will not help
                out.append(self.fail(run, f"training failed: {exc}", started, retryable=False))
                continue
            except Exception as exc:
                out.append(self.fail(run, f"training failed: {type(exc).__name__}: {exc}", started))
                continue
            res = TrainOutput(version=ver.version, n_train=len(inputs.values), metrics=metrics, kernel=kernel)
            out.append(self.ok(run, res.model_dump(), started, model_name=f"gp-{inputs.target}",
                               model_version=ver.version, weights_sha256=ver.meta()["weights_sha256"],
                               device="cpu", extra={"path": str(ver.path)}))
        return out
