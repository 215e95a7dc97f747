"""One run of a job at a time per database, across every host that shares it.

PostgreSQL and MariaDB hold a lock of the server's own (an advisory lock, or
GET_LOCK) on a connection kept for the run; SQLite, which serves one host,
an flock on a file beside the database. The server drops the lock when the
connection ends, and the kernel drops the flock when the process ends, so a
run that crashes or is killed never leaves the job locked.
"""

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from poolmgr.db import reading
from poolmgr.errors import RunLockedError


@contextmanager
def exclusive(engine: Engine, job: str) -> Iterator[None]:
    """Run the block as the only run of job on engine's database.

    Raises RunLockedError, having done nothing, when another run holds it.
    """
    if engine.dialect.name == "sqlite":
        with _file_lock(engine, job):
            yield
        return
    with reading(engine) as conn:
        name = _lock_name(conn, job)
        if not _take(conn, name):
            raise _locked(job)
        try:
            yield
        finally:
            try:
                _give_back(conn, name)
            except DBAPIError:
                # The connection is gone, and the server dropped the lock
                # with it; never hand this one back to the pool.
                conn.invalidate()


def _locked(job: str) -> RunLockedError:
    return RunLockedError(
        f"Another 'poolmgr {job}' is running on this database; this one did "
        "nothing. Run it again once the other has finished."
    )


@contextmanager
def _file_lock(engine: Engine, job: str) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    path = Path(f"{database}.{job}.lock")
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked(job) from None
        yield


def _lock_name(conn: Connection, job: str) -> str:
    # MariaDB's lock names are server-wide: the database's name keeps two
    # databases on one server apart. PostgreSQL's locks are per database.
    return f"poolmgr.{job}.{conn.engine.url.database}"[:64]


def _take(conn: Connection, name: str) -> bool:
    if conn.dialect.name == "postgresql":
        query = text("SELECT pg_try_advisory_lock(:key)")
        return bool(conn.execute(query, {"key": _key(name)}).scalar())
    return conn.execute(text("SELECT GET_LOCK(:name, 0)"), {"name": name}).scalar() == 1


def _give_back(conn: Connection, name: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _key(name)})
    else:
        conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})


def _key(name: str) -> int:
    """The 64-bit advisory lock key of name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], signed=True)
