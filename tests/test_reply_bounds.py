"""No reply is larger than the orchestrator's max_message_bytes; long answers come in parts (user trial).

100 tasks with 500 kB records made ``client.wait(ids)`` and ``client.tasks()`` fail with "message of
50 MB is above the limit of 16 MiB": the orchestrator answered in one reply whatever its size. It now
answers with as many whole records as fit and a ``next`` cursor, and the clients ask again from
there (docs/protocol.md "Long answers"). A client takes replies up to the most any lab may set, so
a lab with a larger limit works with a client left at the defaults. ``tasks`` pages by key, not by
offset: a listing taken while tasks are submitted holds each task once and misses none.

Real sockets on loopback; what the server sent is read off its socket (a spy), never timed.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from store_backends import store_url_fixture  # noqa: F401  (store_url: SQLite and PostgreSQL)
from transport_helpers import lab_config, run

from ppu import errors
from ppu import protocol as p
from ppu.config import OrchestratorConfig
from ppu.models import Result, ResultStatus, Sample, Task, TaskState
from ppu.store import Rows, Store, sqlite_url
from ppu.transport import EmbeddedLab, LabThread, ops
from ppu.transport.client import PPUClient
from ppu.transport.server import OrchestratorServer

MiB = 1024 * 1024
ORCH = {"heartbeat_s": 0.1, "missed_heartbeats": 3, "backoff_base_s": 0.0, "restart_grace_s": 1.0}
ECHO_ONE_BY_ONE = [{"type": "echo", "name": "e", "duration_s": 0.0, "batch_size": 1}]
# 24 records of 800 kB: more than one reply of the 16 MiB a client used to take, and far more than 1 MiB
N_BIG, PAYLOAD = 24, 800_000


def big(i: int, size: int = PAYLOAD) -> dict[str, Any]:
    return {"capability": "echo", "inputs": {"x": i, "payload": chr(ord("a") + i % 26) * size}}


def spy(server: OrchestratorServer | None) -> list[bytes]:
    """Every message body the server sends from now on (its socket's sends, replies and assignments)."""
    assert server is not None and server._sock is not None
    bodies: list[bytes] = []
    sock = server._sock
    send = sock.send_nowait

    def recording(frames: list[Any], *args: Any, **kwargs: Any) -> Any:
        bodies.append(bytes(frames[2]))  # [identity, version, json, blobs...]
        return send(frames, *args, **kwargs)
    sock.send_nowait = recording  # type: ignore[method-assign]
    return bodies


def parts_of(bodies: list[bytes]) -> int:
    """How many replies said that the answer goes on (carried a next)."""
    return sum(1 for b in bodies if b.startswith(b'{"blobs":[],"type":"reply"') and b',"next":' in b)


def _check_big(tasks: list[Task], ids: list[str]) -> None:
    assert [t.id for t in tasks] == ids
    for i, t in enumerate(tasks):
        assert t.inputs["payload"] == big(i)["inputs"]["payload"], f"task {i} came back altered"


# ---- (a) records that together pass the limit come back whole ------------------------------------


def test_tasks_larger_together_than_a_reply_come_back_whole_through_wait_and_tasks(tmp_path: Path):
    lab = lab_config(tmp_path, backends=ECHO_ONE_BY_ONE, orchestrator={**ORCH, "max_message_bytes": MiB})
    with LabThread(lab) as lt, lt.client(timeout=30) as c:
        sent = spy(lt.embedded.server)
        ids = [tid for i in range(N_BIG) for tid in c.submit(big(i))]  # one task per request: each fits
        done = c.wait(ids, timeout=60)
        listed = c.tasks(limit=N_BIG + 10)
    _check_big(done, ids)
    assert all(t.state is TaskState.succeeded for t in done)
    _check_big(listed[::-1], ids)  # newest first, every one
    assert max(len(b) for b in sent) <= MiB  # never a reply (or anything else) over the lab's limit
    assert parts_of(sent) >= 2 * (N_BIG - 1)  # one 800 kB record a reply: wait and tasks both went on


def test_the_async_client_reads_a_long_answer_in_parts_too(tmp_path: Path):
    lab = lab_config(tmp_path, backends=ECHO_ONE_BY_ONE, orchestrator={**ORCH, "max_message_bytes": MiB})

    async def body() -> None:
        embedded = EmbeddedLab(lab, timeout=30)
        async with embedded as c:
            sent = spy(embedded.server)
            ids = [tid for i in range(6) for tid in await c.submit(big(i))]
            _check_big(await c.wait(ids, timeout=30), ids)
            _check_big((await c.tasks())[::-1], ids)
            # run() sends its submit and its wait together: a submit over the limit goes again in parts,
            # a wait's answer over it comes in parts
            ran = await c.run([big(i) for i in range(3)], timeout=30)
            assert [t.inputs["payload"] for t in ran] == [big(i)["inputs"]["payload"] for i in range(3)]
            assert max(len(b) for b in sent) <= MiB
    run(body(), 90)


# ---- (b) a client at the defaults, a lab with a larger limit ---------------------------------------


def test_a_client_at_the_default_limit_takes_what_a_lab_with_a_larger_limit_sends(tmp_path: Path):
    assert p.MAX_MESSAGE_BYTES == 16 * MiB  # the client below is built without any limit of its own
    lab = lab_config(tmp_path, backends=ECHO_ONE_BY_ONE, orchestrator={**ORCH, "max_message_bytes": 32 * MiB})
    with LabThread(lab) as lt, lt.client(timeout=30) as c:
        sent = spy(lt.embedded.server)
        ids = c.submit([big(i) for i in range(N_BIG)])  # 19 MB in one submit: this lab allows it
        done = c.wait(ids, timeout=60)
        listed = c.tasks()
    _check_big(done, ids)
    _check_big(listed[::-1], ids)
    assert max(len(b) for b in sent) > p.MAX_MESSAGE_BYTES  # the answers came whole, above the default
    assert max(len(b) for b in sent) <= 32 * MiB


def test_the_clients_read_replies_against_the_most_a_lab_may_set():
    le = {type(m).__name__: m for m in OrchestratorConfig.model_fields["max_message_bytes"].metadata}
    assert le["Le"].le == p.MAX_REPLY_BYTES
    le = {type(m).__name__: m for m in OrchestratorConfig.model_fields["max_blob_bytes"].metadata}
    assert le["Le"].le == p.MAX_REPLY_BLOB_BYTES


# ---- one record larger than a reply: a typed error, never a dropped message ---------------------------


def test_a_record_larger_than_any_reply_is_a_typed_error(tmp_path: Path):
    first = lab_config(tmp_path, backends=ECHO_ONE_BY_ONE, orchestrator={**ORCH, "max_message_bytes": MiB})
    with LabThread(first) as lt, lt.client(timeout=30) as c:
        small = c.submit({"capability": "echo", "inputs": {"x": 1}})
        [tid] = c.submit(big(0, 900_000))
        c.wait([*small, tid], timeout=30)
    # the lab file's limit lowered afterwards: the 900 kB task can no longer travel in one reply
    second = lab_config(tmp_path, backends=[], orchestrator={**ORCH, "max_message_bytes": 64 * 1024})
    with LabThread(second) as lt, lt.client(timeout=30) as c:
        sent = spy(lt.embedded.server)
        with pytest.raises(errors.PPUError) as e:
            c.task(tid)
        assert e.value.code == "reply_too_large" and "max_message_bytes" in str(e.value)
        with pytest.raises(errors.PPUError, match=f"task {tid}'s record is 9[0-9]{{5}} bytes") as e:
            c.wait([tid], timeout=5)
        assert type(e.value).__name__ == "ReplyTooLarge"
        with pytest.raises(errors.PPUError, match=f"task {tid}'s record"):
            c.tasks()
        [ok] = c.wait(small, timeout=5)  # the lab goes on answering
        assert ok.state is TaskState.succeeded
    assert max(len(b) for b in sent) <= 64 * 1024


# ---- every other answer that grows with stored data ---------------------------------------------------


def _prefill(store_path: Path) -> None:
    """Samples, one sample measured by 20 tasks with 2 kB outputs, as a lab's store would hold them."""
    store = Store(sqlite_url(store_path))
    store.write(Rows(results=[Store._result_row(Result(task_id=f"m{i}", attempt=1, status=ResultStatus.succeeded,
                                                       outputs={"pattern": str(i) * 2000}), 0.0)
                              for i in range(20)]))
    for i in range(30):
        store.put_sample(Sample(id=f"s{i:02d}", made_with={"recipe": "r" * 1500}))
    store.put_sample(Sample(id="measured", measurements=[f"m{i}" for i in range(20)]))
    store.close()


def test_every_answer_that_grows_with_stored_data_comes_in_parts_under_the_limit(tmp_path: Path):
    limit = 16 * 1024
    _prefill(tmp_path / "ppu.sqlite")
    lab = lab_config(tmp_path, backends=[], orchestrator={**ORCH, "max_message_bytes": limit},
                     autonomy={"default": "manual"})

    async def body() -> None:
        embedded = EmbeddedLab(lab, timeout=30)
        async with embedded as c:
            assert embedded.orch is not None
            sent = spy(embedded.server)
            waiting = []
            for k in range(4):  # 40 tasks waiting for approval, 1 kB of inputs each
                waiting += await c.submit([{"capability": "echo", "inputs": {"x": 10 * k + i, "payload": "w" * 1000}}
                                           for i in range(10)])
            rows = await c.approvals()
            assert [r["task_id"] for r in rows] == waiting and all(len(r["inputs"]["payload"]) == 1000 for r in rows)
            assert parts_of(sent) >= 2

            cancelled = await c.submit([{"capability": "echo", "inputs": {"x": i}} for i in range(20)])
            for i, tid in enumerate(cancelled):
                await c.cancel(tid, reason=f"{i:02d}" + "z" * 3000)
            del sent[:]
            audit = await c.audit()
            reasons = [a.detail["reason"][:2] for a in audit if a.action == "cancel"]
            assert reasons == [f"{i:02d}" for i in range(20)]  # oldest first, each once
            assert audit == sorted(audit, key=lambda a: a.at) and parts_of(sent) >= 2

            del sent[:]
            listed = await c.tasks()
            assert [t.id for t in listed] == (waiting + cancelled)[::-1] and parts_of(sent) >= 2

            for i in range(600):
                embedded.orch.busy.open("b", f"#{i}", float(i))
                embedded.orch.busy.close("b", f"#{i}", float(i) + 0.5)
            del sent[:]
            busy = await c.busy()
            assert [iv["batch"] for iv in busy] == [f"#{i}" for i in range(600)] and parts_of(sent) >= 2

            del sent[:]
            samples = await c.samples()
            assert [s.id for s in samples if s.id != "measured"] == [f"s{i:02d}" for i in range(30)]
            assert parts_of(sent) >= 2

            del sent[:]
            detail = await c.sample("measured")
            assert detail["sample"]["id"] == "measured" and detail["made_by"] is None
            assert [m["outputs"]["pattern"] for m in detail["measurements"]] == [str(i) * 2000 for i in range(20)]
            assert parts_of(sent) >= 2
            assert max(len(b) for b in sent) <= limit
    run(body(), 90)


# ---- (c) keyset paging ---------------------------------------------------------------------------------


def test_a_listing_taken_while_tasks_are_submitted_holds_each_task_once_and_misses_none(tmp_path: Path):
    """Between any two pages of the listing, 100 more tasks are submitted (deterministically)."""
    lab = lab_config(tmp_path, backends=[])
    with LabThread(lab) as lt, lt.client(timeout=30) as lister, lt.client(timeout=30) as submitter:
        before = submitter.submit([{"capability": "echo", "inputs": {"x": i}} for i in range(2500)])
        pages = 0

        def carry(call: ops.Call) -> Any:
            nonlocal pages
            if isinstance(call.msg, p.Tasks):
                pages += 1
                if pages > 1:
                    submitter.submit([{"capability": "echo", "inputs": {"x": -i}} for i in range(100)])
            return lister.request(call.msg, call.timeout, whole=call.whole)

        listed = ops.drive(ops.tasks(None, None, None, 1_000_000), carry)
    ids = [t.id for t in listed]
    assert pages >= 3
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} tasks listed twice"
    assert set(before) <= set(ids)
    seqs = [t.seq for t in listed]
    assert seqs == sorted(seqs, reverse=True)


