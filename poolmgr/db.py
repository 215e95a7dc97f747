"""Engine, sessions and the column types shared by every model.

One engine per process and database URL. Every unit of work runs in one
transaction opened by the caller (a CLI command or a service request);
domain functions receive the session and never commit.
"""

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    MetaData,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    OperationalError,
)
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from poolmgr.errors import ConfigError, DatabaseUnavailableError
from poolmgr.settings import database_url_problem

logger = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with constraint names that are equal on every backend."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and returned as aware UTC.

    SQLite and MariaDB keep no zone, so the zone is fixed by convention at
    this boundary: aware values are converted to UTC on the way in, and
    naive values read back are marked UTC.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=False))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def is_sqlite(engine: Engine) -> bool:
    """Return whether the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


_engines: dict[str, Engine] = {}
# How the next SQLite transaction begins: IMMEDIATE (a writer), DEFERRED (a
# reader) or not at all (single statements, each its own snapshot).
_sqlite_begin: ContextVar[str | None] = ContextVar("sqlite_begin", default="IMMEDIATE")


def get_engine(url: str) -> Engine:
    """Return the process-wide engine for url, creating it on first use."""
    engine = _engines.get(url)
    if engine is None:
        engine = _create_engine(url)
        _engines[url] = engine
    return engine


def dispose_engines() -> None:
    """Close every pooled connection (used by tests and on shutdown)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


EXTRAS = {"psycopg": "postgresql", "pymysql": "mysql"}
"""The package extra that installs each default driver."""


def _create_engine(url: str) -> Engine:
    problem = database_url_problem(url)
    if problem is not None:
        raise ConfigError(f"Database URL: {problem}.")
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _create_sqlite_engine(parsed.database)
    mysql = backend in ("mysql", "mariadb")
    options: dict[str, Any] = {}
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if mysql:
        if "+" not in parsed.drivername:
            parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        # PostgreSQL's default: each statement reads what is committed, so
        # the unlocked candidate reads and the retry probe of a mapping see
        # accounts freed a moment ago, and plain reads take no gap locks.
        options["isolation_level"] = "READ COMMITTED"
    try:
        engine = create_engine(
            parsed,
            pool_size=8,
            max_overflow=32,
            pool_recycle=3600,
            # The most recently returned connection is reused first, so
            # under light load one connection stays warm and the others idle.
            pool_use_lifo=True,
            connect_args=_connect_args(backend),
            **options,
        )
    except ImportError as exc:
        extra = EXTRAS.get(parsed.get_driver_name())
        hint = f"; pip install 'poolmgr[{extra}]' installs it" if extra else ""
        raise ConfigError(
            f"Database URL is not usable: its driver cannot be imported ({exc}){hint}."
        ) from None
    except ArgumentError as exc:
        raise ConfigError(f"Database URL is not usable: {exc}") from None
    _ping_when_idle(engine)
    if mysql:
        _allow_long_statements(engine)
        _detect_dead_mysql_peers(engine)
    return engine


PING_AFTER_IDLE = 10.0
"""Seconds a pooled server connection may idle before it is tested again."""


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection at checkout only after it idled a while.

    A server restart or an idle timeout leaves dead connections in the pool;
    testing each one on every checkout would cost a round trip per request.
    A connection returned moments ago is used as is: if the server went away
    meanwhile, the statement fails as an outage and the pool reconnects
    every connection made before it.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("returned_at", 0.0)
        if time.monotonic() - returned < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # noqa: BLE001  (any failure means reconnect)
            # The pool replaces the connection and tries the checkout again.
            raise DisconnectionError(str(exc)) from exc


CONNECT_TIMEOUT = 5
"""Seconds a database server has to accept a connection and log poolmgr in."""

STATEMENT_SILENCE = 600
"""Seconds a MariaDB/MySQL server may send nothing while running a statement."""

DEAD_PEER_SECONDS = 30
"""How long a server connection may go unanswered by the peer's TCP stack."""


def _connect_args(backend: str) -> dict[str, Any]:
    if backend == "postgresql":
        # libpq's connect_timeout bounds the whole start-up, login included.
        # A server that vanished mid-request (network partition, host down)
        # would otherwise hold the request until the kernel gives up after
        # about 15 minutes. Keepalives and TCP_USER_TIMEOUT end it within
        # DEAD_PEER_SECONDS; a server that is merely slow still answers
        # both at the TCP level and is never cut off.
        return {
            "connect_timeout": CONNECT_TIMEOUT,
            "keepalives": 1,
            "keepalives_idle": DEAD_PEER_SECONDS // 3,
            "keepalives_interval": DEAD_PEER_SECONDS // 6,
            "keepalives_count": 3,
            "tcp_user_timeout": DEAD_PEER_SECONDS * 1000,
        }
    if backend in ("mysql", "mariadb"):
        # PyMySQL's connect_timeout bounds only the TCP connect; reading the
        # server's greeting and the login runs under read_timeout, so a
        # server that accepts and stays silent would hang without it.
        return {
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": CONNECT_TIMEOUT,
            "write_timeout": CONNECT_TIMEOUT,
        }
    return {}


