"""Benchmark databases: created fresh, pools bulk-loaded, leases prefilled.

Pools are written with SQLAlchemy Core in large batches instead of through
``sync_pools`` so that a 100,000-account pool takes seconds; ``time_sync``
measures the real sync separately. Every row respects the schema's
invariants, so the mapping code sees exactly what a synced pool looks like.
"""

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    create_engine,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url

from poolmgr import db, migrate
from poolmgr.dn import parse_dn
from poolmgr.identities import X509, key_hash
from poolmgr.models import Account, Identity, Lease, Pool, PoolRule
from poolmgr.pools import PoolSpec, sync_pools
from poolmgr.settings import Settings
from poolmgr.timeutil import utcnow

POOL = "bch"
FQAN = "/bch"
DIGITS = 6
FIRST_UID = 200_000
GID = 20_000
BATCH = 10_000
DN_BASE = "/DC=org/DC=poolmgr-bench/CN="

SERVER_URLS = {
    "postgresql": os.environ.get(
        "POOLMGR_BENCH_POSTGRESQL", "postgresql+psycopg://postgres@127.0.0.1:5432/"
    ),
    "mariadb": os.environ.get(
        "POOLMGR_BENCH_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/"
    ),
}


def bench_settings(**values: object) -> Settings:
    """Production defaults, minus the host checks a benchmark cannot satisfy.

    The pool accounts do not exist in this host's NSS and syslog is not
    wanted; last-use coalescing keeps its default window (60 s).
    """
    return Settings.model_validate(
        {"check_nss": False, "syslog": {"enabled": False}, **values}
    )


def account_name(number: int) -> str:
    """Return the name of pool account number (bch000001 ...)."""
    return f"{POOL}{number:0{DIGITS}d}"


def person_dn(kind: str, number: int) -> str:
    """Return a benchmark person's DN, e.g. ``.../CN=Returning 000042``."""
    return f"{DN_BASE}{kind} {number:06d}"


def create_database(backend: str, workdir: Path, name: str) -> str:
    """Create an empty, migrated database and return its URL."""
    if backend == "sqlite":
        path = workdir / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    else:
        base = make_url(SERVER_URLS[backend])
        _admin(backend, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
        url = base.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(db.get_engine(url))
    return url


def drop_database(backend: str, url: str) -> None:
    """Remove a benchmark database (a server database or the SQLite files)."""
    engine = db.get_engine(url)
    engine.dispose()
    if backend == "sqlite":
        path = make_url(url).database or ""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    # FORCE: a service that did not stop cleanly must not leave a database behind.
    force = " WITH (FORCE)" if backend == "postgresql" else ""
    _admin(backend, f"DROP DATABASE IF EXISTS {make_url(url).database}{force}")


def _admin(backend: str, *statements: str) -> None:
    url = make_url(SERVER_URLS[backend])
    if backend == "postgresql":
        url = url.set(database="postgres")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        admin.dispose()


def server_version(engine: Engine) -> str:
    """Return the database server's version string."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return "SQLite " + conn.execute(text("SELECT sqlite_version()")).scalar()
        return str(conn.execute(text("SELECT version()")).scalar()).split(" on ")[0]


def load_pool(engine: Engine, size: int, now: datetime | None = None) -> int:
    """Insert pool bch with size free accounts and its rule; return the pool id."""
    now = now or utcnow()
    with engine.begin() as conn:
        pool_id = conn.execute(
            insert(Pool).values(
                name=POOL,
                vo=POOL,
                prefix=POOL,
                digits=DIGITS,
                first_uid=FIRST_UID,
                group_name=POOL,
                gid=GID,
                declared_size=size,
                size=size,
                created_at=now,
            )
        ).inserted_primary_key[0]
        for chunk in _chunks(range(1, size + 1)):
            rows = [_account_row(pool_id, n, now) for n in chunk]
            bulk_insert(conn, Account.__table__, rows)
        conn.execute(insert(PoolRule).values(position=1, pool_id=pool_id, rule=FQAN))
    return int(pool_id)


def _account_row(pool_id: int, number: int, now: datetime) -> dict[str, object]:
    # Account ids equal account numbers: the table is empty before.
    return {
        "id": number,
        "pool_id": pool_id,
        "name": account_name(number),
        "number": number,
        "uid": FIRST_UID + number,
        "state": "free",
        "created_at": now,
    }


@dataclass(frozen=True)
class Prefilled:
    """Persons holding leases on accounts 1..count, created by prefill."""

    count: int
    dns: tuple[str, ...]


def prefill(engine: Engine, pool_id: int, count: int, last_used: datetime) -> Prefilled:
    """Give persons ``Returning 1..count`` open leases on accounts 1..count."""
    dns = tuple(person_dn("Returning", n) for n in range(1, count + 1))
    with engine.begin() as conn:
        for chunk in _chunks(range(count)):
            ids = insert_identities(conn, [dns[i] for i in chunk], last_used)
            rows = [
                _lease_row(pool_id, i + 1, identity_id, last_used)
                for i, identity_id in zip(chunk, ids, strict=True)
            ]
            bulk_insert(conn, Lease.__table__, rows)
        conn.execute(
            update(Account)
            .where(Account.pool_id == pool_id, Account.number <= count)
            .values(state="leased")
        )
    return Prefilled(count, dns)


def insert_identities(conn: Connection, dns: Sequence[str], now: datetime) -> list[int]:
    """Insert identities for dns and return their ids, in the order of dns."""
    first = next_id(conn, Identity.__table__)
    rows = []
    for offset, dn in enumerate(dns):
        key = parse_dn(dn).key
        rows.append(
            {
                "id": first + offset,
                "kind": X509,
                "key": key,
                "key_hash": key_hash(X509, key),
                "display": dn,
                "display_lossy": False,
                "created_at": now,
            }
        )
    bulk_insert(conn, Identity.__table__, rows)
    return list(range(first, first + len(rows)))


def next_id(conn: Connection, table: Table) -> int:
    """Return the id after the highest one in table."""
    return int(conn.execute(select(func.max(table.c.id))).scalar() or 0) + 1


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, object]]) -> None:
    """Insert rows fast: COPY on PostgreSQL, executemany elsewhere.

    Rows may carry explicit ids; on PostgreSQL the id sequence is then moved
    past them, as the other backends do by themselves.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), rows)
        return
    columns = list(rows[0])
    cursor = conn.connection.driver_connection.cursor()
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([_naive(row[column]) for column in columns])
    if "id" in columns:
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                f"(SELECT max(id) FROM {table.name}))"
            )
        )


