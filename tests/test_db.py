"""Engines: URLs, connection time limits, dead-peer limits, and outages."""

import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, text

from poolmgr import db
from poolmgr.cli import main
from poolmgr.errors import ConfigError, DatabaseUnavailableError
from tests.conftest import BACKENDS, _server_engine, make_settings
from tests.factories import open_leases, pool, sync


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose listener accepts connections and never speaks."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


@pytest.fixture
def short_connect(monkeypatch: pytest.MonkeyPatch) -> int:
    # libpq counts anything below 2 seconds as 2.
    monkeypatch.setattr(db, "CONNECT_TIMEOUT", 2)
    return 2


@pytest.mark.parametrize("scheme", ["mysql", "mariadb", "postgresql"])
def test_a_server_that_accepts_and_stays_silent_fails_in_bounded_time(
    silent_port, short_connect, scheme
):
    engine = db._create_engine(f"{scheme}://poolmgr@127.0.0.1:{silent_port}/poolmgr")
    start = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailableError, match="is unavailable"):
            db.ping(engine)
    finally:
        engine.dispose()
    elapsed = time.monotonic() - start
    assert elapsed < 3 * short_connect, f"gave up only after {elapsed:.1f} s"


def test_check_on_a_silent_mariadb_is_critical_in_bounded_time(
    silent_port, short_connect, capsys
):
    url = f"mysql://poolmgr@127.0.0.1:{silent_port}/poolmgr"
    start = time.monotonic()
    code = main(["--database", url, "check"])
    elapsed = time.monotonic() - start
    out, _ = capsys.readouterr()
    assert code == 2, out
    assert out.startswith("POOLMGR CRITICAL - database ")
    assert elapsed < 3 * short_connect, f"check took {elapsed:.1f} s"


def test_a_mariadb_statement_may_outlast_the_connect_timeout(engine, monkeypatch):
    if engine.dialect.name not in ("mysql", "mariadb"):
        pytest.skip("the read timeout is PyMySQL's")
    monkeypatch.setattr(db, "CONNECT_TIMEOUT", 1)
    long = db._create_engine(engine.url.render_as_string(hide_password=False))
    try:
        with long.connect() as conn:
            assert conn.execute(text("SELECT SLEEP(1.5)")).scalar() == 0
    finally:
        long.dispose()


def test_statements_get_ten_minutes_of_server_silence():
    assert (db.CONNECT_TIMEOUT, db.STATEMENT_SILENCE) == (5, 600)


@pytest.mark.parametrize(
    "url", ["notaurl", "ftp://x/y"], ids=["not-a-url", "foreign-backend"]
)
def test_an_engine_for_a_bad_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match="^Database URL: "):
        db.get_engine(url)


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://u@127.0.0.1/db", "psycopg", "postgresql"),
        ("mysql://u@127.0.0.1/db", "pymysql", "mysql"),
        ("mariadb+pymysql://u@127.0.0.1/db", "pymysql", "mysql"),
    ],
)
def test_a_missing_driver_names_the_extra_that_installs_it(
    monkeypatch, url, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError) as raised:
        db.get_engine(url)
    message = str(raised.value)
    assert message.startswith("Database URL is not usable: its driver cannot be ")
    assert message.endswith(f"; pip install 'poolmgr[{extra}]' installs it."), message
    assert url not in db._engines, "a refused URL must not be cached"


SERVERS = [backend for backend in BACKENDS if backend != "sqlite"]


def _tcp_options(sock: socket.socket) -> dict[str, int]:
    return {
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }


def _server_socket(raw) -> socket.socket:
    driver = raw.driver_connection
    if hasattr(driver, "pgconn"):
        # A duplicate of libpq's descriptor: the same socket, closed apart.
        return socket.socket(fileno=socket.dup(driver.pgconn.socket))
    return driver._sock


@pytest.mark.parametrize("backend", SERVERS)
def test_server_connections_give_up_on_a_vanished_server(backend):
    # Without these a request that meets a network partition waits about
    # 15 minutes for the kernel, holding a service worker all that time.
    engine = _server_engine(backend)
    raw = engine.raw_connection()
    try:
        sock = _server_socket(raw)
        options = _tcp_options(sock)
        if hasattr(raw.driver_connection, "pgconn"):
            sock.close()
    finally:
        raw.close()
    limit = db.DEAD_PEER_SECONDS
    assert options == {
        "keepalive": 1,
        "idle": limit // 3,
        "interval": limit // 6,
        "count": 3,
        "user_timeout": limit * 1000,
    }, f"{engine.dialect.name} connection lacks the dead-peer limits"


def test_server_transactions_are_read_committed(engine):
    """Mapping relies on it: its unlocked reads of candidates and its retry
    probe must see what was committed a moment ago, not a snapshot."""
    queries = {
        "postgresql": ("SHOW transaction_isolation", "read committed"),
        "mysql": ("SELECT @@session.tx_isolation", "READ-COMMITTED"),
        "mariadb": ("SELECT @@session.tx_isolation", "READ-COMMITTED"),
    }
    if engine.dialect.name not in queries:
        pytest.skip("SQLite has no isolation levels to choose")
    query, expected = queries[engine.dialect.name]
    with db.unit_of_work(engine) as session:
        assert session.execute(text(query)).scalar_one() == expected


@contextmanager
def read_only_user(engine: Engine) -> Iterator[str]:
    """Yield the URL of a new server user that may only read the database."""
    name = f"pm_ro_{uuid.uuid4().hex[:8]}"
    database = engine.url.database
    if engine.dialect.name == "postgresql":
        grant = [
            f"CREATE ROLE {name} LOGIN",
            f"GRANT CONNECT ON DATABASE {database} TO {name}",
            f"GRANT USAGE ON SCHEMA public TO {name}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}",
        ]
        revoke = [f"DROP OWNED BY {name}", f"DROP ROLE {name}"]
    else:
        grant = [
            f"CREATE USER '{name}'@'%'",
            f"GRANT SELECT ON {database}.* TO '{name}'@'%'",
        ]
        revoke = [f"DROP USER '{name}'@'%'"]
    with engine.begin() as conn:
        for statement in grant:
            conn.execute(text(statement))
    url = engine.url.set(username=name, password=None)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        db.get_engine(url.render_as_string(hide_password=False)).dispose()
        with engine.begin() as conn:
            for statement in revoke:
                conn.execute(text(statement))


def test_a_missing_grant_is_one_line_and_exit_8(engine, capsys):
    """A user granted only SELECT (as for the Nagios probe) asked to map:
    the server's refusal is named, not reported as a bug."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no users or grants")
    sync(engine, make_settings(), [pool("atlas", "atlas", 2, "/atlas")])
    with read_only_user(engine) as url:
        capsys.readouterr()
        code = main(["--database", url, "map", "/DC=org/CN=Jane", "--fqan", "/atlas"])
        err = capsys.readouterr().err
    assert code == 8, err
    assert err.count("\n") == 1, f"expected one line, got {err!r}"
    assert " refused pm_ro_" in err and "a privilege this command needs: " in err
    assert "denied" in err, err
    assert open_leases(engine) == []