def _allow_long_statements(engine: Engine) -> None:
    """Give statements on a connected MariaDB/MySQL connection more time.

    The short timeouts above are right for logging in but would break long
    legitimate statements (an audit over a million leases, a migration, a
    lock wait up to innodb_lock_wait_timeout). PyMySQL applies its read and
    write timeouts at every socket operation from these two attributes and
    has no public way to change them once connected.
    """

    @event.listens_for(engine, "connect", insert=True)
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        for name in ("_read_timeout", "_write_timeout"):
            if hasattr(dbapi_connection, name):
                setattr(dbapi_connection, name, STATEMENT_SILENCE)


def is_absent_sqlite_file(url: str) -> bool:
    """Return whether url names an SQLite file that does not exist (yet).

    The path is taken as SQLite opens it: as written, '~' not expanded.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (
        None,
        "",
        ":memory:",
    ):
        return False
    return not Path(parsed.database or "").exists()


def create_sqlite_file(url: str) -> None:
    """Create url's SQLite file, mode 0640, if it does not exist yet.

    SQLite would create it with the process umask (world-readable with the
    usual 022); its WAL and shared-memory files take the database file's
    mode. A missing directory is left for the first connection to report.
    """
    if not is_absent_sqlite_file(url):
        return
    path = Path(make_url(url).database or "")
    with suppress(FileExistsError, FileNotFoundError, NotADirectoryError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))


def empty_engine() -> Engine:
    """Return a new in-memory SQLite database with poolmgr's schema.

    For dry runs on a database that does not exist yet: they plan against
    an empty database and leave no file behind.
    """
    from poolmgr import migrate  # migrate imports this module

    engine = _create_sqlite_engine(":memory:")
    migrate.upgrade(engine)
    return engine


def _detect_dead_mysql_peers(engine: Engine) -> None:
    """Give PyMySQL's TCP sockets the dead-peer limits libpq gets above.

    PyMySQL turns keepalives on with the kernel's two-hour idle time and has
    no option for more; its socket is the connection's ``_sock``.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        sock = getattr(dbapi_connection, "_sock", None)
        if not isinstance(sock, socket.socket) or sock.family == socket.AF_UNIX:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (
            (socket.TCP_KEEPIDLE, DEAD_PEER_SECONDS // 3),
            (socket.TCP_KEEPINTVL, DEAD_PEER_SECONDS // 6),
            (socket.TCP_KEEPCNT, 3),
            (socket.TCP_USER_TIMEOUT, DEAD_PEER_SECONDS * 1000),
        ):
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _create_sqlite_engine(database: str | None) -> Engine:
    # The directory is never created here: a mistyped path must fail, not
    # quietly start an empty lease history somewhere else.
    engine = create_engine(
        f"sqlite:///{database or ''}",
        connect_args={"timeout": 30, "isolation_level": None},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # The sqlite3 module's own transaction handling is off; a unit of
        # work that writes asks for the write lock up front (BEGIN IMMEDIATE)
        # so two writers never both read a free account and then collide.
        mode = _sqlite_begin.get()
        if mode is not None:
            connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


@contextmanager
def unit_of_work(engine: Engine, *, write: bool = True) -> Iterator[Session]:
    """Run a block in one transaction; commit on success, roll back on error.

    With write=True on SQLite the transaction takes the write lock at once.
    Connection failures become DatabaseUnavailableError.
    """
    token = _sqlite_begin.set("IMMEDIATE" if write else "DEFERRED")
    try:
        with _session_factory(engine).begin() as session:
            yield session
    except DBAPIError as exc:
        if is_conflict(exc):
            raise
        if is_unavailable(exc):
            raise _unavailable(engine, exc) from exc
        raise
    finally:
        _sqlite_begin.reset(token)


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """Yield a Connection for reading (no ORM session).

    For the mapping hot path, where a Session's bookkeeping costs more than
    the query itself. On SQLite and PostgreSQL each statement runs on its
    own, without BEGIN and COMMIT (on PostgreSQL two round trips fewer), so
    every statement sees a consistent snapshot but two statements may not
    see the same one: callers read what must agree in one statement. On
    PostgreSQL each statement is its own transaction, so a change made in
    one statement may be written here too: it commits at once. On MariaDB
    a transaction starts implicitly and costs nothing extra. Errors are
    translated as in unit_of_work.
    """
    token = _sqlite_begin.set(None)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                # psycopg switches this per connection without a round trip.
                conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
            else:
                with conn.begin():
                    yield conn
    except DBAPIError as exc:
        if is_unavailable(exc):
            raise _unavailable(engine, exc) from exc
        raise
    finally:
        _sqlite_begin.reset(token)


_PG_CONFLICTS = {"40001", "40P01", "55P03"}
_MYSQL_UNAVAILABLE = {1040, 1045, 1049, 1053, 2002, 2003, 2005, 2006, 2013, 2055}
_SQLITE_UNAVAILABLE = ("unable to open", "disk i/o error", "readonly database")


def is_unavailable(exc: DBAPIError) -> bool:
    """Return whether exc means the database cannot be reached or used.

    Errors raised by the database on purpose (a trigger refusing a change,
    a constraint) are not outages and are not reported as one.
    """
    if exc.connection_invalidated or is_denied(exc):
        return True
    if not isinstance(exc, OperationalError):
        return False
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", "")
    if type(orig).__module__.startswith("psycopg"):
        return not sqlstate or sqlstate.startswith(("08", "57P", "53"))
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in _MYSQL_UNAVAILABLE
    message = str(orig).lower()
    return any(part in message for part in _SQLITE_UNAVAILABLE)


_PG_DENIED = "42501"
_MYSQL_DENIED = {1044, 1142, 1143, 1227, 1370}


def is_denied(exc: DBAPIError) -> bool:
    """Return whether exc is the server refusing the user a privilege.

    A grant is missing (a read-only user asked to write, a table not granted):
    the database cannot be used for this command until an administrator
    grants it, which no retry changes.
    """
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == _PG_DENIED:
        return True
    code = next(iter(getattr(orig, "args", ())), None)
    return isinstance(code, int) and code in _MYSQL_DENIED


_MYSQL_CONFLICTS = {1205, 1213}
_MYSQL_DUPLICATES = {1062, 1586}


def is_conflict(exc: DBAPIError) -> bool:
    """Return whether exc is a clash with a concurrent writer, worth a retry.

    A unique-constraint violation, a serialization failure, a deadlock or a
    lock timeout means another transaction got there first; the same unit of
    work run again sees its result. Other integrity errors (a NULL, a check
    or a foreign key refused, a guard trigger on SQLite) come out the same
    on every run: they are bugs, not clashes.
    """
    if isinstance(exc, IntegrityError):
        return is_unique_violation(exc)
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _PG_CONFLICTS:
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in _MYSQL_CONFLICTS:
        return True
    return "database is locked" in str(orig)


def is_unique_violation(exc: IntegrityError) -> bool:
    """Return whether exc is a unique key already taken (by another writer)."""
    orig = exc.orig
    if type(orig).__module__.startswith("psycopg"):
        return getattr(orig, "sqlstate", None) == "23505"
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in _MYSQL_DUPLICATES
    return "UNIQUE constraint failed" in str(orig)


def is_not_null_violation(exc: DBAPIError) -> bool:
    """Return whether exc (PostgreSQL) is a NULL refused by a NOT NULL column."""
    return getattr(exc.orig, "sqlstate", None) == "23502"


def _unavailable(engine: Engine, exc: Exception) -> DatabaseUnavailableError:
    database = engine.url.database if is_sqlite(engine) else None
    missing = missing_sqlite_directory(database)
    if missing is not None:
        return _no_directory(database, missing)
    detail = (str(getattr(exc, "orig", exc)).strip().splitlines() or [""])[0][:200]
    where = engine.url.render_as_string(hide_password=True)
    if isinstance(exc, DBAPIError) and is_denied(exc):
        user = engine.url.username or "its user"
        return DatabaseUnavailableError(
            f"Database {where} refused {user} a privilege this command needs: {detail}."
        )
    return DatabaseUnavailableError(f"Database {where} is unavailable: {detail}")


def require_sqlite_directory(url: str) -> None:
    """Raise DatabaseUnavailableError if url's SQLite file has no directory."""
    database = make_url(url).database
    missing = missing_sqlite_directory(database)
    if missing is not None:
        raise _no_directory(database, missing)


def _no_directory(database: str | None, missing: Path) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"Database file {database} cannot be opened: "
        f"the directory {missing} does not exist."
    )


def missing_sqlite_directory(database: str | None) -> Path | None:
    """Return the directory of an SQLite file path when it does not exist."""
    if database in (None, "", ":memory:"):
        return None
    directory = Path(database or "").parent
    return None if directory.is_dir() else directory


_factories: dict[int, sessionmaker[Session]] = {}


def _session_factory(engine: Engine) -> sessionmaker[Session]:
    factory = _factories.get(id(engine))
    if factory is None:
        factory = sessionmaker(engine, expire_on_commit=False)
        _factories[id(engine)] = factory
    return factory


def ping(engine: Engine) -> None:
    """Raise DatabaseUnavailableError unless a trivial query succeeds."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise _unavailable(engine, exc) from exc
