"""``torch``: serve any torch model behind any capability, with dynamic batching.

Where things run: ``run`` is a coroutine on the worker's event loop. It validates and featurises
each task there (cheap, and a bad candidate fails only its own task), then hands the feature
rows to one :class:`~ppu.digital.batcher.MicroBatcher` per capability. The batchers group rows
from every concurrent ``run`` call up to ``max_batch`` rows or ``max_wait_ms`` and execute ONE
forward pass per group under ``torch.inference_mode()`` on this backend's single dedicated
thread (``ppu-torch-<name>``). The event loop never blocks on torch, and since all forward
passes and model loads share that one thread, a model is swapped only between batches.

Models come from a :class:`ModelSpec` per capability, one of:

- ``factory: "module:function"`` (+ ``kwargs``) returning an ``nn.Module``, and optionally
  ``weights``: a state_dict file, loaded with ``weights_only=True``;
- ``exported``: a ``torch.export`` archive (``.pt2``);
- ``torchscript``: a TorchScript file (deprecated by torch, still accepted);
- ``registry``: a model registry folder (see :mod:`ppu.digital.model_registry`); the backend
  serves the newest version of ``target`` and, before each batch (at most every
  ``reload_check_s``), picks up a newer one: the hot swap of a freshly trained surrogate.

The inputs become one feature row each through the capability's *encoder* and the model's
``(mean, std)`` become the outputs through its *decoder*: both are ``module:function`` names that
the capability declares (its pack brings them) and a lab file may override per model
(``encoder:``/``decoder:``). Warm-up runs the capability's example inputs through the encoder.
A model maps features ``x[B, F]`` to ``[B, 2]`` (mean, std), a ``(mean, std)`` pair, or ``[B]`` /
``[B, 1]`` (mean only; std reported as 0). An encoder with a ``version`` attribute refuses registry
models trained on another feature layout.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ppu import capabilities as caps
from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.digital.batcher import MicroBatcher
from ppu.digital.model_registry import ModelRegistry, file_sha256
from ppu.errors import BackendError, ConfigError, PPUError
from ppu.models import BackendKind, CapabilityOffer, Result, Strict
from ppu.packs import resolve

log = logging.getLogger(__name__)


def select_device(requested: str = "auto") -> torch.device:
    """``auto``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. An explicit request is checked."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but CUDA is not available", field="device",
                          hint="use device: auto (falls back to cpu) or cpu")
    return dev


class ModelSpec(Strict):
    """Where one capability's model comes from (exactly one source)."""

    factory: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$", description="'module:fn' -> nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="arguments for the factory")
    weights: str | None = Field(None, description="state_dict file for the factory's module")
    exported: str | None = Field(None, description="torch.export archive (.pt2)")
    torchscript: str | None = Field(None, description="TorchScript file")
    registry: str | None = Field(None, description="model registry root; serve the newest version of target")
    target: str | None = Field(None, description="registry target; default: capability less 'predict.'")
    name: str | None = Field(None, description="model name in provenance; default from the source")
    encoder: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$",
                                description="'module:function': inputs -> feature row; default: the capability's")
    decoder: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$",
                                description="'module:function': (mean, std, version) -> outputs; default: the "
                                "capability's, else {mean, std, model_version}")
    version: str | None = Field(None, description="model version in provenance; default from the source")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [k for k in ("factory", "exported", "torchscript", "registry") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of factory, exported, torchscript, registry "
                             f"(got {given or 'none'})")
        if self.weights and not self.factory:
            raise ValueError("weights go with a factory")
        return self


