"""The durable store: a journal of every state change, result, sample change and audit entry.

One schema (SQLAlchemy Core) on SQLite in WAL mode (the embedded default, one file under the run
folder) and on PostgreSQL (``postgresql+psycopg://...``) where several users share an orchestrator.
The orchestrator writes a scheduler step here in one transaction *before* it carries out the
step's instructions or acknowledges anything, so a SIGKILL at any point loses nothing that was
acknowledged. On start, :meth:`Store.load` gives the scheduler what it needs to rebuild itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ppu.errors import StoreError
from ppu.events import Step
from ppu.models import TERMINAL_STATES, AuditEntry, Result, Sample, Task, TaskState

metadata = sa.MetaData()

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("capability", sa.String(128), nullable=False),
    sa.Column("campaign", sa.String(128), index=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)
journal = sa.Table(
    "journal", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("task_id", sa.String(128), nullable=False, index=True),
    sa.Column("src", sa.String(16)),
    sa.Column("dst", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
)
results = sa.Table(
    "results", metadata,
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("recorded_at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)
samples = sa.Table(
    "samples", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("campaign", sa.String(128), index=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)
audit = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(256)),
    sa.Column("detail", sa.Text, nullable=False),
)
documents = sa.Table(
    "documents", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_uid", sa.String(64), nullable=False, index=True),
    sa.Column("task_id", sa.String(128), index=True),
    sa.Column("name", sa.String(32), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
)
meta = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit survives power loss, not only a killed process. The orchestrator groups
    # a burst of events into one transaction, so the fsync is paid per burst, not per task.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    def __init__(self, url: str):
        self.url = url
        try:
            if url.startswith("sqlite"):
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.engine: Engine = sa.create_engine(url, connect_args={"check_same_thread": False})
                sa.event.listen(self.engine, "connect", _on_sqlite_connect)
            else:
                self.engine = sa.create_engine(url, pool_pre_ping=True)
            metadata.create_all(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot open the store at {url}: {exc}",
                             hint="check the store URL in the lab config (store: ...)") from exc
        self._insert = self._dialect_insert()
        # Built once: SQLAlchemy caches the compiled form, so a write costs a bind, not a compile.
        up = self._insert(tasks)
        self._upsert_task = up.on_conflict_do_update(
            index_elements=[tasks.c.id],
            set_={"state": up.excluded.state, "updated_at": up.excluded.updated_at, "body": up.excluded.body})
        self._insert_result = self._insert(results).on_conflict_do_nothing(
            index_elements=[results.c.task_id, results.c.attempt])

    def _dialect_insert(self) -> Any:
        # Both dialects have INSERT ... ON CONFLICT, with the same API.
        name = self.engine.dialect.name
        if name == "sqlite":
            from sqlalchemy.dialects import sqlite
            return sqlite.insert
        if name == "postgresql":
            from sqlalchemy.dialects import postgresql
            return postgresql.insert
        raise StoreError(f"unsupported database {name!r}", hint="use sqlite:/// or postgresql+psycopg://")

    def close(self) -> None:
        self.engine.dispose()

    # ---- writes ----------------------------------------------------------------------------

    def apply(self, steps: Iterable[Step], audits: Iterable[AuditEntry] = (), samples_: Iterable[Sample] = ()) -> None:
        """Journal scheduler steps, audit entries and sample changes in one transaction.

        Rows of all the steps go out as one executemany per table (a burst of a thousand steps is
        three statements, not thousands); a task changed by several steps is written once, as the
        last step left it. Journal rows keep their order.
        """
        now = time.time()
        moves: list[dict[str, Any]] = []
        results_: list[dict[str, Any]] = []
        task_rows: dict[str, dict[str, Any]] = {}
        for step in steps:
            moves += [{"at": tr.at, "task_id": tr.task_id, "src": tr.src.value if tr.src else None,
                       "dst": tr.dst.value, "reason": tr.reason} for tr in step.transitions]
            results_ += [self._result_row(r, now) for r in step.results]
            for t in step.tasks():
                task_rows[t.id] = {"id": t.id, "seq": t.seq, "state": t.state.value, "capability": t.capability,
                                   "campaign": t.campaign, "updated_at": now, "body": t.model_dump_json()}
        with self.engine.begin() as conn:
            if moves:
                conn.execute(journal.insert(), moves)
            if results_:
                # Recorded exactly once per (task, attempt): a re-sent result is a no-op.
                conn.execute(self._insert_result, results_)
            if task_rows:
                conn.execute(self._upsert_task, list(task_rows.values()))  # executemany, one cached statement
            for entry in audits:
                self._write_audit(conn, entry)
            for s in samples_:
                self._write_sample(conn, s)

    @staticmethod
    def _result_row(r: Result, now: float) -> dict[str, Any]:
        return {"task_id": r.task_id, "attempt": r.attempt, "status": r.status.value, "recorded_at": now,
                "body": r.model_dump_json()}

    def _write_audit(self, conn: Connection, e: AuditEntry) -> None:
        conn.execute(audit.insert().values(at=e.at, actor=e.actor, action=e.action, target=e.target,
                                           detail=json.dumps(e.detail, default=str)))

    def add_audit(self, entry: AuditEntry) -> None:
        with self.engine.begin() as conn:
            self._write_audit(conn, entry)

    def put_sample(self, s: Sample) -> None:
        with self.engine.begin() as conn:
            self._write_sample(conn, s)

    def _write_sample(self, conn: Connection, s: Sample) -> None:
        stmt = self._insert(samples).values(id=s.id, campaign=s.campaign, state=s.state.value,
                                            updated_at=time.time(), body=s.model_dump_json())
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[samples.c.id],
            set_={"state": stmt.excluded.state, "updated_at": stmt.excluded.updated_at,
                  "body": stmt.excluded.body, "campaign": stmt.excluded.campaign}))

    def add_documents(self, run_uid: str, task_id: str | None, docs: list[tuple[str, dict[str, Any]]]) -> None:
        if not docs:
            return
        with self.engine.begin() as conn:
            conn.execute(documents.insert(), [
                {"run_uid": run_uid, "task_id": task_id, "name": name, "doc": json.dumps(doc, default=str)}
                for name, doc in docs
            ])

    def set_meta(self, key: str, value: Any) -> None:
        with self.engine.begin() as conn:
            stmt = self._insert(meta).values(key=key, value=json.dumps(value))
            conn.execute(stmt.on_conflict_do_update(index_elements=[meta.c.key],
                                                    set_={"value": stmt.excluded.value}))

    # ---- reads -----------------------------------------------------------------------------

    def load(self) -> tuple[list[Task], list[tuple[str, TaskState]]]:
        """Everything a scheduler needs after a restart: live tasks in full, ended ones by state."""
        terminal = [s.value for s in TERMINAL_STATES]
        with self.engine.connect() as conn:
            live = [Task.model_validate_json(r.body) for r in conn.execute(
                sa.select(tasks.c.body).where(tasks.c.state.not_in(terminal)).order_by(tasks.c.seq))]
            done = [(r.id, TaskState(r.state)) for r in conn.execute(
                sa.select(tasks.c.id, tasks.c.state).where(tasks.c.state.in_(terminal)))]
        return live, done

    def get_task(self, task_id: str) -> Task | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tasks.c.body).where(tasks.c.id == task_id)).first()
        return Task.model_validate_json(row.body) if row else None

    def list_tasks(self, state: str | None = None, campaign: str | None = None, capability: str | None = None,
                   limit: int = 1000) -> list[Task]:
        q = sa.select(tasks.c.body).order_by(tasks.c.seq.desc()).limit(limit)
        if state:
            q = q.where(tasks.c.state == state)
        if campaign:
            q = q.where(tasks.c.campaign == campaign)
        if capability:
            q = q.where(tasks.c.capability == capability)
        with self.engine.connect() as conn:
            return [Task.model_validate_json(r.body) for r in conn.execute(q)]

    def count_tasks(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tasks.c.state, sa.func.count()).group_by(tasks.c.state))
            return {r[0]: r[1] for r in rows}

    def results_for(self, task_id: str) -> list[Result]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(results.c.body).where(results.c.task_id == task_id)
                                .order_by(results.c.attempt))
            return [Result.model_validate_json(r.body) for r in rows]

    def final_result(self, task_id: str) -> Result | None:
        """The result that settled the task: the succeeded one if any, else the last attempt's."""
        rs = self.results_for(task_id)
        ok = [r for r in rs if r.status.value == "succeeded"]
        chosen = ok or rs
        return chosen[-1] if chosen else None

    def journal_for(self, task_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(journal).where(journal.c.task_id == task_id).order_by(journal.c.id))
            return [dict(r._mapping) for r in rows]

    def iter_journal(self, since_id: int = 0) -> Iterator[dict[str, Any]]:
        with self.engine.connect() as conn:
            for r in conn.execute(sa.select(journal).where(journal.c.id > since_id).order_by(journal.c.id)):
                yield dict(r._mapping)

    def get_sample(self, sample_id: str) -> Sample | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(samples.c.body).where(samples.c.id == sample_id)).first()
        return Sample.model_validate_json(row.body) if row else None

    def list_samples(self, campaign: str | None = None) -> list[Sample]:
        q = sa.select(samples.c.body).order_by(samples.c.updated_at)
        if campaign:
            q = q.where(samples.c.campaign == campaign)
        with self.engine.connect() as conn:
            return [Sample.model_validate_json(r.body) for r in conn.execute(q)]

    def audit_entries(self, since: float = 0.0) -> list[AuditEntry]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit).where(audit.c.at >= since).order_by(audit.c.id))
            return [AuditEntry(at=r.at, actor=r.actor, action=r.action, target=r.target,
                               detail=json.loads(r.detail)) for r in rows]

    def documents_for(self, run_uid: str) -> list[tuple[str, dict[str, Any]]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(documents.c.name, documents.c.doc)
                                .where(documents.c.run_uid == run_uid).order_by(documents.c.id))
            return [(r.name, json.loads(r.doc)) for r in rows]

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).first()
        return json.loads(row.value) if row else default
