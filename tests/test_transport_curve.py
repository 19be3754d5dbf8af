"""Only known peers (promise 7): CURVE keys, ZAP refusals, backends per worker key, admin actions."""

from __future__ import annotations

from pathlib import Path

import pytest
from transport_helpers import HB, lab_config, run, until

from ppu import protocol as p
from ppu.backends.registry import build_backend
from ppu.errors import ConfigError, NotAllowed, UnknownTaskError
from ppu.transport import AsyncPPUClient, EmbeddedLab, OrchestratorServer, Worker, generate_keys, peer_keys
from ppu.transport.security import is_loopback


def _secure_lab(tmp: Path):
    keys = tmp / "keys"
    for name in ("orchestrator", "worker", "client", "admin", "intruder"):
        generate_keys(name, keys)
    return lab_config(tmp, security={"curve": True, "keys_dir": str(keys), "clients": ["client"],
                                     "admins": ["admin"], "workers": {"worker": ["echo-1"]}})


def test_known_keys_work_and_unknown_keys_are_refused(tmp_path: Path):
    lab = _secure_lab(tmp_path)

    async def body() -> None:
        embedded = EmbeddedLab(lab)
        async with embedded as client:
            [t] = await client.run([{"capability": "echo", "inputs": {"x": 1}}], timeout=10)
            assert t.state.value == "succeeded"
            server = embedded.server
            assert server is not None
            sec = lab.security
            # an unknown key: the handshake is refused, nothing is answered, the refusal is logged
            async with AsyncPPUClient(embedded.address, timeout=0.5, curve=peer_keys(sec, "intruder")) as bad:
                with pytest.raises(p.NotAnswering):
                    await bad.submit({"capability": "echo"})
            assert sum(server.auth.refused.values()) >= 1
            intruder = Worker(embedded.address, [build_backend({"type": "echo", "name": "echo-2"})],
                              heartbeat_s=HB, curve=peer_keys(sec, "intruder"))
            await intruder.start()
            with pytest.raises(p.NotAnswering):
                await intruder.wait_registered(0.5)
            await intruder.close()
            # a known worker key, but a backend it may not register
            sneaky = Worker(embedded.address, [build_backend({"type": "echo", "name": "echo-2"})],
                            heartbeat_s=HB, curve=peer_keys(sec, "worker"))
            await sneaky.start()
            assert embedded.orch is not None
            await until(lambda: embedded.orch.counters["refused_register"] >= 1, 5, "the refusal")
            assert not sneaky.registered and "echo-2" not in server.backend_peer
            await sneaky.close()
            # clients may not approve; admins may; a worker key is no client
            with pytest.raises(NotAllowed):
                await client.approve("some-task")
            async with AsyncPPUClient(embedded.address, timeout=2, curve=peer_keys(sec, "admin")) as admin:
                with pytest.raises(UnknownTaskError):
                    await admin.approve("some-task")  # authorised: fails only because the task is unknown
                assert len(await admin.audit()) >= 1
            async with AsyncPPUClient(embedded.address, timeout=2, curve=peer_keys(sec, "worker")) as wk:
                with pytest.raises(NotAllowed):
                    await wk.status()
    run(body())


def test_non_loopback_bind_needs_curve_or_insecure(tmp_path: Path):
    from ppu.orchestrator import Orchestrator
    from ppu.store import Store

    lab = lab_config(tmp_path)
    store = Store(lab.store_url())
    try:
        orch = Orchestrator(store, lab.orchestrator)
        with pytest.raises(ConfigError) as e:
            OrchestratorServer(orch, "tcp://0.0.0.0:5555")
        assert "CURVE" in str(e.value) and e.value.field == "orchestrator.bind"
        OrchestratorServer(orch, "tcp://0.0.0.0:5555", insecure=True)  # allowed when asked for explicitly
        OrchestratorServer(orch, "ipc:///tmp/x")
    finally:
        store.close()
    assert is_loopback("tcp://127.0.0.1:1") and is_loopback("tcp://localhost:1")
    assert not is_loopback("tcp://*:5555") and not is_loopback("tcp://10.0.0.2:1")