def _naive(value: object) -> object:
    # COPY bypasses the column type, which stores UTC without a zone.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _lease_row(
    pool_id: int, account_id: int, identity_id: int, last_used: datetime
) -> dict[str, object]:
    # Account ids equal account numbers: load_pool inserts them in order.
    return {
        "account_id": account_id,
        "identity_id": identity_id,
        "pool_id": pool_id,
        "fqan": FQAN,
        "started_at": last_used - timedelta(days=30),
        "last_used_at": last_used,
        "open_account_id": account_id,
        "open_marker": 1,
    }


def backdate(engine: Engine, count: int, when: datetime) -> None:
    """Set the last use of the leases on accounts 1..count to when."""
    with engine.begin() as conn:
        conn.execute(
            update(Lease)
            .where(Lease.open_marker == 1, Lease.account_id <= count)
            .values(last_used_at=when)
        )


def release_new(engine: Engine, pool_id: int, prefilled: int) -> int:
    """End the leases made since prefill and free their accounts as never used.

    Leases end like a recycle would end them; the accounts are reset to
    never-used so that the next measurement starts from the same pool.
    Returns the number of leases ended.
    """
    now = utcnow()
    newer = and_(Lease.open_marker == 1, Lease.account_id > prefilled)
    with engine.begin() as conn:
        ended = conn.execute(
            update(Lease)
            .where(newer)
            .values(
                ended_at=now,
                end_reason="benchmark",
                ended_by="benchmark",
                open_marker=None,
                open_account_id=None,
            )
        ).rowcount
        conn.execute(
            update(Account)
            .where(Account.pool_id == pool_id, Account.number > prefilled)
            .values(state="free", last_used_at=None, free_since=None)
        )
    return int(ended)


def tidy(engine: Engine) -> None:
    """Refresh planner statistics and clear dead rows, as autovacuum would.

    A database that sync and mappings filled over days has statistics; one
    filled in seconds by bulk inserts has none, and its plans would be
    measured instead of poolmgr's.
    """
    statements = {
        "postgresql": ["VACUUM ANALYZE"],
        "sqlite": ["ANALYZE"],
        "mariadb": ["ANALYZE TABLE accounts, leases, identities, events"],
    }[engine.dialect.name if engine.dialect.name != "mysql" else "mariadb"]
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for statement in statements:
            conn.exec_driver_sql(statement).close()


def count_open(engine: Engine) -> int:
    """Return the number of open leases."""
    with engine.connect() as conn:
        return len(conn.execute(select(Lease.id).where(Lease.open_marker == 1)).all())


def time_sync(backend: str, workdir: Path, size: int) -> tuple[float | None, str]:
    """Return the seconds ``sync_pools`` takes to create a pool of size accounts.

    Runs on a database of its own, dropped afterwards. A failure is returned
    as (None, its one-line message) so that the table can show it.
    """
    url = create_database(backend, workdir, f"pmbench_sync_{os.getpid()}")
    engine = db.get_engine(url)
    spec = PoolSpec(name=POOL, vo=POOL, serves=(FQAN,), accounts=size)
    start = time.perf_counter()
    try:
        with db.unit_of_work(engine) as session:
            sync_pools(session, bench_settings(), [spec], utcnow())
    except Exception as exc:  # noqa: BLE001  (reported in the table)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    finally:
        elapsed = time.perf_counter() - start
        drop_database(backend, url)
    return elapsed, ""


def _chunks(items: Iterable[int], size: int = BATCH) -> Iterator[list[int]]:
    chunk: list[int] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
