"""Schema management through Alembic: upgrade, status and drift check."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError as AlembicError
from sqlalchemy import Engine

from poolmgr.db import Base, is_sqlite
from poolmgr.errors import DatabaseUnavailableError


def _migrations_dir() -> Path:
    """Return the migrations: the installed poolmgr_migrations, or the checkout's."""
    spec = importlib.util.find_spec("poolmgr_migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "migrations"


MIGRATIONS = _migrations_dir()


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands against the migrations poolmgr carries.

    ``is_known`` is false when the database is at a revision none of these
    migrations has: a newer poolmgr upgraded it, and this one can neither
    use that schema nor upgrade it.
    """

    current: str | None
    head: str
    is_known: bool = True

    @property
    def is_current(self) -> bool:
        return self.current == self.head

    def problem(self) -> str | None:
        """Return why poolmgr cannot work on this schema, or None if it can."""
        if self.is_current:
            return None
        if not self.is_known:
            return (
                f"is at schema revision {self.current}, which this poolmgr "
                f"(newest revision {self.head}) does not know; was it upgraded "
                "by a newer poolmgr? Use that version, or restore a backup"
            )
        return (
            f"is at schema revision {self.current or 'none'}, this poolmgr "
            f"needs {self.head}; run 'poolmgr db upgrade'"
        )


def alembic_config() -> Config:
    """Return an Alembic config pointing at poolmgr's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to revision (head by default) in one transaction.

    Raises DatabaseUnavailableError, changing nothing, when the database is
    at a revision these migrations do not know.
    """
    state = status(engine)
    if not state.is_known:
        raise DatabaseUnavailableError(f"Database {_where(engine)} {state.problem()}.")
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


def head_revision() -> str:
    """Return the newest revision this poolmgr's migrations reach."""
    script = ScriptDirectory.from_config(alembic_config())
    return script.get_current_head() or ""


def status(engine: Engine) -> SchemaStatus:
    """Return the database's revision, the newest one available, and whether
    the database's revision is one of poolmgr's."""
    script = ScriptDirectory.from_config(alembic_config())
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return SchemaStatus(
        current=current,
        head=script.get_current_head() or "",
        is_known=current is None or _has_revision(script, current),
    )


def require_current(engine: Engine) -> None:
    """Raise DatabaseUnavailableError unless the schema is at head."""
    problem = status(engine).problem()
    if problem is not None:
        raise DatabaseUnavailableError(f"Database {_where(engine)} {problem}.")


def _has_revision(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except AlembicError:
        return False


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


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