def test_a_listing_while_another_thread_keeps_submitting(tmp_path: Path):
    lab = lab_config(tmp_path, backends=[], orchestrator={**ORCH, "max_message_bytes": 64 * 1024})
    stop = threading.Event()
    with LabThread(lab) as lt, lt.client(timeout=30) as lister:
        before = [tid for k in range(15) for tid in
                  lister.submit([{"capability": "echo", "inputs": {"x": 100 * k + i}} for i in range(100)])]

        def keep_submitting() -> None:
            with lt.client(timeout=30) as c:
                while not stop.is_set():
                    c.submit([{"capability": "echo", "inputs": {"x": -i}} for i in range(20)])
        t = threading.Thread(target=keep_submitting)
        t.start()
        try:
            listed = lister.tasks(limit=1_000_000)
            again = lister.tasks(state="ready", limit=1_000_000)
        finally:
            stop.set()
            t.join(30)
    for got in (listed, again):
        ids = [t.id for t in got]
        assert len(ids) == len(set(ids)) and set(before) <= set(ids)


def _row(tid: str, seq: int, state: str = "pending", campaign: str | None = None) -> dict[str, Any]:
    body = Task(id=tid, capability="echo", action="repeatable", seq=seq, campaign=campaign).model_dump_json()
    return {"id": tid, "seq": seq, "state": state, "capability": "echo", "campaign": campaign, "updated_at": 0.0,
            "body": body}


