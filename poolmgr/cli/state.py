"""Per-invocation state shared by the commands: settings, engine, logging."""

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from poolmgr import db, migrate
from poolmgr.errors import VoCardError
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

    def engine(self, *, migrate_sqlite: bool = True, create: bool = True) -> Engine:
        """Return a reachable engine; a new SQLite database gets its schema.

        With create=False (a dry run) an SQLite file that does not exist yet
        is not created: the engine is an empty, migrated in-memory database.
        Raises DatabaseUnavailableError when the database cannot be reached
        or is not at the schema revision this poolmgr needs.
        """
        settings = self.settings()
        url = settings.database_url()
        if not create and db.is_absent_sqlite_file(url):
            if settings.database is not None:
                db.require_sqlite_directory(url)
            return db.empty_engine()
        if settings.database is None:
            # The lease history names persons: only its owner and group read it.
            default_state_dir().mkdir(mode=0o750, parents=True, exist_ok=True)
        db.create_sqlite_file(url)
        engine = db.get_engine(url)
        db.ping(engine)
        if migrate_sqlite:
            migrate.ensure_schema(engine)
            migrate.require_current(engine)
        return engine

    def vocards(self, given: Path | None) -> Path:
        """Return the VO card file or directory given, else the configured one.

        A configured path that does not exist raises VoCardError naming the
        setting that holds it, since a typo there is the likely cause.
        """
        if given is not None:
            return given
        settings = self.settings()
        if not settings.vocards.exists():
            origin = (
                f"the vocards setting of {settings.source}"
                if settings.source != "(defaults)"
                else "the default vocards path: no configuration file was read"
            )
            raise VoCardError(
                f"{settings.vocards}: no such file or directory ({origin})."
            )
        return settings.vocards


state = State()
