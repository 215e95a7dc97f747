"""Commands about the database schema: db upgrade, db status, db check."""

import typer
from sqlalchemy import Engine

from poolmgr import migrate
from poolmgr.cli.state import state
from poolmgr.db import is_absent_sqlite_file, ping, require_sqlite_directory
from poolmgr.errors import DatabaseUnavailableError

app = typer.Typer(help="Create, upgrade and inspect the database schema.")


@app.command("upgrade")
def upgrade_command() -> None:
    """Create or upgrade the schema to the newest revision."""
    engine = state.engine(migrate_sqlite=False)
    ping(engine)
    before = migrate.status(engine)
    migrate.upgrade(engine)
    after = migrate.status(engine)
    if before.current == after.current:
        typer.echo(f"Schema already at {after.current}.")
    else:
        typer.echo(
            f"Schema upgraded from {before.current or 'empty'} to {after.current}."
        )


@app.command("status")
def status_command() -> None:
    """Show the database URL, its schema revision and the newest one."""
    url = _absent_sqlite_file()
    if url is not None:
        # Asking must not create the file: a mistyped path would leave one.
        typer.echo(f"database: {url}")
        typer.echo("revision: none (no such file)")
        typer.echo(f"head:     {migrate.head_revision()}")
        typer.echo("state:    not created yet (the first command that uses it does)")
        return
    engine = state.engine(migrate_sqlite=False)
    ping(engine)
    status = migrate.status(engine)
    typer.echo(f"database: {_where(engine)}")
    typer.echo(f"revision: {status.current or 'none (empty database)'}")
    typer.echo(f"head:     {status.head}")
    typer.echo(f"state:    {_state_line(status)}")
    if not status.is_known:
        raise DatabaseUnavailableError(f"Database {_where(engine)} {status.problem()}.")


def _absent_sqlite_file() -> str | None:
    """Return the URL of an SQLite database that is not created yet, else None.

    A configured path in a directory that does not exist is refused, as
    every command refuses it; the default directory is made on first use.
    """
    settings = state.settings()
    url = settings.database_url()
    if not is_absent_sqlite_file(url):
        return None
    if settings.database is not None:
        require_sqlite_directory(url)
    return url


def _state_line(status: migrate.SchemaStatus) -> str:
    if status.is_current:
        return "up to date"
    if not status.is_known:
        return "unknown revision (made by a newer poolmgr?)"
    return "needs upgrade"


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


@app.command("check")
def check_command() -> None:
    """Verify that the schema is at head and matches the models exactly."""
    url = _absent_sqlite_file()
    if url is not None:
        raise DatabaseUnavailableError(f"Database {url} does not exist.")
    engine = state.engine(migrate_sqlite=False)
    ping(engine)
    migrate.require_current(engine)
    status = migrate.status(engine)
    differences = migrate.drift(engine)
    if differences:
        for difference in differences:
            typer.echo(f"drift: {difference}", err=True)
        raise typer.Exit(1)
    typer.echo(f"Schema at {status.head} matches the models.")
