"""``ray``: served models on Ray actors, for digital work that outgrows one node.

PPU stays the one scheduler and journal (DESIGN.md "Scale"): this backend is one entry in the
lab file, its ``slots`` are its capacity, and the scheduler assigns it tasks like any other
backend. Behind it, ``actors`` Ray actors each hold the models (on their own GPU when
``gpus_per_actor`` > 0 and the cluster has one, else on CPU) and run forward passes::

    backends:
      - type: ray
        name: screening-cluster
        address: auto                    # or head:6379, or ray://head:10001 (pip install 'ray[client]');
                                         # omitted: a local Ray of its own, shut down with the backend
        actors: 8
        gpus_per_actor: 1
        models:
          predict.co2_uptake: {registry: /shared/runs/models}

Rows are encoded on the actors with the capability's :class:`~ppu.digital.coding.Coding`
(the same encoders and decoders as ``torch``). A batch of single-row tasks goes to one actor as
one list; a columnar task (block) is cut into parts of ``part_rows`` rows spread over the
actors, progress reported as parts finish, and answered with output columns like ``torch``.

Failure is a failed attempt, never a lost task: an actor that dies mid-batch (or a Ray cluster
that goes away) fails the runs it held as *retryable*, so the scheduler re-queues them (digital
work is repeatable), and the actor is replaced before its next use. A mistake in the lab file (an
address where no head answers within ``CONNECT_TIMEOUT_S`` or where something else listens, weights
that do not fit) fails the start with a :class:`~ppu.errors.ConfigError` naming the field; a block
its encoder refuses fails, not retryable, with the encoder's error for the whole block, as on
``torch``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import os
import re
import time
from collections.abc import Awaitable
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from ppu.artifacts import check_columns
from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.digital.coding import Coding, block_error, block_outcome
from ppu.digital.loading import ModelSpec, check_encoders
from ppu.errors import ConfigError, PPUError
from ppu.models import BackendKind, CapabilityOffer, Result

log = logging.getLogger(__name__)

# host:port, or ray://host:port (Ray Client); a host is a name, an IPv4 address or a bracketed IPv6 one
_ADDRESS = re.compile(r"^(?P<client>ray://)?(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                      r":(?P<port>\d{1,5})$")
CONNECT_TIMEOUT_S = 5.0  # a head that does not accept a TCP connection by then is not there
_ADDRESS_HINT = ("use 'auto' (a Ray started with `ray start` on this machine), 'host:port' (the head's GCS, "
                 "port 6379 by default), 'ray://host:port' (Ray Client, port 10001 by default), or omit it to "
                 "start a local Ray")


class RayConfig(BackendConfig):
    models: dict[str, ModelSpec] = Field(min_length=1, description="capability -> model spec (as for torch)")
    address: str | None = Field(None, description="'auto', 'ray://host:port', or omitted: start a local Ray")
    local_cpus: int | None = Field(None, ge=1, le=4096, description="CPUs of a local Ray started for you")
    actors: int = Field(1, ge=1, le=10_000, description="Ray actors, each holding every model")
    cpus_per_actor: float = Field(1.0, gt=0, le=1024)
    gpus_per_actor: float = Field(0.0, ge=0, le=64, description="> 0: each actor on its GPU (cuda)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="inside an actor; auto: cuda if any")
    half: bool = Field(False, description="float16 weights and inputs on cuda")
    max_batch: int = Field(512, ge=1, le=1_000_000, description="rows per forward pass on an actor")
    part_rows: int = Field(65_536, ge=1, le=10_000_000, description="rows of a block sent to one actor at a time")
    reload_check_s: float = Field(0.0, ge=0, description="min s between registry checks on an actor")
    fidelity: float = Field(0.5, ge=0, le=1)
    duration_s: float = Field(0.01, gt=0, description="expected lab seconds per batch")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or v == "auto":
            return v
        m = _ADDRESS.match(v)
        if m is None or not 0 < int(m["port"]) < 65536:
            raise ValueError(f"{v!r} is not a Ray address: {_ADDRESS_HINT}")
        return v

    @field_validator("models")
    @classmethod
    def _encodable_capabilities(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        check_encoders(v)
        return v

    @model_validator(mode="after")
    def _capacity(self) -> RayConfig:
        if "slots" not in self.model_fields_set:  # two runs in flight per actor keep every actor fed
            self.slots = 2 * self.actors
        return self


class ModelActor:
    """What one Ray actor holds: the models and their codings. Runs in the actor's process."""

    def __init__(self, models: dict[str, dict[str, Any]], device: str, half: bool, max_batch: int,
                 reload_check_s: float):
        import torch

        from ppu.digital.loading import select_device

        torch.set_grad_enabled(False)
        self.device = select_device(device)
        self.half = half
        self.max_batch = max_batch
        self.reload_check_s = reload_check_s
        self.specs = {cap: ModelSpec.model_validate(spec) for cap, spec in models.items()}
        self.codings = {cap: Coding.of(cap, spec.encoder, spec.decoder) for cap, spec in self.specs.items()}
        self.models: dict[str, Any] = {}
        self.checked: dict[str, float] = {}
        # A model that cannot load (a missing or unfitting weights file) is reported by ping() as data:
        # raised here it would reach the lab as Ray's traceback of the actor's death, without the field.
        self.refused: dict[str, str | None] | None = None
        try:
            for cap in self.specs:
                self._load(cap)
        except PPUError as exc:
            self.refused = {"message": exc.message, "field": exc.field, "hint": exc.hint}

    def _load(self, cap: str) -> Any:
        from ppu.digital.loading import load_model

        spec = self.specs[cap]
        now = time.monotonic()
        if cap not in self.models or (spec.registry and now - self.checked.get(cap, -math.inf) >= self.reload_check_s):
            self.checked[cap] = now
            m = load_model(spec, cap, self.device, self.half, self.codings[cap].features)
            if m is not None:
                self.models[cap] = m
        m = self.models.get(cap)
        if m is None:
            raise RuntimeError(f"no trained model for {cap} yet in {spec.registry}")
        return m

    def _forward(self, m: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from ppu.digital.loading import split_arrays

        xt = torch.from_numpy(x)
        means, stds = [], []
        with torch.inference_mode():
            for lo in range(0, len(x), self.max_batch):
                part = xt[lo:lo + self.max_batch]
                mu, sd = split_arrays(m.module(part.to(self.device, m.dtype)), part.shape[0])
                means.append(mu)
                stds.append(sd)
        return np.concatenate(means), np.concatenate(stds)

    def _about(self, m: Any) -> dict[str, Any]:
        return {"model_name": m.name, "model_version": m.version, "weights_sha256": m.weights_sha256,
                "device": str(self.device), "dtype": str(m.dtype).removeprefix("torch.")}

    def rows(self, cap: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Single-row tasks: one feature matrix, one forward pass; bad rows come back as errors."""
        m = self._load(cap)
        x, good, bad = self.codings[cap].encode_rows(inputs)
        mean = np.full(len(inputs), np.nan)
        std = np.full(len(inputs), np.nan)
        if good:
            mean[good], std[good] = self._forward(m, x)
        errors = {i: str(exc) for i, exc in bad.items()}
        return {"mean": mean, "std": std, "errors": errors, "batch": len(good), **self._about(m)}

    def block(self, cap: str, columns: dict[str, np.ndarray]) -> dict[str, Any]:
        """Part of a columnar task: encoded as one matrix, forward passes of ``max_batch`` rows. A part
        its encoder refuses comes back as ``unencodable`` (data, not a raised error: the caller names
        the rows from the whole block's first row)."""
        m = self._load(cap)
        try:
            x = self.codings[cap].encode_block(columns)
        except Exception as exc:
            return {"unencodable": str(exc)}
        mean, std = self._forward(m, x)
        return {"mean": mean, "std": std, **self._about(m)}

    def ping(self) -> dict[str, Any]:
        """The device, and what refused to load (None: every model is served)."""
        return {"device": str(self.device), "refused": self.refused}


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray", field="type",
                          hint="pip install 'ppu[ray]' (or choose type: torch)") from None
    return ray


def _check_address(address: str | None) -> tuple[str, int] | None:
    """(host, port) to try before ray.init; None for a local Ray or ``auto``. A Ray Client address needs
    ``ray[client]``."""
    m = _ADDRESS.match(address or "")
    if m is None:
        return None
    if m["client"] and importlib.util.find_spec("grpc") is None:
        raise ConfigError(f"{address} is a Ray Client address, and Ray Client needs the pip package ray[client]",
                          field="address", hint="pip install 'ray[client]' on this worker, or give the head's "
                          "GCS address host:6379 instead")
    return m["host"].strip("[]"), int(m["port"])


# The HTTP/2 client preface and an empty SETTINGS frame: any gRPC server (a Ray head's GCS, a Ray Client
# server) answers with a SETTINGS frame of its own; a web page, a database or a silent port does not.
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x4  # frame type, the 4th byte of a frame's 9-byte header


async def _reachable(host: str, port: int, address: str) -> None:
    """A head that does not accept a TCP connection within CONNECT_TIMEOUT_S, or whose port does not speak
    gRPC (a dashboard, another service), fails the start now: ray.init would wait minutes for it. With
    RAY_USE_TLS the handshake is TLS's, so only the connection is tried."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(f"no Ray head answers at {address} ({why} within {CONNECT_TIMEOUT_S:g} s)",
                          field="address", hint="start the head there (ray start --head) or correct the "
                          "address; " + _ADDRESS_HINT) from None
    try:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "", "false"):
            try:
                writer.write(_H2_HELLO)
                await writer.drain()
                head = await asyncio.wait_for(reader.readexactly(9), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                head = b""
                why = (f"no answer within {CONNECT_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError)
                       else "it closed the connection")
            else:
                why = f"it answered {head[:9]!r}, not gRPC"
            if len(head) < 9 or head[3] != _H2_SETTINGS:
                raise ConfigError(f"{address} accepts connections but is not a Ray head: {why}", field="address",
                                  hint="give the head's GCS port (6379 by default; not the dashboard's 8265) or "
                                  "its Ray Client port (ray://host:10001); " + _ADDRESS_HINT)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def _auto_address() -> str | None:
    """The address ``auto`` leads ray.init to, found as it finds it: RAY_ADDRESS, else a head running on this
    machine, else the file the last ``ray start`` left in Ray's temp folder (stale once that head is gone,
    and then ray.init would wait minutes). None where none is found (ray.init says so)."""
    try:
        from ray._private.services import get_ray_address_from_environment
    except ImportError:  # another Ray layout: RAY_ADDRESS at least
        return os.environ.get("RAY_ADDRESS") or None
    try:
        found = get_ray_address_from_environment("auto", None)
    except ConnectionError:
        return None
    return found if isinstance(found, str) else None


def _lost(exc: BaseException) -> bool:
    """An actor or the cluster went away (retry elsewhere), as opposed to a bug in the model or inputs."""
    ray = _ray()
    lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
            ray.exceptions.RaySystemError, ray.exceptions.ObjectLostError, ConnectionError)
    return isinstance(exc, lost)


def _absolute(spec: dict[str, Any]) -> dict[str, Any]:
    """Paths as the lab file meant them (relative to this process), whatever an actor's working folder is."""
    from pathlib import Path

    for key in ("weights", "exported", "torchscript", "registry"):
        if spec.get(key):
            spec[key] = str(Path(spec[key]).resolve())
    return spec


class RayBackend(Backend):
    kind = BackendKind.digital
    columnar = True
    Config: ClassVar[type[BackendConfig]] = RayConfig

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        assert isinstance(config, RayConfig)
        self.cfg = config
        self.codings = {cap: Coding.of(cap, spec.encoder, spec.decoder) for cap, spec in config.models.items()}
        self.actors: list[Any] = []
        self.load: list[int] = []  # calls in flight per actor
        self._started_ray = False
        self._start_lock = asyncio.Lock()
        self._ready = False

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name=c, fidelity=self.cfg.fidelity, duration_s=self.cfg.duration_s, cost=0.0)
                for c in self.cfg.models]

    # ---- actors ------------------------------------------------------------------------------

    def _new_actor(self) -> Any:
        ray = _ray()
        cls = ray.remote(num_cpus=self.cfg.cpus_per_actor, num_gpus=self.cfg.gpus_per_actor)(ModelActor)
        models = {cap: _absolute(spec.model_dump(exclude_none=True)) for cap, spec in self.cfg.models.items()}
        device = "cuda" if self.cfg.gpus_per_actor > 0 and self.cfg.device == "auto" else self.cfg.device
        return cls.remote(models, device, self.cfg.half, self.cfg.max_batch, self.cfg.reload_check_s)

    async def start(self) -> None:
        async with self._start_lock:
            if self._ready:
                return
            ray = _ray()
            if not ray.is_initialized():
                await self._init_ray(ray)
            self.actors = [self._new_actor() for _ in range(self.cfg.actors)]
            self.load = [0] * len(self.actors)
            pings = await asyncio.gather(*(a.ping.remote() for a in self.actors))  # models loaded, or why not
            refused = next((p["refused"] for p in pings if p["refused"]), None)
            if refused is not None:
                await self.close()
                raise ConfigError(str(refused["message"]), field=refused["field"], hint=refused["hint"])
            self._ready = True

    async def _init_ray(self, ray: Any) -> None:
        address = self.cfg.address
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            # "local": a Ray of its own, even where one runs already (`ray start`), whose num_cpus it may
            # set; plain None would join that one and refuse num_cpus.
            address, kw["num_cpus"] = "local", self.cfg.local_cpus
        else:
            target, where = (_auto_address(), "auto found it") if address == "auto" else (address, "")
            head = _check_address(target)
            if head is not None:
                await _reachable(*head, f"{target} ({where})" if where else str(target))
        try:
            # On this thread, not a helper one: a local Ray's processes die with the thread that
            # started them (PR_SET_PDEATHSIG), and start() runs once, before the first task.
            ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            hint = ("start one (ray start --head) or omit address for a local Ray" if address == "auto"
                    else _ADDRESS_HINT)
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot start or join Ray at {address}: {why}", field="address", hint=hint) from None
        self._started_ray = self.cfg.address is None

    async def close(self) -> None:
        if self.actors:
            ray = _ray()
            for a in self.actors:
                try:
                    ray.kill(a)
                except Exception:  # already gone with its cluster
                    pass
            self.actors = []
        self._ready = False
        if self._started_ray:  # a Ray started for this backend ends with it; one it joined lives on
            self._started_ray = False
            _ray().shutdown()

    def _pick(self) -> int:
        return min(range(len(self.actors)), key=lambda i: self.load[i])

    async def _call(self, method: str, *args: Any) -> Any:
        """One call on the least loaded actor; a dead actor is replaced and the error raised."""
        i = self._pick()
        actor = self.actors[i]
        self.load[i] += 1
        try:
            return await getattr(actor, method).remote(*args)
        except BaseException as exc:
            if isinstance(exc, Exception) and _lost(exc) and i < len(self.actors) and self.actors[i] is actor:
                log.warning("%s: Ray actor %d lost (%s); replacing it", self.name, i, type(exc).__name__)
                try:
                    self.actors[i] = self._new_actor()
                except Exception:  # the cluster itself is gone: the next start() tries again
                    self._ready = False
            raise
        finally:
            self.load[i] = max(0, self.load[i] - 1)

    # ---- runs --------------------------------------------------------------------------------

    def _lost_result(self, run: TaskRun, exc: BaseException, started: float) -> Result:
        return self.fail(run, f"Ray lost the work ({type(exc).__name__}: {str(exc)[:300]}); retryable",
                         started, retryable=True)

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        started = time.time()
        try:
            await self.start()
        except ConfigError as exc:  # the lab file's mistake: another attempt would meet it again
            return [self.fail(r, f"cannot start: {exc}", started, retryable=False) for r in batch]
        except Exception as exc:
            return [self.fail(r, f"cannot reach Ray: {exc}", started, retryable=True) for r in batch]
        results: list[Result | None] = [None] * len(batch)
        by_cap: dict[str, list[int]] = {}
        blocks: list[Awaitable[None]] = []

        async def one_block(i: int) -> None:
            results[i] = await self._run_block(batch[i], progress, started)

        for i, run in enumerate(batch):
            if run.capability not in self.codings:
                results[i] = self.fail(run, f"{self.name} does not serve {run.capability}", started, retryable=False)
            elif run.block is not None:
                blocks.append(one_block(i))
            else:
                by_cap.setdefault(run.capability, []).append(i)
        await asyncio.gather(*blocks, *(self._run_rows(cap, idx, batch, results, started)
                                         for cap, idx in by_cap.items()))
        return [r for r in results if r is not None]

    async def _run_rows(self, cap: str, idx: list[int], batch: list[TaskRun], results: list[Result | None],
                        started: float) -> None:
        try:
            out = await self._call("rows", cap, [batch[i].inputs for i in idx])
        except Exception as exc:
            for i in idx:
                results[i] = (self._lost_result(batch[i], exc, started) if _lost(exc)
                              else self.fail(batch[i], f"forward pass failed: {_cause(exc)}", started))
            return
        prov = {k: out[k] for k in ("model_name", "model_version", "weights_sha256", "device")}
        extra = {"forward_batch": out["batch"], "dtype": out["dtype"], "ray_actors": len(self.actors)}
        decode = self.codings[cap].decode
        for j, i in enumerate(idx):
            run = batch[i]
            mean, std = float(out["mean"][j]), float(out["std"][j])
            if j in out["errors"]:
                results[i] = self.fail(run, f"cannot encode the inputs: {out['errors'][j]}", started,
                                       retryable=False)
            elif not (math.isfinite(mean) and math.isfinite(std) and std >= 0):
                results[i] = self.fail(run, f"model returned mean={mean}, std={std}", started, retryable=False,
                                       **prov)
            else:
                results[i] = self.ok(run, decode(mean, std, out["model_version"]), started, extra=extra, **prov)

    async def _run_block(self, run: TaskRun, progress: ProgressFn, started: float) -> Result:
        coding = self.codings[run.capability]
        try:
            cols = run.columns()
            n = check_columns(cols)
            if coding.block is None:
                coding.encode_block(cols)  # raises: the encoder has no columnar form
        except (ValueError, PPUError) as exc:
            return self.fail(run, f"cannot encode the block: {exc}", started, retryable=False)
        step = self.cfg.part_rows
        done = 0
        lock = asyncio.Lock()

        async def part(lo: int) -> dict[str, Any]:
            nonlocal done
            out = await self._call("block", run.capability, {k: v[lo:lo + step] for k, v in cols.items()})
            if "unencodable" in out:
                return dict(out)
            async with lock:  # progress never goes back, whichever part ends first
                done += len(out["mean"])
                r = progress(run.task_id, done / n, f"{done}/{n} rows")
                if asyncio.iscoroutine(r):
                    await r
            return dict(out)

        try:
            parts = await asyncio.gather(*(part(lo) for lo in range(0, n, step)))
        except Exception as exc:
            if _lost(exc):
                return self._lost_result(run, exc, started)
            return self.fail(run, f"cannot run the block: {_cause(exc)}", started, retryable=False)
        refused = next((p["unencodable"] for p in parts if "unencodable" in p), None)
        if refused is not None:
            return self.fail(run, f"cannot encode the block: {await block_error(coding, cols, refused)}", started,
                             retryable=False)
        last = parts[-1]
        cols_out, summary = block_outcome(self.codings[run.capability], np.concatenate([p["mean"] for p in parts]),
                                          np.concatenate([p["std"] for p in parts]), last["model_version"])
        prov = {k: last[k] for k in ("model_name", "model_version", "weights_sha256", "device")}
        extra = {"forward_batch": self.cfg.max_batch, "dtype": last["dtype"], "ray_actors": len(self.actors),
                 "parts": len(parts)}
        return self.ok(run, summary, started, extra=extra, **prov).with_columns(cols_out)


def _cause(exc: BaseException) -> BaseException:
    """What a remote method raised, without Ray's wrapping (its traceback from inside the actor)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
