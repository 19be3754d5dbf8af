"""``torch``: serve any torch model behind any capability, with dynamic batching.

Where things run: ``run`` is a coroutine on the worker's event loop. It hands each single-row
task, as it came, to one :class:`~ppu.digital.batcher.MicroBatcher` per capability. The batchers
group rows from every concurrent ``run`` call up to ``max_batch`` rows or ``max_wait_ms`` and
handle each group on one of this backend's dedicated threads (``ppu-torch-<name>``): encoded at
once, ONE forward pass under ``torch.inference_mode()``, one Result per task (a bad row fails
only its own task). The event loop never blocks on torch. A model is swapped only between batches:
a batch (or a columnar task) takes the model once and keeps it to its end. Once the models are
loaded the backend freezes the heap for the garbage collector (``gc.freeze``): torch and the
models live as long as the worker, and full collections no longer walk them.

``instances`` model instances serve side by side, one thread each, sharing the weights. On a CPU
each thread gets its share of torch's threads (per thread under OpenMP, as torch's x86 builds
use), so two batches compute at once instead of one split over every core, which waits at each
layer for whichever thread the event loop's Python preempted (README: 2 cores, batching). Default
``2`` on a CPU with >= 2 threads; ``1`` on a GPU (the next batch is queued while one computes).
A columnar task's passes spread over the instances too. A model whose forward pass keeps state of
its own in Python is not safe on two threads at once: serve it with ``instances: 1``.

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
(``encoder:``/``decoder:``). A model maps features ``x[B, F]`` to ``[B, 2]`` (mean, std), a
``(mean, std)`` pair, or ``[B]`` / ``[B, 1]`` (mean only; std reported as 0). An encoder with a
``version`` attribute refuses registry models trained on another feature layout.

Warm-up (``warmup: true``, the default) runs the capability's example through the encoder and
each model at start (:func:`~ppu.digital.loading.warm_up`), and a newly published registry version
before it is swapped in: a model that does not fit (rows of another width, a batch size fixed when
it was exported, outputs of another shape) or that raises fails the start with a ConfigError naming
``models.<capability>.<source>``, the words saying what was expected and what came. Without
warm-up the same misfit found by a forward pass fails its tasks in the same words, not retryable.

The serving path has no per-row Python beyond the task itself: a :class:`~ppu.digital.coding.Coding`
bundles the encoder's vectorised forms. A single-row task is queued as it came (the run and its
start time, with one future to await; no model or asyncio task of its own) and a torch thread
handles a whole forward batch at once: one encoder call for the batch (a batch that fails to
encode is halved until the bad rows are found, so only a bad row fails, with an error naming the
field), one forward pass, one finiteness check over the outputs, one Provenance shared by the
batch's Results, which are built there too. The event loop only wakes each waiting ``run`` with
its finished Result. A *columnar* task (``TaskRun.block``) is cut into parts, each encoded as
one matrix on the instance that runs its forward passes of ``block_batch`` rows (its first pass
need not wait for the whole block's encoding), reported as progress, and answered with output
columns (``mean``, ``std``, or the decoder's ``.block`` form) that the worker ships to the
artifact store: one Result per block, not per row.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator

from ppu.artifacts import check_columns
from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.digital.batcher import MicroBatcher
from ppu.digital.coding import Coding, block_error, block_outcome
from ppu.digital.loading import (
    LoadedModel,
    ModelSpec,
    check_encoders,
    load_model,
    load_registry_version,
    run_model,
    select_device,
    split_arrays,
    warm_up,
)
from ppu.digital.model_registry import ModelRegistry
from ppu.errors import BackendError, ConfigError, PPUError
from ppu.models import BackendKind, CapabilityOffer, Provenance, Result

__all__ = ["Coding", "LoadedModel", "ModelSpec", "TorchBackend", "TorchConfig", "block_outcome", "load_model",
           "select_device", "split_arrays"]

log = logging.getLogger(__name__)


class TorchConfig(BackendConfig):
    models: dict[str, ModelSpec] = Field(min_length=1, description="capability -> model spec")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto: cuda if any")
    half: bool = Field(False, description="float16 weights and inputs; applied on cuda only")
    instances: int | None = Field(None, ge=1, le=64,
                                  description="model instances computing side by side, one thread each (CPU: "
                                  "each with its share of torch's threads; they share the weights); default 2 "
                                  "on a CPU with >= 2 threads, else 1; 1 for a model whose forward pass is not "
                                  "thread-safe")
    max_batch: int | None = Field(None, ge=1, le=1_000_000,
                                  description="most rows in one forward pass; default batch_size x slots")
    max_wait_ms: float = Field(5.0, ge=0, le=60_000, description="longest a row waits for its batch to fill")
    warmup: bool = Field(True, description="run one forward pass per model at start")
    reload_check_s: float = Field(0.0, ge=0, description="min s between registry checks; 0: every batch")
    block_batch: int | None = Field(None, ge=1, le=1_000_000,
                                    description="rows per forward pass of a columnar task; default max_batch")
    fidelity: float = Field(0.5, ge=0, le=1)
    duration_s: float = Field(0.01, gt=0, description="expected lab seconds per batch")

    @field_validator("models")
    @classmethod
    def _encodable_capabilities(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        check_encoders(v)
        return v


_Item = tuple[TaskRun, float]  # a single-row task and when its run() call began


def default_instances(device: torch.device) -> int:
    return 2 if device.type == "cpu" and torch.get_num_threads() >= 2 else 1


def _torch_threads(n: int | None) -> None:
    """Initialiser of an instance thread: its share of torch's CPU threads (None: torch's default)."""
    if n is not None:
        torch.set_num_threads(n)


class _Served:
    """One capability: its spec, the model it serves now, and the batcher in front of it."""

    def __init__(self, capability: str, spec: ModelSpec):
        self.capability = capability
        self.spec = spec
        self.model: LoadedModel | None = None
        self.last_check = -math.inf
        self.broken: int | None = None  # a registry version that failed to load: not retried
        self.batcher: MicroBatcher[_Item, Result]
        self.coding = Coding.of(capability, spec.encoder, spec.decoder)
        self.example = self.coding.example
        self.features = self.coding.features


class TorchBackend(Backend):
    kind = BackendKind.digital
    columnar = True
    Config: ClassVar[type[BackendConfig]] = TorchConfig

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        assert isinstance(config, TorchConfig)
        self.cfg = config
        self.device = select_device(config.device)
        self.instances = config.instances or default_instances(self.device)
        share = max(1, torch.get_num_threads() // self.instances) \
            if self.device.type == "cpu" and self.instances > 1 else None
        self._executor = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix=f"ppu-torch-{config.name}",
                                            initializer=_torch_threads, initargs=(share,))
        self._swap_lock = threading.Lock()  # instance threads check the registry one at a time
        max_batch = config.max_batch or config.batch_size * config.slots
        self.block_batch = config.block_batch or max(max_batch, 256)  # the model's best batch, for blocks
        self.served: dict[str, _Served] = {}
        for cap, spec in config.models.items():
            s = _Served(cap, spec)
            # side by side with several instances; with one on a GPU the next batch is collected and
            # queued while one computes (the CPU is free then)
            s.batcher = MicroBatcher(functools.partial(self._forward, s), max_batch=max_batch,
                                     max_wait_s=config.max_wait_ms / 1000, executor=self._executor,
                                     depth=max(self.instances, 2 if self.device.type == "cuda" else 1),
                                     parallel=self.instances > 1)
            self.served[cap] = s
        self._started = False
        self._start_lock = asyncio.Lock()

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name=c, fidelity=self.cfg.fidelity, duration_s=self.cfg.duration_s, cost=0.0)
                for c in self.cfg.models]

    # ---- on the torch threads ---------------------------------------------------------------

    def _load_initial(self) -> None:
        for s in self.served.values():
            s.model = load_model(s.spec, s.capability, self.device, self.cfg.half, s.features)
            s.last_check = time.monotonic()
            if s.model is None:
                log.info("%s: no trained version of %s yet in %s", self.name, s.capability, s.spec.registry)
            elif self.cfg.warmup:  # the capability's example: a model that does not fit it fails the start
                warm_up(s.model, s.coding, self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _maybe_swap(self, s: _Served) -> None:
        """Between batches only: on a torch thread, under the swap lock, before a forward pass, never
        during one (a batch already running keeps the model it took)."""
        if not s.spec.registry or time.monotonic() - s.last_check < self.cfg.reload_check_s:
            return
        s.last_check = time.monotonic()
        latest = ModelRegistry(s.spec.registry).latest(s.spec.target or s.capability.removeprefix("predict."))
        if latest is None or latest.number == s.broken or (
                s.model is not None and s.model.registry_number == latest.number):
            return
        try:
            fresh = load_registry_version(latest.path, self.device, self.cfg.half, s.spec.name, s.features,
                                          s.capability)
            if self.cfg.warmup:
                warm_up(fresh, s.coding, self.device)
            s.model = fresh
            log.info("%s: %s now serves %s", self.name, s.capability, s.model.version)
        except Exception:  # a broken new version must not take down the one being served
            s.broken = latest.number
            log.exception("%s: cannot load %s; still serving %s", self.name, latest.path,
                          s.model.version if s.model else "nothing")

    def _forward_model(self, m: LoadedModel, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return run_model(m, x, self.device)

    def _current(self, s: _Served) -> LoadedModel:
        with self._swap_lock:
            self._maybe_swap(s)
        if s.model is None:
            raise BackendError(f"no trained model for {s.capability} yet in {s.spec.registry}",
                               hint="run train.surrogate first")
        return s.model

    def _forward(self, s: _Served, items: list[_Item]) -> list[Result]:
        """A forward batch of single-row tasks: encoded as one matrix, one pass, one Result per task."""
        m = self._current(s)
        x, good, errors = s.coding.encode_rows([run.inputs for run, _ in items])
        out: list[Result | None] = [None] * len(items)
        for i, exc in errors.items():
            run, started = items[i]
            out[i] = self.fail(run, f"cannot encode the inputs: {exc}", started, retryable=False)
        if good:
            means, stds = self._forward_model(m, torch.from_numpy(x))
            fine = (np.isfinite(means) & np.isfinite(stds) & (stds >= 0)).tolist()
            prov = self._provenance(m, len(good))  # one for the batch, shared by its Results
            done = time.time()
            decode, version, make = s.coding.decode, m.version, Result.succeeded_unchecked
            for i, mean, std, ok in zip(good, means.tolist(), stds.tolist(), fine, strict=True):
                run, started = items[i]
                # outputs come from the decoder of a loaded model, checked finite here: no re-validation per row
                out[i] = make(run.task_id, run.attempt, decode(mean, std, version), started, done, prov) if ok else \
                    self.fail(run, f"model returned mean={mean}, std={std}", started, retryable=False,
                              model_name=m.name, model_version=version, device=str(self.device))
        return out  # type: ignore[return-value]  # every row is answered above

    def _forward_block(self, m: LoadedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward passes of ``block_batch`` rows over part of a columnar task."""
        step = self.block_batch
        if self.device.type == "cuda":  # one pinned copy, then non-blocking transfers per pass
            xt = torch.from_numpy(x).to(m.dtype).pin_memory()
        else:
            xt = torch.from_numpy(x)
        means, stds = [], []
        for lo in range(0, len(x), step):
            mu, sd = self._forward_model(m, xt[lo:lo + step])
            means.append(mu)
            stds.append(sd)
        return np.concatenate(means), np.concatenate(stds)

    # ---- on the event loop ------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if not self._started:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._load_initial)
                # Everything alive now (torch, the models, the imports) lives as long as the worker: out
                # of the collector's sight, a full collection no longer walks it (~0.5 s each on 2 cores,
                # and serving's short-lived objects trigger one every few thousand rows).
                gc.freeze()
                self._started = True

    async def close(self) -> None:
        for s in self.served.values():
            await s.batcher.close()
        self._executor.shutdown(wait=True)

    def _provenance(self, m: LoadedModel, batch: int) -> Provenance:
        return Provenance.model_construct(
            backend=self.name, kind=self.kind, model_name=m.name, model_version=m.version,
            weights_sha256=m.weights_sha256, device=str(self.device), run_uids=[], documents=None, entered_by=None,
            extra={"forward_batch": batch, "dtype": str(m.dtype).removeprefix("torch.")})

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        if not self._started:
            await self.start()
        started = time.time()
        if len(batch) == 1:  # the common case at high rates: one task per run call
            run = batch[0]
            s = self.served.get(run.capability)
            if s is not None and run.block is None:
                try:
                    return [await s.batcher.put((run, started))]
                except Exception as exc:  # the whole forward batch failed (see _row)
                    return [self._batch_failed(run, exc, started)]
        results: list[Result | None] = [None] * len(batch)
        waits: list[tuple[int, asyncio.Future[Result]]] = []
        for i, run in enumerate(batch):
            s = self.served.get(run.capability)
            if s is None:
                results[i] = self.fail(run, f"{self.name} does not serve {run.capability}", started,
                                       retryable=False)
            elif run.block is not None:
                results[i] = await self._run_block(s, run, progress, started)
            else:
                waits.append((i, s.batcher.put((run, started))))
        try:
            for i, fut in waits:  # all queued before the first await: they may share a forward pass
                results[i] = await self._row(batch[i], fut, started)
        except asyncio.CancelledError:
            for _, fut in waits:  # the rows not yet handed to the model are dropped from their batch
                fut.cancel()
            raise
        return [r for r in results if r is not None]

    async def _row(self, run: TaskRun, fut: asyncio.Future[Result], started: float) -> Result:
        try:
            return await fut
        except Exception as exc:  # the whole forward batch failed (out of memory, no model yet...)
            return self._batch_failed(run, exc, started)

    def _batch_failed(self, run: TaskRun, exc: Exception, started: float) -> Result:
        """A forward pass that failed whole. A model that does not fit its capability (a ModelMisfit, in the
        words the start would have used) fails every attempt alike: not retryable; anything else (out of
        memory, no trained model yet) may pass on another attempt."""
        return self.fail(run, f"forward pass failed: {exc}", started, retryable=not isinstance(exc, ConfigError),
                         device=str(self.device))

    async def _run_block(self, s: _Served, run: TaskRun, progress: ProgressFn, started: float) -> Result:
        """A columnar task: its parts encoded and forwarded on every instance (progress as each part
        ends, in order), answered with columns. One model serves the whole block.

        Each part is encoded on the instance that forwards it: the first pass starts after one part's
        encoding, not the whole block's, and no third thread competes with the instances for the cores."""
        loop = asyncio.get_running_loop()
        columns = run.columns()
        try:
            n = check_columns(columns)
        except PPUError as exc:
            return self.fail(run, f"cannot encode the block: {exc}", started, retryable=False)
        part = max(self.block_batch, min(65_536, n // 8 or 1))  # a handful of progress reports per block
        means, stds = [], []
        out: deque[tuple[int, asyncio.Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        try:
            m = await loop.run_in_executor(self._executor, self._current, s)
            for lo in range(0, n, part):
                piece = {name: col[lo:lo + part] for name, col in columns.items()}
                out.append((min(n, lo + part), loop.run_in_executor(self._executor, self._encode_forward, s, m,
                                                                    piece)))
                while out and (len(out) >= self.instances or lo + part >= n):
                    done, fut = out.popleft()
                    mu, sd = await fut
                    means.append(mu)
                    stds.append(sd)
                    r = progress(run.task_id, done / n, f"{done}/{n} rows")
                    if asyncio.iscoroutine(r):
                        await r
        except Exception as exc:
            for _, fut in out:  # parts still computing end on their own; their outcome is not wanted
                fut.add_done_callback(_forget)
            if isinstance(exc, _Unencodable):
                return self.fail(run, f"cannot encode the block: {await block_error(s.coding, columns, exc.error)}",
                                 started, retryable=False)
            return self._batch_failed(run, exc, started)
        cols, summary = block_outcome(s.coding, np.concatenate(means), np.concatenate(stds), m.version)
        prov = self._provenance(m, min(self.block_batch, n))
        return self.ok(run, summary, started, **prov.model_dump(exclude={"backend", "kind"})).with_columns(cols)

    def _encode_forward(self, s: _Served, m: LoadedModel,
                        columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """On an instance thread: one part of a block, encoded, then its forward passes."""
        try:
            x = s.coding.encode_block(columns)
        except Exception as exc:
            raise _Unencodable(exc) from exc
        return self._forward_block(m, x)


class _Unencodable(Exception):
    """A part of a block that its encoder refused (``error``)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _forget(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # read, so that a failed part is not reported as never retrieved
