"""Long-running processes: ``ppu orchestrator`` and ``ppu worker`` (thin loop glue, STYLE.md §6).

Both stop cleanly on SIGINT / SIGTERM: the signal sets an event, the loop closes the sockets,
the worker's backends and the store, and the process exits 0 without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from urllib.parse import urlparse

from ppu.backends.registry import build_backend
from ppu.config import LabConfig
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
    announce(f"packs: {', '.join(lab.load_packs().names)}")
    store = Store(lab.store_url())
    orch = Orchestrator(store, lab.orchestrator, lab.autonomy)
    server: OrchestratorServer | None = None
    try:
        await orch.start()
        server = OrchestratorServer(orch, bind or lab.orchestrator.bind, lab.security, insecure=insecure)
        address = await server.start()
        announce(f"orchestrator of lab {lab.name} serving on {address} (store {lab.store_url()})")
        await _stop_event().wait()
        announce("orchestrator stopping")
    finally:
        if server is not None:
            await server.close()
        await orch.close()
        store.close()


async def serve_worker(lab: LabConfig, connect: str | None, backends: list[str], key: str | None = None,
                       announce: Callable[[str], None] = print) -> None:
    announce(f"packs: {', '.join(lab.load_packs().names)}")
    names = backends or [str(b.get("name")) for b in lab.backends]
    built = [build_backend(lab.backend_entry(n)) for n in names]
    curve = peer_keys(lab.security, key or os.environ.get("PPU_KEY", "worker")) if lab.security.curve else None
    address = connect or lab.orchestrator.bind
    worker = Worker(address, built, heartbeat_s=lab.orchestrator.heartbeat_s,
                    missed_heartbeats=lab.orchestrator.missed_heartbeats, curve=curve)
    try:
        await worker.start()
        announce(f"worker {worker.name} hosting {', '.join(names)} for {address}")
        stop = _stop_event()
        main = worker._main
        assert main is not None
        await asyncio.wait([asyncio.ensure_future(stop.wait()), main], return_when=asyncio.FIRST_COMPLETED)
        announce("worker stopping")
    finally:
        await worker.close()


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


def connect_client(lab: LabConfig, connect: str | None, timeout: float = 10.0,
                   probe_s: float = 1.0) -> PPUClient | None:
    """A client of the orchestrator at ``connect`` (default: the lab's bind), or None if none answers."""
    address = connect or lab.orchestrator.bind
    if nobody_listens(address):
        return None
    curve = peer_keys(lab.security, os.environ.get("PPU_KEY", "client")) if lab.security.curve else None
    client = PPUClient(address, timeout=timeout, curve=curve, actor=os.environ.get("USER"))
    if client.ping(probe_s):
        return client
    client.close()
    return None
