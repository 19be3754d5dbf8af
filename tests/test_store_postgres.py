"""The same store on PostgreSQL: run with PPU_TEST_POSTGRES_URL=postgresql+psycopg://user@host/db.

Deselected unless that variable is set (CI has no PostgreSQL server); the SQLite tests cover the
same code path, and this proves the schema and the upserts on the other dialect.
"""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa
from sched_helpers import ok, register, spec, task

from ppu.events import Finished, Submit
from ppu.models import TaskState
from ppu.scheduler import Scheduler
from ppu.store import Store, metadata

URL = os.environ.get("PPU_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not URL, reason="set PPU_TEST_POSTGRES_URL to test on PostgreSQL")


@pytest.fixture
def pg_store():
    assert URL is not None
    schema = f"ppu_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    store = Store(URL + ("&" if "?" in URL else "?") + f"options=-csearch_path%3D{schema}")
    try:
        yield store
    finally:
        store.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_journal_restart_and_exactly_once_results_on_postgres(pg_store: Store):
    assert set(metadata.tables) <= set(sa.inspect(pg_store.engine).get_table_names())
    s = Scheduler()
    steps = register(s, spec("b"))
    steps += [s.handle(Submit(task(f"t{i}", priority=i % 2), 0.0)) for i in range(5)]
    steps.append(s.handle(Finished(ok("t1" if s.state_of("t1") is TaskState.assigned else "t0"), 1.0)))
    pg_store.apply(steps)
    pg_store.apply(steps[-1:])  # re-sent: recorded once
    before = s.queue_order("echo")
    s2 = Scheduler()
    s2.restore(*pg_store.load(), at=2.0)
    assert s2.queue_order("echo") == before
    done = [t for t in pg_store.list_tasks() if t.state is TaskState.succeeded]
    assert len(done) == 1 and len(pg_store.results_for(done[0].id)) == 1
