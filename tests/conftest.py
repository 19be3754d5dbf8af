"""Session-wide settings every test needs before any library reads its environment."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Channel Access stays on loopback, on ports this session chose: no search ever leaves the machine, and
# two test sessions on one machine do not see each other's IOCs. Set before ophyd/caproto read them.
_port = _free_port(socket.SOCK_STREAM)
os.environ.update({
    "EPICS_CA_ADDR_LIST": "127.0.0.1", "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    "EPICS_CA_SERVER_PORT": str(_port), "EPICS_CA_REPEATER_PORT": str(_free_port(socket.SOCK_DGRAM)),
})


def _restore_packs() -> Iterator[None]:
    from ppu import packs

    before = packs.loaded()
    yield
    if packs.loaded() is not before:
        packs.load(None if before is None else [n for n in before.names if n != "core"])


@pytest.fixture(autouse=True)
def _packs_as_before() -> Iterator[None]:
    """A test that loads a lab file's packs (``packs: [flowchem]``) changes this process's packs;
    the next test gets the packs it had before, so no test depends on the order tests run in."""
    yield from _restore_packs()


@pytest.fixture(autouse=True, scope="module")
def _packs_as_before_module() -> Iterator[None]:
    """The same for a module whose fixtures load packs (e.g. one lab served for all its tests)."""
    yield from _restore_packs()


# ---- one local Ray for the whole session (the ray backend's tests and its conformance case) ----


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """A local Ray of 2 CPUs, no dashboard; a backend with no ``address`` uses it."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


@pytest.fixture(scope="session", autouse=True)
def _ray_shutdown_at_the_end() -> Iterator[None]:
    """Whoever started Ray in this session (a fixture or a backend), it stops once, at the end."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
