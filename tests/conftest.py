"""Shared fixtures: isolated paths, real databases, settings and pools.

Database tests run on every backend named in POOLMGR_TEST_DATABASES
(default: sqlite,postgresql,mariadb). A server that cannot be reached is
skipped, unless POOLMGR_REQUIRE_SERVERS=1 (as in CI), where it fails.
The schema is built by running the Alembic migrations once per backend; each
test then starts from the tables as migrating leaves them.
"""

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

os.environ["TYPER_USE_RICH"] = "0"

import pytest
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.engine import make_url

from poolmgr import db, migrate, settings
from poolmgr.models import BanState
from poolmgr.settings import Settings

SERVER_URLS = {
    "postgresql": os.environ.get(
        "POOLMGR_TEST_POSTGRESQL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get(
        "POOLMGR_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
}
BACKENDS = [
    name.strip()
    for name in os.environ.get(
        "POOLMGR_TEST_DATABASES", "sqlite,postgresql,mariadb"
    ).split(",")
    if name.strip()
]
TABLES = [
    "holds",
    "bans",
    "ban_syncs",
    "ban_state",
    "events",
    "pool_rules",
    "leases",
    "accounts",
    "identities",
    "pools",
]


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point config and state at tmp_path; never touch /etc or /var/lib."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("POOLMGR_CONFIG", raising=False)
    monkeypatch.delenv("POOLMGR_DATABASE_URL", raising=False)
    monkeypatch.setattr(settings, "DEFAULT_CONFIG", tmp_path / "absent.yaml")
    monkeypatch.setattr(settings, "SYSTEM_STATE_DIR", tmp_path / "var-lib")


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Undo the handlers a CLI run attaches, so caplog sees every record."""
    yield
    root = logging.getLogger("poolmgr")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.propagate = True
    root.setLevel(logging.NOTSET)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = create_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


_databases: dict[str, str] = {}


def _server_engine(backend: str) -> Engine:
    url = _databases.get(backend) or _create_database(backend)
    engine = db.get_engine(url)
    _truncate(engine)
    return engine


def _create_database(backend: str) -> str:
    """Create a database of this test run's own on the server, migrated.

    Each pytest process works in its own database, so parallel runs on one
    server never see each other's rows; it is dropped when the run ends.
    """
    base = make_url(SERVER_URLS[backend])
    name = f"poolmgr_test_{os.getpid()}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        if os.environ.get("POOLMGR_REQUIRE_SERVERS") == "1":
            pytest.fail(f"{backend} server at {base} is required: {exc}")
        pytest.skip(f"{backend} server not reachable: {exc}")
    finally:
        admin.dispose()
    url = base.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(db.get_engine(url))
    _databases[backend] = url
    return url


def _drop_databases() -> None:
    db.dispose_engines()
    for backend, url in _databases.items():
        name = make_url(url).database
        admin = create_engine(SERVER_URLS[backend], isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
    _databases.clear()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the databases this run created."""
    _drop_databases()


def _truncate(engine: Engine) -> None:
    """Empty every table, then put back ban_state's row as migrating leaves it."""
    # TRUNCATE fires no row triggers, so the append-only guards stay in place.
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            conn.execute(text("SET FOREIGN_KEY_CHECKS=0"))
            for table in TABLES:
                conn.execute(text(f"TRUNCATE TABLE {table}"))
            conn.execute(text("SET FOREIGN_KEY_CHECKS=1"))
        conn.execute(
            insert(BanState).values(
                id=1, version=uuid.uuid4().hex, changed_at=datetime.now(UTC)
            )
        )


@pytest.fixture(params=BACKENDS)
def engine(
    request: pytest.FixtureRequest, tmp_path: Path, _sqlite_template: Path
) -> Iterator[Engine]:
    """An engine on an empty, fully migrated database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "poolmgr.db"
        shutil.copy(_sqlite_template, path)
        engine = db.get_engine(f"sqlite:///{path}")
        yield engine
        engine.dispose()
        return
    yield _server_engine(request.param)


@pytest.fixture
def pg() -> Engine:
    """An engine on the PostgreSQL test database only: the one-statement path's."""
    if "postgresql" not in BACKENDS:
        pytest.skip("postgresql is not in POOLMGR_TEST_DATABASES")
    return _server_engine("postgresql")


@pytest.fixture
def sqlite_engine(tmp_path: Path, _sqlite_template: Path) -> Iterator[Engine]:
    """An engine on an empty, migrated SQLite file (for backend-neutral logic)."""
    path = tmp_path / "poolmgr.db"
    shutil.copy(_sqlite_template, path)
    engine = db.get_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


def make_settings(**values: object) -> Settings:
    """Settings for tests: no NSS check, every use written, no syslog."""
    defaults: dict[str, object] = {
        "check_nss": False,
        "last_use_resolution": 0,
        "syslog": {"enabled": False},
    }
    defaults.update(values)
    return Settings.model_validate(defaults)


@pytest.fixture
def site() -> Settings:
    """Default test settings."""
    return make_settings()
