"""Long-running processes: ``ppu orchestrator`` and ``ppu worker`` (thin loop glue, STYLE.md §6).

Both stop cleanly on SIGINT / SIGTERM: the signal sets an event, the loop closes the sockets,
the worker's backends and the store, and the process exits 0 without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from ppu.backends.registry import build_backend
from ppu.config import LabConfig, SecurityConfig
from ppu.errors import ConfigError, JournalFailed
from ppu.orchestrator import Orchestrator
from ppu.store import Store
from ppu.transport.client import PPUClient
from ppu.transport.security import peer_keys
from ppu.transport.server import OrchestratorServer
from ppu.transport.worker import Worker

log = logging.getLogger(__name__)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_orchestrator(lab: LabConfig, bind: str | None = None, insecure: bool = False,
                             announce: Callable[[str], None] = print) -> None:
    """Serve until SIGINT/SIGTERM; raises JournalFailed (the CLI exits non-zero) when a commit failed."""
    announce(f"packs: {', '.join(lab.load_packs().names)}")
    store = Store(lab.store_url(), lab.store_durability(), lab.store_field())
    orch = Orchestrator(store, lab.orchestrator, lab.autonomy)
    server: OrchestratorServer | None = None
    try:
        await orch.start()
        server = OrchestratorServer(orch, bind or lab.orchestrator.bind, lab.security, insecure=insecure)
        address = await server.start()
        store.announce_writer(address)
        announce(f"orchestrator of lab {lab.name} serving on {address} (store {lab.store_url()})")
        probe = asyncio.ensure_future(_stall_probe(orch.counters))
        stop = asyncio.ensure_future(_stop_event().wait())
        failed = asyncio.ensure_future(orch.failed.wait())
        await asyncio.wait([stop, failed], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        failed.cancel()
        probe.cancel()
        if orch.failed.is_set():
            await asyncio.sleep(0.2)  # let the error replies of the failed burst leave
            raise orch.journal.fatal or JournalFailed("the journal could not be written")
        announce("orchestrator stopping")
    finally:
        if server is not None:
            await server.close()
        await orch.close()
        store.close()


async def _stall_probe(counters: Any, period: float = 0.05) -> None:
    """The loop's worst stall since start, in ms (``ppu status`` counters: ``loop_stall_max_ms``):
    how much later than asked a short sleep wakes up. No request may hold the loop for long."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(period)
        late_ms = int((time.perf_counter() - t0 - period) * 1000)
        if late_ms > counters["loop_stall_max_ms"]:
            counters["loop_stall_max_ms"] = late_ms
        if late_ms >= 250:  # a stall this long risks the workers' heartbeats: say so (with the CPU time it took)
            log.warning("the orchestrator's loop stalled %d ms (process CPU time %.1f s)", late_ms, time.process_time())


@contextlib.contextmanager
def private_orchestrator(lab: LabConfig) -> Iterator[str]:
    """The CLI's offline mode: an orchestrator on the lab's store for this process alone.

    It runs with its server on its own thread and loop, bound to a private ipc address; callers
    talk to it with the same :class:`PPUClient` as to a running orchestrator (one code path).
    It takes the store's writer lease like any orchestrator, so it raises
    :class:`~ppu.errors.StoreHeld` while another orchestrator holds the store.
    """
    folder = tempfile.mkdtemp(prefix="ppu-cli-")
    address = f"ipc://{folder}/orchestrator"
    started = threading.Event()
    failure: list[BaseException] = []
    state: dict[str, Any] = {}

    async def main() -> None:
        store = Store(lab.store_url(), lab.store_durability(), lab.store_field())
        orch = Orchestrator(store, lab.orchestrator.model_copy(update={"bind": address}), lab.autonomy)
        server: OrchestratorServer | None = None
        try:
            await orch.start()
            server = OrchestratorServer(orch, address, SecurityConfig())  # ipc, private to this process
            await server.start()
            state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
            started.set()
            await state["stop"].wait()
        finally:
            if server is not None:
                await server.close()
            await orch.close()
            store.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="ppu-private-orchestrator", daemon=True)
    thread.start()
    try:
        started.wait()
        if failure:
            raise failure[0]
        yield address
    finally:
        if "loop" in state:
            state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)
        shutil.rmtree(folder, ignore_errors=True)


