"""Schema management through Alembic: upgrade, status and drift check."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from poolmgr.db import Base, is_sqlite


def _migrations_dir() -> Path:
    """Return the migrations: the installed poolmgr_migrations, or the checkout's."""
    spec = importlib.util.find_spec("poolmgr_migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "migrations"


MIGRATIONS = _migrations_dir()


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands against the migrations poolmgr carries."""

    current: str | None
    head: str

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def alembic_config() -> Config:
    """Return an Alembic config pointing at poolmgr's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to revision (head by default) in one transaction."""
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to revision."""
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def status(engine: Engine) -> SchemaStatus:
    """Return the database's revision and the newest one available."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return SchemaStatus(current=current, head=head or "")


def drift(engine: Engine) -> list[object]:
    """Return the differences between the models and the database schema."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def ensure_schema(engine: Engine) -> None:
    """Upgrade a new SQLite database to head; servers are upgraded explicitly.

    An SQLite file belongs to this host, so creating its schema on first use
    is safe. A shared server is upgraded by the admin with ``poolmgr db
    upgrade``, so several hosts never race to migrate it.
    """
    state = status(engine)
    if state.current is None and is_sqlite(engine):
        upgrade(engine)
