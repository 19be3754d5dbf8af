"""The store fixture, parametrised over SQLite and PostgreSQL (one fresh database per test).

Use it with ``from store_backends import store_url_fixture  # noqa: F401`` and a ``store_url``
argument.

PostgreSQL comes from ``PPU_TEST_POSTGRES_URL`` (``make test`` starts a throwaway server and sets
it) or, when unset, from a throwaway server this module starts once per test session where it
can (see ``pgserver.py``); where it cannot, the PostgreSQL variants skip saying why.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pgserver
import pytest
import sqlalchemy as sa

from ppu.store import sqlite_url

_servers = contextlib.ExitStack()
atexit.register(_servers.close)
_base: dict[str, str] = {}


def postgres_base() -> str:
    """The URL of a PostgreSQL server for tests; skips the test with the reason when there is none."""
    if pgserver.ENV in os.environ:
        return os.environ[pgserver.ENV]
    if "url" not in _base:
        why = pgserver.why_not()
        if why is not None:
            pytest.skip(f"PostgreSQL variant: {why}")
        _base["url"] = _servers.enter_context(pgserver.throwaway())
    return _base["url"]


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema on the test server; yields a URL whose search_path is that schema."""
    base = postgres_base()
    schema = f"ppu_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield base + ("&" if "?" in base else "?") + f"options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"], name="store_url")
def store_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "ppu.sqlite")
        return
    with postgres_schema() as url:
        yield url
