"""Physical backends: a capability carried out as a Bluesky plan on Ophyd devices.

A pack subclasses :class:`PhysicalBackend` once per instrument type: ``build_devices`` (the
Ophyd devices, simulated twins or EPICS), ``plan`` (the Bluesky plan for one task) and ``reduce``
(the outputs, from the run's documents alone). The base hosts ONE RunEngine on its own thread
(see :mod:`ppu.backends.runengine` for where the loops live) and does everything else: checks,
progress, abort, pause, documents, results. Offers and safe limits default to what the
capability declares (duration, cost, limits), so they are written once.

Order of checks for one task, all before a plan is submitted (so nothing moves on a refusal):
capability offered, inputs valid, setpoints inside ``safe_limits``, sample known
(:meth:`PhysicalBackend.unknown_sample`). A refusal is a failed Result with ``retryable=False``.
A plan that is aborted or hits a device fault returns ``interrupted=True, retryable=False`` (the
orchestrator sends such ``once`` tasks to review).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

from bluesky.utils import Msg
from ophyd import Device
from pydantic import Field

from ppu import capabilities
from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.backends.documents import (
    Document,
    DocumentSink,
    DocumentStream,
    FanOut,
    JsonlSink,
    TiledSink,
    split_by_run,
)
from ppu.backends.runengine import LabScanIds, PlanOutcome, RunEngineHost
from ppu.backends.suspenders import SuspenderConfig, build_suspenders, signal_of
from ppu.backends.user_plans import AllowedPlans, PlanRefused
from ppu.errors import ConfigError, ValidationFailed
from ppu.models import BackendKind, BackendSpec, CapabilityOffer, Limit, Result, Strict, limit_violations

PlanFactory = Callable[[], Iterable[Msg]]
PLAN = "bluesky.plan"  # a scientist's own plan (ppu.backends.user_plans)


class TiledConfig(Strict):
    uri: str = Field(max_length=2048, pattern=r"^https?://", description="the Tiled server, e.g. http://tiled:8000")
    api_key_env: str = Field("TILED_API_KEY", max_length=128, description="environment variable holding the key")


class PhysicalConfig(BackendConfig):
    epics_prefix: str = Field("", description="PV prefix of the instrument (real mode), e.g. 'INST1:'")
    time_scale: float = Field(1000.0, gt=0, le=1e9, description="simulated lab time runs this many times faster")
    seed: int = Field(0, description="seeds the simulated instruments' noise and faults")
    run_dir: str = Field("runs/lab", description="folder for the documents (and a simulated lab's state)")
    documents_dir: str | None = Field(None, description="JSONL documents folder (default <run_dir>/documents)")
    tiled: TiledConfig | None = Field(None, description="also write every run to this Tiled server")
    plans: list[str] = Field(default_factory=list, max_length=200, description="Bluesky plans a scientist may run "
                             "here as `bluesky.plan` tasks: stock names (count, scan, ...) or 'module:function'")
    metadata: dict[str, Any] = Field(default_factory=dict, description="extra RunEngine metadata for every start "
                                     "document of this instrument (e.g. beamline, proposal, operator)")
    connect_timeout_s: float = Field(30.0, gt=0, le=3600, description="real mode: how long the backend waits "
                                     "at start for every PV of its devices to connect")
    acquire_timeout_s: float = Field(3600.0, gt=0, le=7 * 86400, description="real mode: an acquisition that "
                                     "has not completed after this many seconds fails (once work goes to review)")
    suspenders: list[SuspenderConfig] = Field(default_factory=list, max_length=50, description="Bluesky "
                                              "suspenders: plans wait while an interlock or a beam is not ready")
    ioc_fault: Literal["stale", "hang"] | None = Field(None, description="`ppu ioc` only: make this twin's IOC "
                                                       "misbehave (stale read-backs, or an acquisition that "
                                                       "never ends) to test a driver's safety checks")


async def _report(progress: ProgressFn, task_id: str, fraction: float, message: str) -> None:
    out = progress(task_id, fraction, message)
    if inspect.isawaitable(out):
        await out


class _Refused(Exception):
    """A task refused before anything moved."""


class PhysicalBackend(Backend):
    kind = BackendKind.physical
    Config: ClassVar[type[BackendConfig]] = PhysicalConfig
    capability: ClassVar[str]
    fidelity: ClassVar[float] = 1.0

    def __init__(self, config: BackendConfig, *, sink: DocumentSink | None = None):
        super().__init__(config)
        assert isinstance(config, PhysicalConfig)
        self.cfg = config
        self.sink: DocumentSink = sink or self._sinks(config)
        self.devices = self.build_devices()
        self.suspenders = build_suspenders(config.suspenders, self.devices, simulated=config.simulated,
                                           name=config.name)
        self.host = RunEngineHost(config.name, md={**config.metadata, "backend": config.name},
                                  scan_ids=LabScanIds(Path(config.run_dir) / "scan_id"), suspenders=self.suspenders)
        try:
            self.allowed_plans = AllowedPlans(config.plans)
        except PlanRefused as exc:
            raise ConfigError(f"backend {config.name}: {exc}", field="plans",
                              hint="stock plan names or 'module:function' of an importable module") from None
        for dev in self.devices.values():
            if hasattr(dev, "acquire_timeout_s"):  # EPICS builds: every acquisition has a deadline
                dev.acquire_timeout_s = config.acquire_timeout_s

    @staticmethod
    def _sinks(cfg: PhysicalConfig) -> DocumentSink:
        jsonl = JsonlSink(cfg.documents_dir or Path(cfg.run_dir) / "documents")
        if cfg.tiled is None:
            return jsonl
        try:
            tiled = TiledSink(cfg.tiled.uri, os.environ.get(cfg.tiled.api_key_env) or None)
        except ImportError as exc:
            raise ConfigError(f"backend {cfg.name}: a Tiled sink needs the tiled client ({exc})", field="tiled",
                              hint="pip install 'ppu[tiled]'") from None
        return FanOut([jsonl, tiled])

    # ---- per type -----------------------------------------------------------------------------

    def build_devices(self) -> dict[str, Device]:
        raise NotImplementedError

    def default_offers(self) -> list[CapabilityOffer]:
        cap = capabilities.get(self.capability)
        return [CapabilityOffer(name=cap.name, fidelity=self.fidelity, duration_s=cap.duration_s or 1.0,
                                cost=cap.cost or 0.0)]

    def default_limits(self) -> dict[str, Limit]:
        return dict(capabilities.get(self.capability).limits)

    def unknown_sample(self, sample_id: str) -> str | None:
        """Why this backend cannot work on ``sample_id`` (None: it can). A simulated lab checks its register."""
        return None

    def plan(self, run: TaskRun, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        raise NotImplementedError

    def reduce(self, run: TaskRun, inputs: dict[str, Any], docs: list[Document]) -> dict[str, Any]:
        """Outputs from the documents alone (never from the simulated world)."""
        raise NotImplementedError

    def spec(self) -> BackendSpec:
        spec = super().spec()
        if self.cfg.plans and not any(o.name == PLAN for o in spec.capabilities):
            spec.capabilities.append(CapabilityOffer(name=PLAN, fidelity=1.0, duration_s=600.0, cost=1.0))
        return spec

    def device_prefix(self, key: str) -> str | None:
        """The PV prefix of one of this backend's devices in real mode (a type with several overrides it)."""
        return self.cfg.epics_prefix or None

    def twin_pvdbs(self) -> dict[str, dict[str, Any]]:
        """The simulated devices of this backend as EPICS IOCs, keyed by PV prefix (``ppu ioc``); only
        for a backend built with ``simulated: true`` from a real-mode entry (``epics_prefix`` set)."""
        from ppu.backends.ioc import twin_pvdb

        out: dict[str, dict[str, Any]] = {}
        main = self.cfg.epics_prefix
        for key, dev in self.devices.items():
            prefix = self.device_prefix(key)
            epics_cls = getattr(dev, "epics_class", None)
            if not prefix or epics_cls is None:
                continue
            out[prefix] = twin_pvdb(dev, epics_cls, prefix, timeout_s=self.cfg.acquire_timeout_s,
                                    fault=self.cfg.ioc_fault if prefix == main else None)
        return out

    # ---- the contract -------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.host.start)
        if not self.cfg.simulated:  # real mode: every PV connected before a plan may touch one
            await asyncio.to_thread(self._connect)

    def _connect(self) -> None:
        for dev in self.devices.values():
            try:
                dev.wait_for_connection(timeout=self.cfg.connect_timeout_s)
            except TimeoutError as exc:
                raise ConfigError(f"backend {self.name}: {exc}", field="epics_prefix",
                                  hint="is the instrument's IOC running and reachable (EPICS_CA_ADDR_LIST)?") from None
        for sus in self.suspenders:  # an interlock nobody can read would never suspend anything
            sig = signal_of(sus)
            try:
                sig.wait_for_connection(timeout=self.cfg.connect_timeout_s)
            except TimeoutError as exc:
                raise ConfigError(f"backend {self.name}: suspender PV {sig.name} does not connect ({exc})",
                                  field="suspenders.pv", hint="check the PV name and that its IOC is reachable; "
                                  "no plan runs here until every interlock is readable") from None

    async def close(self) -> None:
        if self.cfg.simulated:  # no simulated acquisition may finish after the loop is gone
            for dev in self.devices.values():
                dev.stop()
        await asyncio.to_thread(self.host.close)
        if hasattr(self.sink, "close"):  # e.g. a Tiled client's connections
            self.sink.close()

    async def pause(self, defer: bool = False) -> str:
        return await asyncio.to_thread(self.host.request_pause, defer)

    async def resume(self) -> str:
        return await asyncio.to_thread(self.host.resume)

    async def abort(self, task_id: str) -> None:
        await asyncio.to_thread(self._abort, task_id, "aborted by the orchestrator")

    def _abort(self, task_id: str, reason: str) -> None:
        """Abort the task's plan and, if it was under way, stop the instrument: Bluesky stops only what
        a plan moved (``set``), and an acquisition it triggered (making a sample, a long scan) would otherwise
        run on and make or measure a sample nobody asked for any more."""
        under_way = self.host.running() == task_id
        self.host.abort(task_id, reason)
        if under_way:
            for dev in self.devices.values():
                dev.stop()

    def check(self, run: TaskRun) -> dict[str, Any]:
        """Everything that can refuse a task before it moves anything; returns the normalised inputs."""
        if run.capability != self.capability and not (run.capability == PLAN and self.cfg.plans):
            raise _Refused(f"backend {self.name} offers {self.capability}, not {run.capability}")
        try:
            inputs = capabilities.validate_inputs(run.capability, run.inputs)
        except ValidationFailed as exc:
            raise _Refused(str(exc)) from None
        bad = limit_violations(self.spec().safe_limits, inputs)
        if bad:
            raise _Refused(f"outside safe limits of {self.name}: {'; '.join(bad)} (nothing moved)")
        for sample_id in capabilities.get(run.capability).samples_used(inputs):
            why = self.unknown_sample(sample_id)
            if why:
                raise _Refused(why)
        return inputs

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        if not self.host.RE:
            await self.start()
        return [await self._run_one(r, progress) for r in batch]

    async def _run_one(self, run: TaskRun, progress: ProgressFn) -> Result:
        started = time.time()
        try:
            inputs = self.check(run)
        except _Refused as exc:
            return self.fail(run, str(exc), started, retryable=False)
        md = {"task_id": run.task_id, "attempt": run.attempt, "campaign": run.campaign, "backend": self.name,
              "capability": run.capability}
        try:
            plan = self.user_plan(inputs, md) if run.capability == PLAN else self.plan(run, inputs, md)
        except PlanRefused as exc:
            return self.fail(run, f"{exc} (nothing moved)", started, retryable=False)
        await _report(progress, run.task_id, 0.0, f"submitted to the RunEngine of {self.name}")
        stream = DocumentStream(self.sink, run.task_id)  # each document kept as it comes, not at the end
        fut = self.host.submit(run.task_id, plan, on_document=stream)
        watch = asyncio.create_task(self._report_plan_state(run.task_id, progress))
        try:
            outcome: PlanOutcome = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            await asyncio.to_thread(self._abort, run.task_id, "task cancelled")
            raise
        finally:
            watch.cancel()
        prov = self._provenance(outcome, stream)
        if not outcome.ok:
            why = outcome.error or f"run ended with exit status {outcome.exit_status}"
            return self.fail(run, f"{self.capability} on {self.name} interrupted: {why}", started,
                             retryable=False, interrupted=True, **prov)
        try:
            reduced = (self.reduce_user_plan(inputs, outcome) if run.capability == PLAN
                       else self.reduce(run, inputs, outcome.documents))
            outputs = capabilities.validate_outputs(run.capability, reduced)
        except Exception as exc:  # the run completed; its data did not give an answer
            return self.fail(run, f"{self.capability} on {self.name}: {exc}", started, retryable=False, **prov)
        await _report(progress, run.task_id, 1.0, "done")
        return self.ok(run, outputs, started, **prov)

    async def _report_plan_state(self, task_id: str, progress: ProgressFn, every_s: float = 0.1) -> None:
        """Tell the orchestrator when this task's plan pauses (a lab stop, at its next checkpoint), is
        suspended (a tripped suspender, with why) and goes on, so ``ppu status`` says so. Bluesky
        changes these from its own loop and from signal callbacks, so they are read, not pushed."""
        said = "running"
        while True:
            tripped = self.host.suspension()
            now = (f"suspended: {'; '.join(tripped)}" if tripped
                   else "paused at a checkpoint" if self.host.state == "paused" else "running")
            if now != said:
                await _report(progress, task_id, 0.0, now if now != "running" else f"running again (was {said})")
                said = now
            await asyncio.sleep(every_s)

    def user_plan(self, inputs: dict[str, Any], md: dict[str, Any]) -> PlanFactory:
        return self.allowed_plans.bind(inputs["plan"], inputs["args"], self.devices,
                                       {**inputs["md"], **md, "plan_source": "bluesky.plan task"})

    @staticmethod
    def reduce_user_plan(inputs: dict[str, Any], outcome: PlanOutcome) -> dict[str, Any]:
        events = sum(1 for n, _ in outcome.documents if n == "event")
        return {"plan": inputs["plan"], "run_uids": outcome.run_uids, "exit_status": outcome.exit_status,
                "events": events}

    def _provenance(self, outcome: PlanOutcome, stream: DocumentStream) -> dict[str, Any]:
        where = [stream.where[uid] for uid in outcome.run_uids if uid in stream.where]
        return {"run_uids": outcome.run_uids, "documents": ";".join(where) or None,
                "device": "simulated" if self.cfg.simulated else self.cfg.epics_prefix or None}


def events(docs: list[Document]) -> list[dict[str, Any]]:
    return [d["data"] for n, d in docs if n == "event"]


def events_of(docs: list[Document], plan_name: str) -> list[dict[str, Any]]:
    """Events of the runs a given plan opened (a composed plan has transfer runs too)."""
    runs = [d["uid"] for n, d in docs if n == "start" and d.get("plan_name") == plan_name]
    grouped = split_by_run(docs)
    return [d["data"] for uid in runs for n, d in grouped.get(uid, []) if n == "event"]


_events, _events_of = events, events_of  # the names packs written before the split use
