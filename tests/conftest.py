"""Session-wide settings every test needs before any library reads its environment."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
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


@pytest.fixture(autouse=True)
def _every_pack_loaded() -> None:
    """Each test starts with every installed pack loaded, whatever an earlier test (or a lab thread it
    left behind) loaded last: a lab file's ``packs: [flowchem]`` changes this process's packs, and no
    test may depend on the order tests run in. A test that wants fewer loads them itself."""
    from ppu import packs

    reg = packs.loaded()
    if reg is None or set(reg.names) != set(packs.installed()):
        packs.load(None)


# ---- one local Ray for the whole session (the ray backend's tests and its conformance case) ----


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """A local Ray of 2 CPUs, no dashboard; a backend with no ``address`` uses it.

    Its own Ray (``address="local"``), even where one runs on the machine already (``ray start``):
    joining that one would refuse ``num_cpus`` and run the tests on somebody else's cluster."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


@pytest.fixture(scope="session", autouse=True)
def _ray_shutdown_at_the_end() -> Iterator[None]:
    """Whoever started Ray in this session (a fixture or a backend), it stops once, at the end."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


# ---- one local Tiled server for the session (document sinks, user plans) ----


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Tiled server on a temporary SQLite catalog, as its own process (API key ``secret``)."""
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = (tmp_path_factory.mktemp("tiled") / "tiled.log").open("w")
    tiled_exe = str(Path(sys.executable).parent / "tiled")
    proc = subprocess.Popen([tiled_exe, "serve", "catalog", "--temp", "--api-key", "secret", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            assert proc.poll() is None, "tiled serve exited"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