def test_the_store_pages_by_key_through_an_index_on_either_database(store_url: str):
    # A store made before the indexes: its old ones are replaced when it opens.
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE tasks (id VARCHAR(128) PRIMARY KEY, seq BIGINT NOT NULL, state VARCHAR(16) "
                             "NOT NULL, capability VARCHAR(128) NOT NULL, campaign VARCHAR(128), updated_at FLOAT "
                             "NOT NULL, body TEXT NOT NULL)"))
        conn.execute(sa.text("CREATE INDEX ix_tasks_state ON tasks (state)"))
        conn.execute(sa.text("CREATE INDEX ix_tasks_campaign ON tasks (campaign)"))
    engine.dispose()
    store = Store(store_url)
    try:
        indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(store.engine).get_indexes("tasks")}
        assert indexes == {"ix_tasks_seq_id": ["seq", "id"], "ix_tasks_state_seq": ["state", "seq", "id"],
                           "ix_tasks_campaign_seq": ["campaign", "seq", "id"]}
        # Stores from before submission numbers rose across restarts repeat some: the id breaks the tie.
        rows = [_row(f"t{i:02d}", i // 3, "pending" if i % 2 else "succeeded", "c" if i % 4 else None)
                for i in range(30)]
        random.Random(1).shuffle(rows)
        store.write(Rows(tasks=rows))
        want = sorted(((r["seq"], r["id"]) for r in rows), reverse=True)
        for filters in ({}, {"state": "pending"}, {"campaign": "c"}):
            got: list[tuple[int, str]] = []
            before = None
            while True:
                page_rows = store.list_task_rows(**filters, limit=4, before=before)  # type: ignore[arg-type]
                got += [(seq, tid) for seq, tid, _, _ in page_rows]
                if len(page_rows) < 4:
                    break
                before = got[-1]
            match = {r["id"] for r in rows if all(r[k] == v for k, v in filters.items())}
            assert got == [k for k in want if k[1] in match], filters
        with store.engine.connect() as conn:
            for where, index in (("", "ix_tasks_seq_id"), ("state = 'pending' AND ", "ix_tasks_state_seq"),
                                 ("campaign = 'c' AND ", "ix_tasks_campaign_seq")):
                sql = (f"SELECT seq, id, body FROM tasks WHERE {where}seq <= 5 AND (seq < 5 OR id < 't20') "
                       "ORDER BY seq DESC, id DESC LIMIT 4")
                if store.engine.dialect.name == "sqlite":
                    plan = " ".join(str(r) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
                    assert index in plan and "TEMP B-TREE" not in plan, plan
                else:  # a table this small is read whole by choice: ask whether the index serves the query
                    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                    conn.exec_driver_sql("SET LOCAL enable_sort = off")
                    plan = " ".join(str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + sql))
                    assert f"Index Scan Backward using {index}" in plan and "Sort" not in plan, plan
    finally:
        store.close()


# ---- (d) a task too large on its own, and a submission too large together --------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_too_large_on_its_own_is_told_so_not_to_send_fewer(tmp_path: Path, kind: str):
    lab = lab_config(tmp_path, backends=[], orchestrator={**ORCH, "max_message_bytes": 256 * 1024})
    specs = [{"capability": "echo", "inputs": {"x": 0}}, {"capability": "echo", "inputs": {"x": 1}}, big(2, 500_000),
             {"capability": "echo", "inputs": {"x": 3}}]

    async def body() -> None:
        embedded = EmbeddedLab(lab, timeout=10)
        async with embedded as c:
            with pytest.raises(p.ProtocolError) as e:
                if kind == "sync":
                    def go() -> None:
                        with PPUClient(embedded.address, timeout=10) as sc:
                            sc.submit(specs)
                    await asyncio.to_thread(go)
                else:
                    await c.submit(specs)
            err = e.value
            text = str(err)
            assert "task 2 of the submission (echo) is too large to send on its own" in text, text
            assert "262144 bytes (orchestrator.max_message_bytes)" in text
            assert err.field == "tasks.2" and "columnar block" in (err.hint or "")
            assert "fewer" not in text
            assert len(err.data["accepted"]) == 2  # the two before it went in; it and the one after did not
            assert [t.inputs["x"] for t in await c.tasks()] == [1, 0]
    run(body(), 60)


def test_the_door_says_both_ways_out_of_an_oversize_message():
    """The door does not parse a body over the limit, so its own words cover a submit of many tasks and
    of one (the clients above say which it was)."""
    frames = [p.PROTOCOL_VERSION, json.dumps({"type": "submit", "req": "r", "tasks": [big(0, 2000)]}).encode()]
    with pytest.raises(p.ProtocolError) as e:
        p.decode(frames, max_bytes=1024)
    assert "a single task this large cannot travel" in (e.value.hint or "")
    assert "orchestrator.max_message_bytes" in str(e.value)


def test_a_submission_too_large_together_is_split_to_fit(tmp_path: Path):
    lab = lab_config(tmp_path, backends=[], orchestrator={**ORCH, "max_message_bytes": MiB})
    with LabThread(lab) as lt, lt.client(timeout=30) as c:
        sent = spy(lt.embedded.server)
        ids = c.submit([big(i, 300_000) for i in range(7)])  # 2.1 MB: more than one message holds
        listed = c.tasks()
    assert len(ids) == 7 and [t.id for t in listed] == ids[::-1]
    assert [t.inputs["x"] for t in listed] == list(range(6, -1, -1))
    assert max(len(b) for b in sent) <= MiB


# ---- the rules of a reply in parts, without sockets --------------------------------------------------


def test_a_reply_in_parts_holds_whole_records_within_the_limit_and_says_where_to_go_on():
    from ppu.transport.paging import page

    rng = random.Random(7)
    for case in range(400):
        limit = rng.choice([1024, 2000, 5000, 20_000])
        text = ["\u00fc" * rng.randrange(300) if i % 3 else "a" * rng.randrange(400) for i in range(rng.randrange(40))]
        items = [json.dumps({"id": f"t{i}", "x": x}, ensure_ascii=False) for i, x in enumerate(text)]
        more = rng.random() < 0.3 and bool(items)
        try:
            reply = page("r1", items, limit, lambda k: f"{k}:t{k}", lambda k: f"item {k}", more=more)
        except p.ReplyTooLarge as exc:
            assert len(items[0].encode()) + 100 > limit, case
            assert "item 0" in str(exc)
            continue
        body = reply.body()
        assert len(body) <= limit, case
        decoded = p.decode([p.PROTOCOL_VERSION, body])
        assert isinstance(decoded, p.Reply)
        k = len(decoded.data)
        assert decoded.data == [json.loads(i) for i in items[:k]] and (k >= 1 or not items)
        assert decoded.next == (f"{k}:t{k}" if (k < len(items) or more) else None), case


def test_a_whole_reply_leaves_next_out_and_a_bad_cursor_is_refused(tmp_path: Path):
    assert b"next" not in p.encode(p.Reply(req="r", data=[1]))[1]  # a client older than next decodes it
    assert json.loads(p.encode(p.Reply(req="r", data=[1], next="3"))[1])["next"] == "3"
    lab = lab_config(tmp_path, backends=[])
    with LabThread(lab) as lt, lt.client(timeout=10) as c:
        [tid] = c.submit({"capability": "echo", "inputs": {"x": 1}})
        for msg in (p.Tasks(cursor="no-number"), p.Wait(task_ids=[tid], cursor="1"), p.Audit(cursor="x"),
                    p.BusyLog(cursor="-"), p.Samples(cursor="nan:x")):
            with pytest.raises(errors.ValidationFailed) as e:
                c.request(msg)
            assert e.value.field == "cursor", msg


def test_an_assignment_of_a_batch_larger_than_the_default_limit_reaches_the_worker(tmp_path: Path):
    """24 tasks of 800 kB in one batch, in a lab that allows 64 MiB: a 19 MB assignment. The worker decoded it
    against the default 16 MiB, refused it as malformed, and the batch never ran."""
    lab = lab_config(tmp_path, backends=[{"type": "echo", "name": "e", "duration_s": 0.0, "batch_size": N_BIG,
                                          "batch_wait_s": 0.0}],
                     orchestrator={**ORCH, "heartbeat_s": 2.0,  # 19 MB through one loop takes longer than 0.3 s
                                   "max_message_bytes": 64 * 1024 * 1024})
    with LabThread(lab) as lt, lt.client(timeout=30) as c:
        c.stop("e")  # held: the tasks queue, and resuming assigns them as one batch
        ids = c.submit([big(i) for i in range(N_BIG)])  # split by the client into requests that fit
        sent = spy(lt.embedded.server)
        c.resume("e")
        done = c.wait(ids, timeout=60)
    assert all(t.state is TaskState.succeeded for t in done) and all(t.attempts == 1 for t in done)
    _check_big(done, ids)
    [assign] = [b for b in sent if b'"type":"assign"' in b[:200]]
    assert len(assign) > p.MAX_MESSAGE_BYTES  # one assignment, over the default limit


def test_a_batch_is_cut_where_its_assignment_would_pass_the_labs_limit(tmp_path: Path):
    """At the default 16 MiB, the same 24 tasks of 800 kB leave as two or more batches, each assignment within
    the limit; every task runs once."""
    lab = lab_config(tmp_path, backends=[{"type": "echo", "name": "e", "duration_s": 0.0, "batch_size": N_BIG,
                                          "batch_wait_s": 0.0}],
                     orchestrator={**ORCH, "heartbeat_s": 2.0})
    with LabThread(lab) as lt, lt.client(timeout=30) as c:
        c.stop("e")
        ids = c.submit([big(i) for i in range(N_BIG)])
        sent = spy(lt.embedded.server)
        c.resume("e")
        done = c.wait(ids, timeout=60)
    assert all(t.state is TaskState.succeeded and t.attempts == 1 for t in done)
    _check_big(done, ids)
    assigns = [b for b in sent if b'"type":"assign"' in b[:200]]
    assert len(assigns) >= 2 and all(len(b) <= p.MAX_MESSAGE_BYTES for b in assigns)
    assert sum(b.count(b'"payload"') for b in assigns) == len(done)


def test_a_registration_carries_only_the_unacknowledged_results_that_fit():
    """A worker that reconnects with 19 MB of unacknowledged results sent them all in its registration,
    which the orchestrator refused as over its limit, again at every try. Now the registration carries
    what fits; the others stay held (in_flight) and follow as re-sent results."""
    from ppu.backends.echo import EchoBackend, EchoConfig
    from ppu.host import BackendHost
    from ppu.transport.worker import RESULTS_MESSAGE_BYTES, _pending_within

    async def report(kind: str, payload: dict[str, Any]) -> None:
        pass

    host = BackendHost(EchoBackend(EchoConfig(type="echo", name="e")), report)
    for i in range(N_BIG):
        r = Result(task_id=f"t-{i}", attempt=1, status=ResultStatus.succeeded, outputs=big(i)["inputs"])
        host.unacked[(r.task_id, r.attempt)] = r
    pending = _pending_within({"e": host}, RESULTS_MESSAGE_BYTES)
    carried = pending.get("e", [])
    assert 0 < len(carried) < N_BIG and sum(len(r.model_dump_json()) for r in carried) <= RESULTS_MESSAGE_BYTES
    assert set(host.in_flight()) == {f"t-{i}" for i in range(N_BIG)}  # all still held, so none is taken for lost


def test_run_of_one_task_too_large_on_its_own_names_it_as_submit_does(tmp_path: Path):
    """AsyncPPUClient.run sends its submit itself (its wait right behind): a lone task over the limit got
    the door's words for any message; it gets submit's, which name the task."""
    lab = lab_config(tmp_path, backends=[], orchestrator={**ORCH, "max_message_bytes": 256 * 1024})

    async def body() -> None:
        async with EmbeddedLab(lab, timeout=10) as c:
            with pytest.raises(p.ProtocolError) as e:
                await c.run([big(0, 500_000)], timeout=10)
            assert "task 0 of the submission (echo) is too large to send on its own" in str(e.value), e.value
            assert e.value.field == "tasks.0" and await c.tasks() == []
    run(body(), 60)


def test_an_oversize_refusal_is_told_by_its_reason_not_its_words():
    """The clients halve a submit the door refused as over the limit: they tell that refusal by the error's
    ``reason`` on the wire, not by the start of its message (which any rewording would break)."""
    from ppu.transport.client import error_from

    wire = p.Error.of(p.oversize(20_000_000, 16_777_216), "r1")
    assert wire.reason == p.OVERSIZE
    back = error_from(p.decode(p.encode(wire)))
    assert p.is_oversize(back) and back.code == "protocol_error"
    worded_alike = p.Error(code="protocol_error", message="a message of 3 bytes is not json", reason=p.BAD_JSON)
    assert not p.is_oversize(error_from(worded_alike))
    assert p.Error.of(p.NotAnswering("x")).reason is None  # other errors carry none
