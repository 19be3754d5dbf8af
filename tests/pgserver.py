"""A throwaway PostgreSQL server for the store tests (Debian's ``postgresql`` package, no network).

``initdb`` and ``pg_ctl`` into a temporary folder, as the ``postgres`` user when we are root (the
server refuses to run as root), listening only on a unix socket in that folder, trust auth. Two
entry points, one implementation:

- ``python tests/pgserver.py CMD ...`` runs CMD with ``PPU_TEST_POSTGRES_URL`` set and stops the
  server afterwards (``make test`` uses this);
- :func:`throwaway` is a context manager the test session uses when the variable is unset.

Where neither a server binary nor root to install one exists, :func:`why_not` says why and the
PostgreSQL variants of the store tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV = "PPU_TEST_POSTGRES_URL"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def why_not() -> str | None:
    """None when a throwaway server can run here, else the reason it cannot."""
    if _bindir() is None:
        return ("no PostgreSQL server binaries (pg_ctl); `make test` installs Debian's postgresql when run as "
                f"root, or set {ENV}=postgresql+psycopg://...")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' user to run the server as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    return None


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def throwaway() -> Iterator[str]:
    """Start a private server; yields its SQLAlchemy URL; stops it and removes its files at the end."""
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError(why_not() or "no PostgreSQL")
    root = Path(tempfile.mkdtemp(prefix="ppu-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    log = root / "server.log"
    run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    try:
        subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                                        "--auth=trust", "-E", "UTF8", "--no-sync"]), **run)  # type: ignore[call-overload]
        opts = (f"-c listen_addresses='' -c unix_socket_directories='{root}' -c fsync=off "
                "-c max_connections=200 -c shared_buffers=32MB")
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts,
                                        "-w", "-t", "60", "start"]), **run)  # type: ignore[call-overload]
        yield f"postgresql+psycopg://postgres@/postgres?host={root}"
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace") if exc.stderr else ""
        if log.exists():
            detail += log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"could not start a throwaway PostgreSQL: {detail}") from None
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                            "stop"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python tests/pgserver.py CMD [ARGS...]", file=sys.stderr)
        return 2
    if os.environ.get(ENV) or why_not() is not None:
        if not os.environ.get(ENV):
            print(f"-> no throwaway PostgreSQL ({why_not()}): the PostgreSQL store tests will skip")
        return subprocess.call(argv)
    with throwaway() as url:
        print(f"-> throwaway PostgreSQL for the store tests at {url}")
        return subprocess.call(argv, env=dict(os.environ, **{ENV: url}))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
