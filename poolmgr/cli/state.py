"""Per-invocation state shared by the commands: settings, engine, logging."""

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from poolmgr import db, migrate
from poolmgr.errors import DatabaseUnavailableError
from poolmgr.logs import setup_logging
from poolmgr.settings import Settings, default_state_dir, load_settings


@dataclass
class State:
    """What the global options chose; settings and engine load lazily."""

    config: Path | None = None
    database: str | None = None
    verbosity: int = 0
    interrupt_note: str | None = None
    """What an interruption now leaves behind, said on stderr if one comes."""
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """Return the site configuration, read once."""
        if self._settings is None:
            self._settings = load_settings(self.config, self.database)
            setup_logging(self.verbosity, self._settings.syslog)
        return self._settings

    def engine(self, *, migrate_sqlite: bool = True) -> Engine:
        """Return a reachable engine; a new SQLite database gets its schema.

        Raises DatabaseUnavailableError when the database cannot be reached
        or is not at the schema revision this poolmgr needs.
        """
        settings = self.settings()
        if settings.database is None:
            default_state_dir().mkdir(parents=True, exist_ok=True)
        engine = db.get_engine(settings.database_url())
        db.ping(engine)
        if migrate_sqlite:
            migrate.ensure_schema(engine)
            _require_current(engine)
        return engine


def _require_current(engine: Engine) -> None:
    status = migrate.status(engine)
    if status.is_current:
        return
    where = engine.url.render_as_string(hide_password=True)
    raise DatabaseUnavailableError(
        f"Database {where} is at schema revision {status.current or 'none'}, "
        f"this poolmgr needs {status.head}; run 'poolmgr db upgrade'."
    )


state = State()
