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

Start-up, in order: Ray's own view of its nodes' resources (``ray.nodes()``, whose sums
``ray.cluster_resources()`` gives) against what the actors ask for: ``actors`` x ``cpus_per_actor``
CPUs and ``actors`` x ``gpus_per_actor`` GPUs. A Ray started by this process (no ``address``, or
one started here before) cannot grow, so a shortfall fails the start at once, naming ``actors`` (or
``cpus_per_actor``/``gpus_per_actor`` when not even one actor fits a node). A cluster joined at an
address may have an autoscaler that adds nodes, so there a shortfall is logged and the start waits:
every actor must be placed within ``ready_timeout_s`` (default 60 s; raise it to the time your
autoscaler takes to add a node), else the start fails naming the same field with the resources that
are missing (``ray.available_resources()``). Then each actor loads its models and, with ``warmup``
(the default), runs the capability's example through each (as ``torch`` does): a model that does
not fit or raises fails the start with a ConfigError naming ``models.<capability>.<source>``; the
actor reports it as data (``ping``'s ``refused``), never as Ray's traceback of a dead actor. A
misfit found at run time (``warmup: false``) fails its tasks in the same words, not retryable.
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
_TOKEN_HINT = ("run the worker with RAY_AUTH_MODE=token and the head's token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or "
               "~/.ray/auth_token on the head's machine (`ray get-auth-token` there prints it)")
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
    warmup: bool = Field(True, description="each actor runs the capability's example through each model at start")
    ready_timeout_s: float = Field(60.0, gt=0, le=86_400,
                                   description="longest the start waits for Ray to place every actor (its CPUs "
                                   "and GPUs); an autoscaling cluster needs the time it takes to add a node")
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
    """What one Ray actor holds: the models and their codings. Runs in the actor's process.

    Its constructor does nothing that can fail or take long, so that :meth:`ready` answers as soon as
    Ray has placed it; :meth:`ping` then loads and warms up the models and reports what refused."""

    def __init__(self, models: dict[str, dict[str, Any]], device: str, half: bool, max_batch: int,
                 reload_check_s: float, warmup: bool = True):
        self.requested = device
        self.device: Any = None  # chosen on first use, with torch imported then
        self.half = half
        self.max_batch = max_batch
        self.reload_check_s = reload_check_s
        self.warmup = warmup
        self.specs = {cap: ModelSpec.model_validate(spec) for cap, spec in models.items()}
        self.models: dict[str, Any] = {}
        self.checked: dict[str, float] = {}
        self.codings: dict[str, Coding] = {}
        self.refused: dict[str, str | None] | None = None  # what ping() reports: raised here, the actor would die
        for cap, spec in self.specs.items():
            try:
                self.codings[cap] = Coding.of(cap, spec.encoder, spec.decoder)
            except Exception as exc:  # this node lacks the pack that brings the encoder, say
                self.refused = {"message": f"the encoder or decoder of {cap} cannot load on a Ray node: {exc}",
                                "field": f"models.{cap}", "hint": "install the lab's packs on every Ray node"}

    def ready(self) -> bool:
        """Placed: Ray found this actor its CPUs and GPUs, and it runs."""
        return True

    def _device(self) -> Any:
        if self.device is None:
            import torch

            from ppu.digital.loading import select_device

            torch.set_grad_enabled(False)
            self.device = select_device(self.requested)
        return self.device

    def _load(self, cap: str, need: bool = True) -> Any:
        from ppu.digital.loading import load_model

        spec = self.specs[cap]
        now = time.monotonic()
        if cap not in self.models or (spec.registry and now - self.checked.get(cap, -math.inf) >= self.reload_check_s):
            self.checked[cap] = now
            m = load_model(spec, cap, self._device(), self.half, self.codings[cap].features)
            if m is not None:
                self.models[cap] = m
        m = self.models.get(cap)
        if m is None and need:
            raise RuntimeError(f"no trained model for {cap} yet in {spec.registry}")
        return m

    def _forward(self, m: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Passes of ``max_batch`` rows; a model that does not fit raises ModelMisfit (a ConfigError)."""
        import torch

        from ppu.digital.loading import run_model

        xt = torch.from_numpy(x)
        means, stds = [], []
        for lo in range(0, len(x), self.max_batch):
            mu, sd = run_model(m, xt[lo:lo + self.max_batch], self.device)
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
        """Every model loaded and (``warmup``) run on its capability's example: the device, and what refused
        (None: every model is served). A refusal is data: raised, it would reach the lab as Ray's traceback,
        without the field. A registry with no version yet is not a refusal (it is served once trained)."""
        from ppu.digital.loading import warm_up

        if self.refused is not None:
            return {"device": str(self.device), "refused": self.refused}
        cap = ""
        try:
            for cap in self.specs:
                m = self._load(cap, need=False)
                if m is not None and self.warmup:
                    warm_up(m, self.codings[cap], self._device())
        except PPUError as exc:
            return {"device": str(self.device), "refused": {"message": exc.message, "field": exc.field,
                                                            "hint": exc.hint}}
        except Exception as exc:  # loading names what it knows; anything else still gets words and a field
            return {"device": str(self.device), "refused": {
                "message": f"the model cannot load: {type(exc).__name__}: {str(exc)[:600]}",
                "field": f"models.{cap}", "hint": None}}
        return {"device": str(self.device), "refused": None}


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
        return cls.remote(models, device, self.cfg.half, self.cfg.max_batch, self.cfg.reload_check_s,
                          self.cfg.warmup)

    async def start(self) -> None:
        async with self._start_lock:
            if self._ready:
                return
            ray = _ray()
            if not ray.is_initialized():
                await self._init_ray(ray)
            try:
                self._check_resources(ray)
            except ConfigError:
                await self.close()  # a Ray started for this backend ends with the failed start
                raise
            self.actors = [self._new_actor() for _ in range(self.cfg.actors)]
            self.load = [0] * len(self.actors)
            await self._placed(ray)
            pings = await asyncio.gather(*(a.ping.remote() for a in self.actors))  # models loaded, or why not
            refused = next((p["refused"] for p in pings if p["refused"]), None)
            if refused is not None:
                await self.close()
                raise ConfigError(str(refused["message"]), field=refused["field"], hint=refused["hint"])
            self._ready = True

    def _check_resources(self, ray: Any) -> None:
        """Ray's view of its nodes against what the actors ask for. A Ray of this process cannot grow: a
        shortfall ends the start now. A joined cluster may autoscale: the shortfall is logged, and
        :meth:`_placed` bounds the wait."""
        try:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        except Exception:  # a Ray (client) that does not list its nodes: the bounded wait still holds
            return
        short = _shortfall(self.cfg, nodes, self._started_ray)
        if short is None:
            return
        if self._started_ray or _head_here():
            raise short
        log.warning("%s: %s; waiting up to %g s (ready_timeout_s) for the cluster to add nodes", self.name,
                    short.message, self.cfg.ready_timeout_s)

    async def _placed(self, ray: Any) -> None:
        """Every actor placed (given its CPUs and GPUs) within ready_timeout_s, or a ConfigError saying what
        is missing; the actors made so far are ended either way it fails."""
        waits = [asyncio.ensure_future(a.ready.remote()) for a in self.actors]
        done, pending = await asyncio.wait(waits, timeout=self.cfg.ready_timeout_s)
        for fut in pending:
            fut.cancel()
        try:
            for fut in done:
                fut.result()  # an actor that died starting: its error
        except BaseException:
            await self.close()
            raise
        if pending:
            try:
                total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
                free = {k: ray.available_resources().get(k, 0.0) for k in total}
            except Exception:
                total, free = {}, {}
            await self.close()
            cpu, gpu, left = self.cfg.cpus_per_actor, self.cfg.gpus_per_actor, len(pending)
            missing = _amounts({"CPU": left * cpu, **({"GPU": left * gpu} if gpu else {})})
            field = "actors" if done else ("gpus_per_actor" if gpu > 0 else "cpus_per_actor")
            raise ConfigError(
                f"Ray placed {len(done)} of {self.cfg.actors} actors within {self.cfg.ready_timeout_s:g} s "
                f"(ready_timeout_s): the other {left} need {missing} more (cpus_per_actor: {cpu:g}"
                + (f", gpus_per_actor: {gpu:g}" if gpu else "") + f" each); the cluster has {_amounts(total)} in "
                f"all, {_amounts(free)} free now", field=field,
                hint="lower actors, cpus_per_actor or gpus_per_actor, free the cluster's resources or add nodes; "
                "an autoscaling cluster: raise ready_timeout_s to the time it takes to add a node") from None

    async def _init_ray(self, ray: Any) -> None:
        address = self.cfg.address
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        head: tuple[str, int] | None = None
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
            if head is not None and isinstance(exc, ConnectionError) and os.environ.get("RAY_AUTH_MODE") != "token":
                # Its GCS answered gRPC just now, yet Ray could not join: most often a head that wants a
                # token (Ray 2.59+ turns token authentication on for the clusters it starts locally).
                why += "; the head answers, so it may require a token (Ray's token authentication)"
                hint = _TOKEN_HINT
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
            cause = _cause(exc)  # a ModelMisfit (a ConfigError): the same on every attempt
            for i in idx:
                results[i] = (self._lost_result(batch[i], exc, started) if _lost(exc)
                              else self.fail(batch[i], f"forward pass failed: {cause}", started,
                                             retryable=not isinstance(cause, ConfigError)))
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


def _count(v: float, unit: str) -> str:
    return f"{v:g} {unit}" + ("s" if v != 1 else "")


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(_count(v, k) for k, v in sorted(resources.items())) or "none"


def _shortfall(cfg: RayConfig, nodes: list[dict[str, float]], own: bool) -> ConfigError | None:
    """The error for nodes (each one's resources) that cannot hold ``cfg.actors`` actors, None when they can.
    An actor sits on one node: the actors that fit are summed node by node."""
    cpu, gpu = cfg.cpus_per_actor, cfg.gpus_per_actor

    def fit(node: dict[str, float]) -> int:
        n = math.floor(node.get("CPU", 0.0) / cpu + 1e-9)
        return min(n, math.floor(node.get("GPU", 0.0) / gpu + 1e-9)) if gpu > 0 else n

    fits = sum(fit(n) for n in nodes)
    if fits >= cfg.actors:
        return None
    has_cpu, has_gpu = sum(n.get("CPU", 0.0) for n in nodes), sum(n.get("GPU", 0.0) for n in nodes)
    need = f"actors: {cfg.actors} x cpus_per_actor: {cpu:g} = {_count(cfg.actors * cpu, 'CPU')}"
    have = _count(has_cpu, "CPU")
    if gpu > 0:
        need += f" and actors: {cfg.actors} x gpus_per_actor: {gpu:g} = {_count(cfg.actors * gpu, 'GPU')}"
        have += f" and {_count(has_gpu, 'GPU')}"
    gpu_short = gpu > 0 and sum(math.floor(n.get("GPU", 0.0) / gpu + 1e-9) for n in nodes) < cfg.actors
    if fits == 0:  # not even one actor fits a node: the per-actor ask is the mistake
        field = "gpus_per_actor" if gpu_short else "cpus_per_actor"
    else:
        field = "actors"
    more = (f"give the Ray more CPUs (local_cpus: {math.ceil(cfg.actors * cpu)})" if own and not gpu_short else
            "run on a machine or cluster with more GPUs, or gpus_per_actor: 0 to run on CPU" if gpu_short else
            "add nodes to the cluster")
    where = f" ({fits} of {cfg.actors} actors fit)" if fits else ""
    return ConfigError(f"{need} needed, the Ray cluster has {have}{where}", field=field,
                       hint=f"lower actors or {'gpus_per_actor' if gpu_short else 'cpus_per_actor'}, or {more}")


def _head_here() -> bool:
    """Whether this process started the Ray it is connected to (ray.init without an address, as the tests'
    shared Ray): nothing adds nodes to it. False where Ray does not say (then the start waits, bounded)."""
    try:
        from ray._private import worker
    except ImportError:
        return False
    node = getattr(worker, "_global_node", None)
    return bool(getattr(node, "head", False))


def _cause(exc: BaseException) -> BaseException:
    """What a remote method raised, without Ray's wrapping (its traceback from inside the actor)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
