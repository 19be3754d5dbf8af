"""Roles that fit a lab (issue 13 item 3): client, operator, admin, worker, with real CURVE keys on loopback.

A client cancels only the work it submitted; operators approve and cancel anything; admins also
change autonomy; a worker key makes no client request. Every refusal is a typed ``not_allowed``
and leaves the task as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transport_helpers import lab_config, run

from ppu import protocol as p
from ppu.errors import NotAllowed, UnknownBackendError, UnknownCapabilityError
from ppu.models import ActionClass, Task, TaskSpec
from ppu.transport import AsyncPPUClient, EmbeddedLab, generate_keys, peer_keys
from ppu.transport.security import NEEDS, Role, authorise

NAMES = ("orchestrator", "worker", "client", "other", "operator", "admin")


def _secure_lab(tmp: Path):
    keys = tmp / "keys"
    for name in NAMES:
        generate_keys(name, keys)
    return lab_config(tmp, security={"curve": True, "keys_dir": str(keys), "clients": ["client", "other"],
                                     "operators": ["operator"], "admins": ["admin"],
                                     "workers": {"worker": ["echo-1"]}},
                      autonomy={"default": "manual"})  # every task waits for approval: nothing ends by itself


def test_client_cancels_only_its_own_tasks_operator_approves_admin_sets_autonomy(tmp_path: Path):
    lab = _secure_lab(tmp_path)
    sec = lab.security

    def keys(name: str):
        return peer_keys(sec, name)

    async def body() -> None:
        embedded = EmbeddedLab(lab, client_key="admin")
        async with embedded as admin:
            assert embedded.orch is not None
            counters = embedded.orch.counters
            async with (AsyncPPUClient(embedded.address, timeout=5, curve=keys("client")) as client,
                        AsyncPPUClient(embedded.address, timeout=5, curve=keys("other")) as other,
                        AsyncPPUClient(embedded.address, timeout=5, curve=keys("operator")) as operator,
                        AsyncPPUClient(embedded.address, timeout=5, curve=keys("worker")) as worker):
                [admins_task] = await admin.submit({"capability": "echo", "inputs": {"x": 1}})
                [mine, mine2] = await client.submit([{"capability": "echo", "inputs": {"x": 2}},
                                                     {"capability": "echo", "inputs": {"x": 3}}])
                # the submitter is recorded on the task (actor and key) and shown by get_task
                t = await client.task(mine)
                assert t.submitter_key == keys("client").public.decode()
                assert t.submitted_by is not None and t.submitted_by.startswith("client[")
                assert (await admin.task(admins_task)).submitter_key == keys("admin").public.decode()

                # a client cannot cancel an admin's task, nor another client's: typed, nothing changes
                refused = counters["refused_request"]
                with pytest.raises(NotAllowed) as e:
                    await client.cancel(admins_task)
                assert e.value.code == "not_allowed" and e.value.field == "task_id"
                assert "own" in e.value.message
                with pytest.raises(NotAllowed):
                    await other.cancel(mine)
                assert counters["refused_request"] == refused + 2
                assert (await admin.task(admins_task)).state.value == "pending"
                assert (await admin.task(mine)).state.value == "pending"
                # ... but it can cancel its own
                await client.cancel(mine, reason="changed my mind")
                assert (await client.task(mine)).state.value == "cancelled"

                # approving is for operators and admins
                with pytest.raises(NotAllowed) as e:
                    await client.approve(mine2)
                assert e.value.code == "not_allowed" and "operator" in e.value.message
                assert (await admin.task(mine2)).approval.value == "waiting"
                await operator.approve(mine2)
                assert (await admin.task(mine2)).approval.value == "approved"
                # an operator cancels anybody's task; it may not change autonomy, an admin may
                await operator.cancel(admins_task, reason="operator stop")
                assert (await admin.task(admins_task)).state.value == "cancelled"
                with pytest.raises(NotAllowed):
                    await operator.set_autonomy("autonomous")
                await admin.set_autonomy("autonomous", capability="echo")
                # a worker key is no client
                with pytest.raises(NotAllowed) as e:
                    await worker.status()
                assert "not a client key" in e.value.message
                # unknown names are refused where they must exist, naming the field
                with pytest.raises(UnknownBackendError) as ub:
                    await admin.set_autonomy("manual", backend="no-such-backend")
                assert ub.value.field == "backend"
                with pytest.raises(UnknownCapabilityError) as uc:
                    await admin.set_autonomy("manual", capability="x" * 100)
                assert uc.value.field == "capability"
                with pytest.raises(UnknownBackendError) as ub:
                    await operator.stop("no-such-backend")
                assert ub.value.field == "backend"
                audit = [(a.action, a.target) for a in await admin.audit()]
                assert ("autonomy", "no-such-backend") not in audit and ("autonomy", "echo") in audit

    run(body())


def _task(key: str | None) -> Task:
    return Task(id="t-1", capability="echo", action=ActionClass.repeatable, submitter_key=key, submitted_by="x")


REQUESTS = sorted(m.model_fields["type"].default for m in p.CLIENT_REQUESTS)


@pytest.mark.parametrize("request_type", REQUESTS)
@pytest.mark.parametrize("role", [*Role, None])
def test_role_table(role: Role | None, request_type: str):
    """The whole table of docs/protocol.md (Roles), request by request."""
    rank = {Role.client: 1, Role.operator: 2, Role.admin: 3}
    need = NEEDS.get(request_type, Role.client)
    allowed = role not in (None, Role.worker) and rank[role] >= rank[need]  # type: ignore[index]
    if allowed:
        authorise(role, request_type, _task("K" * 40), "K" * 40)
    else:
        with pytest.raises(NotAllowed):
            authorise(role, request_type, _task("K" * 40), "K" * 40)


def test_cancel_needs_ownership_below_operator():
    authorise(Role.client, "cancel", _task("A" * 40), "A" * 40)
    authorise(Role.client, "cancel", None, "A" * 40)  # unknown task: answered unknown_task later
    for owner in ("B" * 40, None):
        with pytest.raises(NotAllowed):
            authorise(Role.client, "cancel", _task(owner), "A" * 40)
        authorise(Role.operator, "cancel", _task(owner), "A" * 40)
        authorise(Role.admin, "cancel", _task(owner), None)


@pytest.mark.parametrize("user", ["dana", None])
def test_ppu_tasks_shows_who_submitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: str | None):
    """The CLI acts as the login name (the audit's actor), or as ``cli`` where the shell has none."""
    from typer.testing import CliRunner

    from ppu import cli

    lab = tmp_path / "lab.yaml"
    lab.write_text(f"name: t\nrun_dir: {tmp_path / 'run'}\n")
    runner = CliRunner()
    cli.console.width = 250
    if user is None:
        monkeypatch.delenv("USER", raising=False)
    else:
        monkeypatch.setenv("USER", user)
    r = runner.invoke(cli.app, ["submit", "echo", "--input", '{"x": 2}', "-c", str(lab)])
    assert r.exit_code == 0, r.output
    tid = r.output.strip().splitlines()[-1]
    r = runner.invoke(cli.app, ["tasks", "--json", "-c", str(lab)])
    assert r.exit_code == 0, r.output
    [row] = [json.loads(line) for line in r.output.splitlines() if tid in line]
    assert row["submitted_by"] == (user or "cli"), row


def test_the_submitter_survives_a_restart(tmp_path: Path):
    """Ownership is journaled with the task: after a restart a client still owns exactly its own work."""
    from ppu.orchestrator import Orchestrator
    from ppu.store import Store, sqlite_url

    cfg = lab_config(tmp_path, autonomy={"default": "manual"})
    key = "A" * 40
    url = sqlite_url(tmp_path / "roles.sqlite")

    async def first() -> str:
        store = Store(url)
        try:
            orch = Orchestrator(store, cfg.orchestrator)
            await orch.start()
            [tid] = orch.submit([TaskSpec(capability="echo")], actor="ada[AAAAAAAA]", key=key)
            return tid
        finally:
            store.close()

    async def second(tid: str) -> None:
        store = Store(url)
        try:
            orch = Orchestrator(store, cfg.orchestrator)
            await orch.start()
            live = orch.view.get_task(tid)
            assert live is not None and live.state.value in ("pending", "ready")  # live, not done
            assert live.submitter_key == key and live.submitted_by == "ada[AAAAAAAA]"
            authorise(Role.client, "cancel", live, key)
            with pytest.raises(NotAllowed):
                authorise(Role.client, "cancel", live, "B" * 40)
            [row] = store.list_tasks()
            assert row.submitter_key == key
        finally:
            store.close()

    run(second(run(first())))