class TorchConfig(BackendConfig):
    models: dict[str, ModelSpec] = Field(min_length=1, description="capability -> model spec")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto: cuda if any")
    half: bool = Field(False, description="float16 weights and inputs; applied on cuda only")
    max_batch: int | None = Field(None, ge=1, le=1_000_000,
                                  description="most rows in one forward pass; default batch_size x slots")
    max_wait_ms: float = Field(5.0, ge=0, le=60_000, description="longest a row waits for its batch to fill")
    warmup: bool = Field(True, description="run one forward pass per model at start")
    reload_check_s: float = Field(0.0, ge=0, description="min s between registry checks; 0: every batch")
    fidelity: float = Field(0.5, ge=0, le=1)
    duration_s: float = Field(0.01, gt=0, description="expected lab seconds per batch")

    @field_validator("models")
    @classmethod
    def _encodable_capabilities(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name, spec in v.items():
            try:
                cap = caps.get(name)
            except PPUError as exc:
                raise ValueError(str(exc)) from None
            if not (spec.encoder or cap.encoder):
                raise ValueError(f"{name} declares no encoder: name one with models.{name}.encoder "
                                 "('module:function' turning the inputs into one row of features)")
        return v


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    version: str
    weights_sha256: str | None
    dtype: torch.dtype
    registry_number: int | None = None


@dataclass
class _Row:
    x: list[float]  # made into one tensor per batch, on the torch thread


@dataclass
class _Out:
    mean: float
    std: float
    model: LoadedModel
    batch: int


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {path}: {exc}", field="models.factory") from exc
    return obj


def _module_dtype(m: nn.Module) -> torch.dtype:
    for t in [*m.parameters(), *m.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _finish(module: nn.Module, device: torch.device, half: bool, name: str, version: str | None,
            sha: str | None, number: int | None = None) -> LoadedModel:
    module = module.to(device)
    try:
        module = module.eval()
    except NotImplementedError:  # a torch.export module is fixed in the mode it was exported in
        pass
    if half and device.type == "cuda" and getattr(module, "supports_half", True):
        module = module.half()
    return LoadedModel(module, name, version or (f"sha-{sha[:12]}" if sha else "unversioned"), sha,
                       _module_dtype(module), number)


def load_model(spec: ModelSpec, capability: str, device: torch.device,
               half: bool = False, features: str | None = None) -> LoadedModel | None:
    """Build the model a spec names, on ``device``. None when a registry has no version yet."""
    if spec.registry:
        target = spec.target or capability.removeprefix("predict.")
        ver = ModelRegistry(spec.registry).latest(target)
        return None if ver is None else load_registry_version(ver.path, device, half, spec.name, features)
    if spec.factory:
        module = _import(spec.factory)(**spec.kwargs)
        sha = None
        if spec.weights:
            sha = file_sha256(spec.weights)
            module.load_state_dict(torch.load(spec.weights, map_location="cpu", weights_only=True))
        return _finish(module, device, half, spec.name or spec.factory, spec.version, sha)
    path = spec.exported or spec.torchscript
    assert path is not None
    sha = file_sha256(path)
    if spec.exported:
        module = torch.export.load(path).module()
    else:
        with warnings.catch_warnings():
            # torch >= 2.10 deprecates TorchScript; files made with it still load. Muted only here.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                                    category=DeprecationWarning)
            module = torch.jit.load(path, map_location="cpu")
    return _finish(module, device, half, spec.name or Path(path).name, spec.version, sha)


def load_registry_version(path: Path, device: torch.device, half: bool = False,
                          name: str | None = None, features: str | None = None) -> LoadedModel:
    """``features``: the version of the encoder that will feed it; a model trained on another is refused."""
    from ppu.digital.model_registry import ModelVersion

    ver = ModelVersion(path.parent.name, int(path.name[1:]), path)
    meta = ver.meta()
    if features is not None and meta.get("featurizer") != features:
        raise ConfigError(f"{path} was trained on features {meta.get('featurizer')!r}, its encoder makes "
                          f"{features!r}", field="models.registry", hint="retrain the surrogate")
    sha = file_sha256(ver.weights_path)
    if sha != meta.get("weights_sha256"):
        raise ConfigError(f"{ver.weights_path} does not match the sha256 in its meta.json",
                          field="models.registry", hint="the file was changed after publishing: retrain")
    module = _import(meta["factory"])(**meta["kwargs"])
    module.load_state_dict(torch.load(ver.weights_path, map_location="cpu", weights_only=True))
    return _finish(module, device, half, name or meta.get("name", ver.target), ver.version, sha, ver.number)


def _split_output(out: Any, n: int) -> tuple[list[float], list[float]]:
    if isinstance(out, tuple | list):
        mean, std = out[0], out[1]
    elif out.dim() == 2 and out.shape[-1] == 2:
        mean, std = out[:, 0], out[:, 1]
    else:
        mean, std = out.reshape(n), torch.zeros(n)
    return mean.reshape(n).float().cpu().tolist(), std.reshape(n).float().cpu().tolist()


def _mean_std(mean: float, std: float, version: str | None) -> dict[str, Any]:
    return {"mean": mean, "std": std, "model_version": version}


class _Served:
    """One capability: its spec, the model it serves now, and the batcher in front of it."""

    def __init__(self, capability: str, spec: ModelSpec):
        self.capability = capability
        self.spec = spec
        self.model: LoadedModel | None = None
        self.last_check = -math.inf
        self.broken: int | None = None  # a registry version that failed to load: not retried
        self.batcher: MicroBatcher[_Row, _Out]
        cap = caps.get(capability)
        self.example = cap.example
        self.encode: Callable[[dict[str, Any]], list[float]] = resolve(spec.encoder or cap.encoder or "", "encoder")
        self.features: str | None = getattr(self.encode, "version", None)
        dec = spec.decoder or cap.decoder
        self.decode: Callable[[float, float, str | None], dict[str, Any]] = (
            resolve(dec, "decoder") if dec else _mean_std)


class TorchBackend(Backend):
    kind = BackendKind.digital
    Config: ClassVar[type[BackendConfig]] = TorchConfig

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        assert isinstance(config, TorchConfig)
        self.cfg = config
        self.device = select_device(config.device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ppu-torch-{config.name}")
        max_batch = config.max_batch or config.batch_size * config.slots
        self.served: dict[str, _Served] = {}
        for cap, spec in config.models.items():
            s = _Served(cap, spec)
            s.batcher = MicroBatcher(functools.partial(self._forward, s), max_batch=max_batch,
                                     max_wait_s=config.max_wait_ms / 1000, executor=self._executor)
            self.served[cap] = s
        self._started = False
        self._start_lock = asyncio.Lock()

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name=c, fidelity=self.cfg.fidelity, duration_s=self.cfg.duration_s, cost=0.0)
                for c in self.cfg.models]

    # ---- on the torch thread ----------------------------------------------------------------

    def _load_initial(self) -> None:
        for s in self.served.values():
            s.model = load_model(s.spec, s.capability, self.device, self.cfg.half, s.features)
            s.last_check = time.monotonic()
            if s.model is None:
                log.info("%s: no trained version of %s yet in %s", self.name, s.capability, s.spec.registry)
            elif self.cfg.warmup and s.example is not None:  # warm-up on the capability's example
                x = torch.tensor([s.encode(s.example)] * 2)
                self._forward_model(s.model, x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _maybe_swap(self, s: _Served) -> None:
        """Between batches only: this runs on the torch thread before a forward pass, never during one."""
        if not s.spec.registry or time.monotonic() - s.last_check < self.cfg.reload_check_s:
            return
        s.last_check = time.monotonic()
        latest = ModelRegistry(s.spec.registry).latest(s.spec.target or s.capability.removeprefix("predict."))
        if latest is None or latest.number == s.broken or (
                s.model is not None and s.model.registry_number == latest.number):
            return
        try:
            s.model = load_registry_version(latest.path, self.device, self.cfg.half, s.spec.name, s.features)
            log.info("%s: %s now serves %s", self.name, s.capability, s.model.version)
        except Exception:  # a broken new version must not take down the one being served
            s.broken = latest.number
            log.exception("%s: cannot load %s; still serving %s", self.name, latest.path,
                          s.model.version if s.model else "nothing")

    def _forward_model(self, m: LoadedModel, x: torch.Tensor) -> tuple[list[float], list[float]]:
        with torch.inference_mode():
            out = m.module(x.to(self.device, m.dtype))
        return _split_output(out, x.shape[0])

    def _forward(self, s: _Served, rows: list[_Row]) -> list[_Out]:
        self._maybe_swap(s)
        m = s.model
        if m is None:
            raise BackendError(f"no trained model for {s.capability} yet in {s.spec.registry}",
                               hint="run train.surrogate first")
        means, stds = self._forward_model(m, torch.tensor([r.x for r in rows], dtype=torch.float64))
        return [_Out(mu, sd, m, len(rows)) for mu, sd in zip(means, stds, strict=True)]

    # ---- on the event loop ------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if not self._started:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._load_initial)
                self._started = True

    async def close(self) -> None:
        for s in self.served.values():
            await s.batcher.close()
        self._executor.shutdown(wait=True)

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        if not self._started:
            await self.start()
        started = time.time()
        results: list[Result | None] = [None] * len(batch)
        waits = []
        for i, run in enumerate(batch):
            s = self.served.get(run.capability)
            if s is None:
                results[i] = self.fail(run, f"{self.name} does not serve {run.capability}", started,
                                       retryable=False)
                continue
            try:
                row = _Row(s.encode(run.inputs))
            except Exception as exc:  # one bad payload fails only its own task
                results[i] = self.fail(run, f"cannot encode the inputs: {exc}", started,
                                       retryable=False)
                continue
            waits.append((i, s.batcher.put(row)))
        outs: list[_Out | BaseException] = []
        if len(waits) == 1:  # the common case at high rates: one task per run call, no gather needed
            try:
                outs = [await waits[0][1]]
            except Exception as exc:
                outs = [exc]
        elif waits:
            outs = await asyncio.gather(*(w for _, w in waits), return_exceptions=True)
        dev = str(self.device)
        for (i, _), out in zip(waits, outs, strict=True):
            run = batch[i]
            if isinstance(out, BaseException):
                if isinstance(out, asyncio.CancelledError):
                    raise out
                results[i] = self.fail(run, f"forward pass failed: {out}", started, device=dev)
            elif not (math.isfinite(out.mean) and math.isfinite(out.std) and out.std >= 0):
                results[i] = self.fail(run, f"model returned mean={out.mean}, std={out.std}", started,
                                       retryable=False, model_name=out.model.name,
                                       model_version=out.model.version, device=dev)
            else:
                m = out.model
                extra = {"forward_batch": out.batch, "dtype": str(m.dtype).removeprefix("torch.")}
                results[i] = self.ok(run, self.served[run.capability].decode(out.mean, out.std, m.version), started,
                                     model_name=m.name,
                                     model_version=m.version, weights_sha256=m.weights_sha256, device=dev,
                                     extra=extra)
        return [r for r in results if r is not None]