async def serve_worker(lab: LabConfig, connect: str | None, backends: list[str], key: str | None = None,
                       announce: Callable[[str], None] = print) -> None:
    announce(f"packs: {', '.join(lab.load_packs().names)}")
    names = backends or [str(b.get("name")) for b in lab.backends]
    built = lab.build_backends(names)
    curve = peer_keys(lab.security, key or os.environ.get("PPU_KEY", "worker")) if lab.security.curve else None
    address = connect or lab.orchestrator.bind
    worker = Worker(address, built, heartbeat_s=lab.orchestrator.heartbeat_s,
                    missed_heartbeats=lab.orchestrator.missed_heartbeats, curve=curve)
    try:
        await worker.start(lab.backend_errors)
        announce(f"worker {worker.name} hosting {', '.join(names)} for {address}")
        stop = _stop_event()
        main = worker._main
        assert main is not None
        await asyncio.wait([asyncio.ensure_future(stop.wait()), main], return_when=asyncio.FIRST_COMPLETED)
        announce("worker stopping")
    finally:
        await worker.close()


async def serve_iocs(lab: LabConfig, interfaces: list[str] | None = None,
                     announce: Callable[[str], None] = print) -> None:
    """``ppu ioc``: serve the simulated twin of every real-mode instrument of the lab (``simulated: false``
    with an ``epics_prefix``) as an EPICS IOC, with the same world, time scale and faults."""
    try:
        from ppu.backends.ioc import lab_pvdb, serve
    except ImportError as exc:
        raise ConfigError(f"serving IOCs needs caproto ({exc})", hint="pip install 'ppu[epics]'") from None
    entries = [b for b in lab.backends if b.get("epics_prefix") and b.get("simulated") is False]
    if not entries:
        raise ConfigError(f"no instrument of lab {lab.name} is in real mode", field="backends",
                          hint="give the instruments `simulated: false` and an `epics_prefix`")
    twins = []
    for b in entries:
        with lab.backend_errors(str(b.get("name"))):
            twins.append(build_backend({**b, "simulated": True}))
    pvdb = lab_pvdb(twins)
    announce(f"IOCs of lab {lab.name}: {len(pvdb)} PVs for {', '.join(str(b['name']) for b in entries)} "
             f"(Channel Access port {os.environ.get('EPICS_CA_SERVER_PORT', '5064')})")
    server = asyncio.ensure_future(serve(pvdb, interfaces))
    try:
        await asyncio.wait([asyncio.ensure_future(_stop_event().wait()), server],
                           return_when=asyncio.FIRST_COMPLETED)
        announce("IOCs stopping")
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        for twin in twins:
            await twin.close()


LOOPBACK_CA = {"EPICS_CA_ADDR_LIST": "127.0.0.1", "EPICS_CA_AUTO_ADDR_LIST": "NO",
               "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
               "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1"}


@contextlib.asynccontextmanager
async def ioc_process(lab: LabConfig, run_dir: Path, start_timeout_s: float = 60.0) -> AsyncIterator[None]:
    """``ppu ioc`` for ``lab`` as a process of its own (as an instrument's IOC is), for the lab's lifetime.
    Channel Access stays on loopback unless the environment already says otherwise."""
    for k, v in LOOPBACK_CA.items():
        os.environ.setdefault(k, v)  # before this process's first CA client reads them
    path = run_dir / "lab-epics.yaml"
    path.write_text(yaml.safe_dump(lab.model_dump(mode="json")))
    log_path = run_dir / "ioc.log"
    with log_path.open("w") as log:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ppu.cli", "ioc", "-c", str(path),
                                                    stdout=log, stderr=asyncio.subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout_s
            while "IOCs of lab" not in log_path.read_text():
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise ConfigError(f"ppu ioc did not start: {log_path.read_text()[-2000:]}",
                                      hint=f"see {log_path}")
                await asyncio.sleep(0.1)
            yield
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def nobody_listens(address: str) -> bool:
    """Quick check before waiting for an answer: a tcp port with no listener refuses at once."""
    u = urlparse(address)
    if u.scheme != "tcp" or not u.hostname or not u.port or u.hostname == "*":
        return False
    try:
        with socket.create_connection((u.hostname, u.port), timeout=0.5):
            return False
    except OSError:
        return True


def cli_actor() -> str:
    """Who a command line acts as, in the audit log and the task's ``submitted_by``: the login
    name where the shell has one, else ``cli``."""
    return os.environ.get("USER") or "cli"


def connect_client(lab: LabConfig, connect: str | None, timeout: float = 10.0,
                   probe_s: float = 1.0) -> PPUClient | None:
    """A client of the orchestrator at ``connect`` (default: the lab's bind), or None if none answers."""
    address = connect or lab.orchestrator.bind
    if nobody_listens(address):
        return None
    curve = peer_keys(lab.security, os.environ.get("PPU_KEY", "client")) if lab.security.curve else None
    client = PPUClient(address, timeout=timeout, curve=curve, actor=cli_actor())
    if client.ping(probe_s):
        return client
    client.close()
    return None
