"""The durable store: a journal of every state change, result, sample change and audit entry.

One schema (SQLAlchemy Core) on SQLite in WAL mode (the embedded default, one file under the run
folder) and on PostgreSQL (``postgresql+psycopg://...``) where several users share an orchestrator.
The orchestrator writes a scheduler step here in one transaction *before* it carries out the
step's instructions or acknowledges anything, so a SIGKILL at any point loses nothing that was
acknowledged. On start, :meth:`Store.load` gives the scheduler what it needs to rebuild itself.

One writer: the orchestrator holds the store's writer lease (:meth:`Store.acquire_writer`) for as
long as it runs. On SQLite it is an exclusive ``flock`` on ``<file>.lock``, on PostgreSQL a session
advisory lock; the operating system or the server drops either when the process dies, even by
SIGKILL, so a restart never waits for an expiry. A second orchestrator refuses to start.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ppu.errors import StoreError, StoreHeld
from ppu.events import Step
from ppu.models import TERMINAL_STATES, AuditEntry, Result, Sample, Task, TaskState

metadata = sa.MetaData()

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("capability", sa.String(128), nullable=False),
    sa.Column("campaign", sa.String(128)),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    # Listings go newest first and page by key (list_task_rows: ORDER BY seq DESC, id DESC, below a
    # (seq, id)); with a state or a campaign the index leads with it, so that a page reads only its rows.
    sa.Index("ix_tasks_seq_id", "seq", "id"),
    sa.Index("ix_tasks_state_seq", "state", "seq", "id"),
    sa.Index("ix_tasks_campaign_seq", "campaign", "seq", "id"),
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
    sa.Index("ix_audit_action_target", "action", "target"),  # the reason each task waiting for approval waits
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


# create_all makes a table's indexes only with the table: a store made before these indexes gets them
# when it opens, and loses the ones they replace (one index per filter keeps each write as cheap as before).
_REPLACED_INDEXES = ("ix_tasks_state", "ix_tasks_campaign")


def _migrate_indexes(engine: Engine) -> None:
    with engine.begin() as conn:
        have = {ix["name"] for table in (tasks, audit) for ix in sa.inspect(conn).get_indexes(table.name)}
        for ix in (*tasks.indexes, *audit.indexes):
            if ix.name not in have:
                conn.execute(sa.schema.CreateIndex(ix, if_not_exists=True))
        old = [name for name in _REPLACED_INDEXES if name in have]
        if old and conn.dialect.name == "postgresql":  # the store's own schema, never another's on the path
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar()
            old = [f"{conn.dialect.identifier_preparer.quote_schema(str(schema))}.{name}" for name in old]
        for name in old:
            conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))


_HELD_HINT = ("one orchestrator writes a store at a time: talk to the running one (ppu ... --connect ADDRESS), "
              "or stop it first")


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


@dataclass
class Rows:
    """One transaction's rows, built on the caller's thread (a snapshot), written on any thread."""

    moves: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.moves or self.results or self.tasks or self.audits or self.samples)


WRITER_KEY = "writer"  # meta row: who holds the writer lease (pid, host, address), for messages


# What a commit survives (the lab file's store.durability, see ppu.config.StoreConfig):
# power:   synchronous=FULL, every commit fsyncs the WAL: a power cut or an OS crash loses nothing.
#          The orchestrator groups a burst of events into one transaction, so the fsync is paid per
#          burst, not per task.
# process: synchronous=NORMAL, a commit reaches the operating system (the WAL file) but is fsynced
#          only at checkpoints: any process may die, SIGKILL included, and nothing committed is lost
#          (the OS writes its page cache out); a power cut or an OS crash may lose the last commits.
SQLITE_SYNCHRONOUS = {"power": "FULL", "process": "NORMAL"}


def _sqlite_pragmas(synchronous: str) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        if synchronous == SQLITE_SYNCHRONOUS["process"]:
            # A checkpoint fsyncs: never inside a commit (the orchestrator commits on its loop in this
            # mode); the orchestrator runs Store.checkpoint on its journal thread instead.
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
    return on_connect


def _positional(order: tuple[str, ...], rows: list[dict[str, Any]]) -> list[Any]:
    """Each row's values in ``order``, as a driver's positional parameters (one C call per row)."""
    get = operator.itemgetter(*order)
    return list(map(get, rows)) if len(order) > 1 else [(get(r),) for r in rows]


class Store:
    def __init__(self, url: str, durability: str = "power", field: str = "store.url"):
        """``field``: the lab-file field the URL comes from (store.url, or run_dir where the store lies
        under it: LabConfig.store_field), which an error opening it names."""
        self.url = url
        if durability not in SQLITE_SYNCHRONOUS:
            raise StoreError(f"unknown store durability {durability!r}", field="store.durability",
                             hint="use power (the default) or process")
        if durability != "power" and not url.startswith("sqlite"):
            raise StoreError(f"store durability {durability!r} applies to SQLite only", field="store.durability",
                             hint="on PostgreSQL leave it at power and set synchronous_commit on the server")
        self.durability = durability
        try:
            if url.startswith("sqlite"):
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.engine: Engine = sa.create_engine(url, connect_args={"check_same_thread": False})
                sa.event.listen(self.engine, "connect", _sqlite_pragmas(SQLITE_SYNCHRONOUS[durability]))
            else:
                self.engine = sa.create_engine(url, pool_pre_ping=True)
            metadata.create_all(self.engine)
            _migrate_indexes(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot open the store at {url}: {exc}", field=field,
                             hint="check the store URL in the lab config (store: ...)"
                                  + (" and that its folder is writable" if url.startswith("sqlite") else
                                     " and that the database server runs")) from exc
        except OSError as exc:  # the store's folder cannot be made (run_dir on a read-only or missing path)
            raise StoreError(f"cannot create the store's folder for {url}: {exc.strerror} ({exc.filename})",
                             field=field, hint="point run_dir (or store.url) at a folder you can write") from None
        except ImportError as exc:  # the database driver is an optional extra
            raise StoreError(f"the store {url} needs a database driver that is not installed ({exc.name})",
                             field="store", hint="pip install 'ppu[postgres]' for postgresql+psycopg:// "
                                                 "(or use the default SQLite store)") from None
        self._insert = self._dialect_insert()
        # Built once: SQLAlchemy caches the compiled form, so a write costs a bind, not a compile.
        up = self._insert(tasks)
        self._upsert_task = up.on_conflict_do_update(
            index_elements=[tasks.c.id],
            set_={"state": up.excluded.state, "updated_at": up.excluded.updated_at, "body": up.excluded.body})
        self._insert_result = self._insert(results).on_conflict_do_nothing(
            index_elements=[results.c.task_id, results.c.attempt])
        ups = self._insert(samples)
        self._upsert_sample = ups.on_conflict_do_update(
            index_elements=[samples.c.id],
            set_={"state": ups.excluded.state, "updated_at": ups.excluded.updated_at,
                  "body": ups.excluded.body, "campaign": ups.excluded.campaign})
        # The ON CONFLICT statements have no SQLAlchemy cache key: executed as they are, each write would
        # compile them again (about half a millisecond). Compiled once here, run as driver SQL.
        self._upsert_task_sql = self._compiled(self._upsert_task, [c.name for c in tasks.c])
        self._insert_result_sql = self._compiled(self._insert_result, [c.name for c in results.c])
        self._upsert_sample_sql = self._compiled(self._upsert_sample, [c.name for c in samples.c])
        self._journal_sql = self._compiled(journal.insert(), ["at", "task_id", "src", "dst", "reason"])
        self._audit_sql = self._compiled(audit.insert(), ["at", "actor", "action", "target", "detail"])
        # SQLite: write() runs on one dedicated driver connection (a commit then costs what SQLite
        # costs, not a pool checkout and SQLAlchemy's bookkeeping); the lock keeps writers in turn.
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._writer_conn: Any = None
        self._writer_lock = threading.Lock()
        self._reader_conn: Any = None  # SQLite: task_states' own driver connection (a lookup per submission)
        self._reader_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_conn: Connection | None = None
        self.writer_owner: str | None = None

    def _compiled(self, stmt: Any, keys: list[str]) -> tuple[str, tuple[str, ...] | None]:
        """(SQL, parameter order) of a statement for this database's driver; order None: named parameters."""
        c = stmt.compile(dialect=self.engine.dialect, column_keys=keys)
        return str(c), (tuple(c.positiontup) if c.positional and c.positiontup else None)

    @staticmethod
    def _run(conn: Connection, compiled: tuple[str, tuple[str, ...] | None], rows: list[dict[str, Any]]) -> None:
        sql, order = compiled
        conn.exec_driver_sql(sql, _positional(order, rows) if order else rows)

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
        self.release_writer()
        with self._writer_lock:
            if self._writer_conn is not None:
                self._writer_conn.close()
                self._writer_conn = None
        with self._reader_lock:
            if self._reader_conn is not None:
                self._reader_conn.close()
                self._reader_conn = None
        self.engine.dispose()

    # ---- the single-writer lease -------------------------------------------------------------

    def _sqlite_file(self) -> str | None:
        if self.engine.dialect.name != "sqlite":
            return None
        path = self.url.split("///", 1)[-1] if "///" in self.url else ""
        return path if path and path != ":memory:" else None

    def acquire_writer(self, owner: str, address: str = "") -> None:
        """Become the store's one writer, or raise :class:`StoreHeld` naming who is."""
        if self.writer_owner is not None:
            if self.writer_owner == owner:
                return
            raise StoreHeld(self._held_message(), hint=_HELD_HINT)
        path = self._sqlite_file()
        try:
            if path is not None:
                import fcntl

                fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise StoreHeld(self._held_message(), hint=_HELD_HINT) from None
                self._lock_fd = fd
            elif self.engine.dialect.name == "postgresql":
                conn = self.engine.connect()
                got = conn.execute(sa.text(
                    "SELECT pg_try_advisory_lock(hashtext('ppu-writer:' || current_schema()))")).scalar()
                conn.commit()  # a session lock: it outlives the transaction, ends with the connection
                if not got:
                    conn.close()
                    raise StoreHeld(self._held_message(), hint=_HELD_HINT)
                self._lock_conn = conn
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot take the writer lease of {self.url}: {exc}") from exc
        except OSError as exc:  # the lock file beside the database cannot be made
            raise StoreError(f"cannot take the writer lease of {self.url}: {exc.strerror} ({exc.filename})",
                             field="run_dir", hint="the store's folder must be writable") from None
        self.writer_owner = owner
        self.announce_writer(address)

    def announce_writer(self, address: str) -> None:
        """Record where the writer serves, so that a refused second writer can say where to go."""
        if self.writer_owner is not None:
            self.set_meta(WRITER_KEY, {"owner": self.writer_owner, "pid": os.getpid(), "host": socket.gethostname(),
                                       "address": address, "since": time.time()})

    def release_writer(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            try:
                # Unlocked before this returns: the server ends a closed session's locks a moment
                # later, and a second orchestrator started right after must find the lease free.
                conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext('ppu-writer:' || current_schema()))"))
                conn.commit()
            except sa.exc.SQLAlchemyError:
                pass
            try:
                # invalidate, not close: a pooled connection would keep the session (and the lock) alive
                conn.invalidate()
            except sa.exc.SQLAlchemyError:
                pass
        self.writer_owner = None

    def writer(self) -> dict[str, Any] | None:
        """Who holds the writer lease now (pid, host, address), or None when nobody does."""
        if self.writer_owner is not None:
            return dict(self.get_meta(WRITER_KEY) or {})
        try:
            self.acquire_writer("probe")
        except StoreHeld:
            return dict(self.get_meta(WRITER_KEY) or {})
        finally:
            if self.writer_owner == "probe":
                self.release_writer()
        return None

    def _held_message(self) -> str:
        info = self.get_meta(WRITER_KEY) or {}
        where = f" serving at {info['address']}" if info.get("address") else ""
        who = f" (pid {info.get('pid')} on {info.get('host')}{where})" if info else ""
        return f"another orchestrator holds the store {self.url}{who}"

    # ---- writes ----------------------------------------------------------------------------

    def apply(self, steps: Iterable[Step], audits: Iterable[AuditEntry] = (), samples_: Iterable[Sample] = ()) -> None:
        """Journal scheduler steps, audit entries and sample changes in one transaction."""
        self.write(self.prepare(steps, audits, samples_))

    def prepare(self, steps: Iterable[Step], audits: Iterable[AuditEntry] = (),
                samples_: Iterable[Sample] = ()) -> Rows:
        """The rows of one transaction, as the steps left the tasks *now* (call it on the loop).

        A task changed by several steps is written once, as the last step left it. Journal rows
        keep their order.
        """
        now = time.time()
        rows = Rows()
        records: dict[str, Any] = {}  # the scheduler's records, each serialised once (body_json: the Task's JSON)
        for step in steps:
            rows.moves += [{"at": tr.at, "task_id": tr.task_id, "src": tr.src.value if tr.src else None,
                            "dst": tr.dst.value, "reason": tr.reason} for tr in step.transitions]
            rows.results += [self._result_row(r, now) for r in step.results]
            records.update(step.records)
        rows.tasks = [{"id": t.id, "seq": t.seq, "state": t.state.value, "capability": t.capability,
                       "campaign": t.campaign, "updated_at": now, "body": t.body_json()} for t in records.values()]
        rows.audits = [self._audit_row(e) for e in audits]
        rows.samples = [{"id": s.id, "campaign": s.campaign, "state": s.state.value, "updated_at": now,
                         "body": s.model_dump_json()} for s in samples_]
        return rows

    def write(self, rows: Rows) -> None:
        """Write prepared rows in one transaction: one executemany per table. Safe off the loop."""
        if not rows:
            return
        if self._sqlite:
            self._write_sqlite(rows)
            return
        with self.engine.begin() as conn:
            if rows.moves:
                conn.execute(journal.insert(), rows.moves)
            if rows.results:
                # Recorded exactly once per (task, attempt): a re-sent result is a no-op.
                self._run(conn, self._insert_result_sql, rows.results)
            if rows.tasks:
                self._run(conn, self._upsert_task_sql, rows.tasks)  # executemany, one compiled statement
            if rows.audits:
                conn.execute(audit.insert(), rows.audits)
            if rows.samples:
                self._run(conn, self._upsert_sample_sql, rows.samples)

    def _write_sqlite(self, rows: Rows) -> None:
        with self._writer_lock:
            if self._writer_conn is None:
                self._writer_conn = self.engine.raw_connection()  # held for the store's life (pragmas applied)
            con = self._writer_conn.driver_connection
            cur = con.cursor()
            try:
                cur.execute("BEGIN")
                for compiled, items in ((self._journal_sql, rows.moves), (self._insert_result_sql, rows.results),
                                        (self._upsert_task_sql, rows.tasks), (self._audit_sql, rows.audits),
                                        (self._upsert_sample_sql, rows.samples)):
                    if items:
                        sql, order = compiled
                        cur.executemany(sql, _positional(order, items) if order else items)
                con.commit()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    con.rollback()
                if isinstance(exc, Exception):
                    raise StoreError(f"the journal write failed: {exc}") from exc
                raise
            finally:
                cur.close()

    @staticmethod
    def _result_row(r: Result, now: float) -> dict[str, Any]:
        return {"task_id": r.task_id, "attempt": r.attempt, "status": r.status.value, "recorded_at": now,
                "body": r.model_dump_json()}

    @staticmethod
    def _audit_row(e: AuditEntry) -> dict[str, Any]:
        return {"at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
                "detail": json.dumps(e.detail, default=str)}

    def checkpoint(self) -> None:
        """Fold SQLite's WAL into the database file (PASSIVE: writers go on meanwhile); a no-op elsewhere.

        With durability ``process`` nothing checkpoints inside a commit, so the writer calls this off its loop."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def add_audit(self, entry: AuditEntry) -> None:
        self.apply([], [entry])

    def put_sample(self, s: Sample) -> None:
        self.apply([], (), [s])

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

    def load(self, done_limit: int | None = None) -> tuple[list[Task], list[tuple[str, TaskState]]]:
        """Everything a scheduler needs after a restart: live tasks in full, ended ones by state (oldest
        first; with ``done_limit``, only the newest that many by submission)."""
        terminal = [s.value for s in TERMINAL_STATES]
        with self.engine.connect() as conn:
            live = [Task.model_validate_json(r.body) for r in conn.execute(
                sa.select(tasks.c.body).where(tasks.c.state.not_in(terminal)).order_by(tasks.c.seq))]
            query = sa.select(tasks.c.id, tasks.c.state).where(tasks.c.state.in_(terminal))
            if done_limit is not None:
                query = query.order_by(tasks.c.seq.desc(), tasks.c.id.desc()).limit(done_limit)
            done = [(r.id, TaskState(r.state)) for r in conn.execute(query)]
        if done_limit is not None:
            done.reverse()
        return live, done

    def task_states(self, task_ids: list[str]) -> dict[str, TaskState]:
        """The stored state of each of ``task_ids`` the store has (absent ids are left out). The orchestrator
        asks this of every submission once it keeps only the newest ended tasks: on SQLite through a driver
        connection of its own (~10 us for one id, against ~110 us through a pooled SQLAlchemy one)."""
        out: dict[str, TaskState] = {}
        chunks = [task_ids[i:i + 500] for i in range(0, len(task_ids), 500)]
        if self._sqlite:
            with self._reader_lock:
                if self._reader_conn is None:
                    self._reader_conn = self.engine.raw_connection()
                cur = self._reader_conn.driver_connection.cursor()
                try:
                    for chunk in chunks:  # autocommit reads: each sees every commit before it, holds nothing
                        cur.execute(f"SELECT id, state FROM tasks WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                        out.update((tid, TaskState(state)) for tid, state in cur.fetchall())
                finally:
                    cur.close()
            return out
        with self.engine.connect() as conn:
            for chunk in chunks:
                rows = conn.execute(sa.select(tasks.c.id, tasks.c.state).where(tasks.c.id.in_(chunk)))
                out.update((r.id, TaskState(r.state)) for r in rows)
        return out

    def next_seq(self) -> int:
        """One past the highest submission number ever given, ended tasks included: numbers keep rising
        across restarts, so that "newest first" stays true (a scheduler restored with no live task
        started again at 0)."""
        with self.engine.connect() as conn:
            top = conn.execute(sa.select(sa.func.max(tasks.c.seq))).scalar()
        return 0 if top is None else int(top) + 1

    def get_task(self, task_id: str) -> Task | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tasks.c.body).where(tasks.c.id == task_id)).first()
        return Task.model_validate_json(row.body) if row else None

    def get_tasks(self, task_ids: list[str]) -> dict[str, Task]:
        """Many tasks by id in a few queries (absent ids are left out)."""
        out: dict[str, Task] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(task_ids), 500):
                q = sa.select(tasks.c.id, tasks.c.body).where(tasks.c.id.in_(task_ids[i:i + 500]))
                out.update({r.id: Task.model_validate_json(r.body) for r in conn.execute(q)})
        return out

    def list_tasks(self, state: str | None = None, campaign: str | None = None, capability: str | None = None,
                   limit: int = 1000, offset: int = 0, before: tuple[int, str] | None = None) -> list[Task]:
        """The newest ``limit`` tasks that match, newest first (see :meth:`list_task_rows`)."""
        return [Task.model_validate_json(body) for _, _, _, body in
                self.list_task_rows(state, campaign, capability, limit, offset, before)]

    def list_task_rows(self, state: str | Sequence[str] | None = None, campaign: str | None = None,
                       capability: str | None = None, limit: int = 1000, offset: int = 0,
                       before: tuple[int, str] | None = None) -> list[tuple[int, str, str, str]]:
        """(seq, id, state, the Task's JSON) of the newest ``limit`` tasks that match, newest first: by
        submission number, then id (stores from before numbers rose across restarts repeat some).
        ``state``: one state, or any of several.

        ``before`` (the (seq, id) of the last task of a page) pages by key: only tasks older than
        it. Unlike ``offset``, a task submitted meanwhile never shifts the next page, so a listing
        holds no task twice and misses none that was there when it began."""
        q = (sa.select(tasks.c.seq, tasks.c.id, tasks.c.state, tasks.c.body)
             .order_by(tasks.c.seq.desc(), tasks.c.id.desc()).limit(limit).offset(offset))
        if before is not None:
            seq, tid = before  # (seq, id) < before, written so that the index on (seq, id) bounds the scan
            q = q.where(tasks.c.seq <= seq, sa.or_(tasks.c.seq < seq, tasks.c.id < tid))
        if isinstance(state, str) and state:
            q = q.where(tasks.c.state == state)
        elif state:
            q = q.where(tasks.c.state.in_(list(state)))
        if campaign:
            q = q.where(tasks.c.campaign == campaign)
        if capability:
            q = q.where(tasks.c.capability == capability)
        with self.engine.connect() as conn:
            return [(int(r.seq), str(r.id), str(r.state), str(r.body)) for r in conn.execute(q)]

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

    def list_samples(self, campaign: str | None = None, limit: int | None = None) -> list[Sample]:
        """Samples, oldest change first (with ``limit``: the newest ``limit`` of them)."""
        return [s for _, s in self.sample_rows(campaign, limit)][::-1]

    def sample_rows(self, campaign: str | None = None, limit: int | None = None,
                    before: tuple[float, str] | None = None) -> list[tuple[tuple[float, str], Sample]]:
        """((updated_at, id), sample), newest change first; ``before``: only those older than that key."""
        q = (sa.select(samples.c.updated_at, samples.c.id, samples.c.body)
             .order_by(samples.c.updated_at.desc(), samples.c.id.desc()).limit(limit))
        if before is not None:
            at, sid = before
            q = q.where(samples.c.updated_at <= at, sa.or_(samples.c.updated_at < at, samples.c.id < sid))
        if campaign:
            q = q.where(samples.c.campaign == campaign)
        with self.engine.connect() as conn:
            return [((float(r.updated_at), str(r.id)), Sample.model_validate_json(r.body)) for r in conn.execute(q)]

    def audit_entries(self, since: float = 0.0, limit: int | None = None) -> list[AuditEntry]:
        """Entries at or after ``since``, oldest first (with ``limit``: the newest ``limit`` of them)."""
        return [e for _, e in self.audit_rows(since, limit)][::-1]

    def audit_rows(self, since: float = 0.0, limit: int | None = None,
                   before: int | None = None) -> list[tuple[int, AuditEntry]]:
        """(row id, entry) at or after ``since``, newest first; ``before``: only rows below that id."""
        q = sa.select(audit).where(audit.c.at >= since).order_by(audit.c.id.desc()).limit(limit)
        if before is not None:
            q = q.where(audit.c.id < before)
        with self.engine.connect() as conn:
            return [(int(r.id), AuditEntry(at=r.at, actor=r.actor, action=r.action, target=r.target,
                                           detail=json.loads(r.detail))) for r in conn.execute(q)]

    def audit_details(self, action: str, targets: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The detail of the last ``action`` entry for each of ``targets`` that has one (a few hundred
        targets per query: no database takes an IN list of any length)."""
        wanted = list(dict.fromkeys(targets))
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for lo in range(0, len(wanted), 500):
                q = (sa.select(audit.c.target, audit.c.detail).order_by(audit.c.id)
                     .where(audit.c.action == action, audit.c.target.in_(wanted[lo:lo + 500])))
                out.update((str(r.target), json.loads(r.detail)) for r in conn.execute(q))
        return out

    def documents_for(self, run_uid: str) -> list[tuple[str, dict[str, Any]]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(documents.c.name, documents.c.doc)
                                .where(documents.c.run_uid == run_uid).order_by(documents.c.id))
            return [(r.name, json.loads(r.doc)) for r in rows]

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).first()
        return json.loads(row.value) if row else default
