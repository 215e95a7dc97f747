"""The ``poolmgr`` command line: assembles the command groups.

Errors meet one boundary in ``main``: an expected failure prints one line on
stderr and exits with its documented code; anything else is a bug, logged
with its traceback and reported with exit code 70.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

os.environ.setdefault("TYPER_USE_RICH", "0")

import typer  # noqa: E402

from poolmgr import __version__  # noqa: E402
from poolmgr.cli import audit as audit_cli  # noqa: E402
from poolmgr.cli import bans as bans_cli  # noqa: E402
from poolmgr.cli import (  # noqa: E402
    check,
    lease,
    pool,
    provision,
    sizing,
    vocard,
)
from poolmgr.cli import db as db_cli  # noqa: E402
from poolmgr.cli import gridmapdir as gridmapdir_cli  # noqa: E402
from poolmgr.cli import recycle as recycle_cli  # noqa: E402
from poolmgr.cli import service as service_cli  # noqa: E402
from poolmgr.cli.boundary import run_guarded  # noqa: E402
from poolmgr.cli.state import state  # noqa: E402

EXIT_CODES = """Exit codes: 0 success; 1 other expected failure; 2 bad input or
usage; 3 no pool matches; 4 pool exhausted; 5 banned; 6 ban list unavailable;
7 no lease (verify); 8 database unavailable; 9 contention; 10 bad
configuration or VO card; 11 not found; 12 refused by policy; 13 conflicting
definitions; 70 internal error; 130 interrupted (143 on SIGTERM); 141 stdout
closed by its reader (e.g. piped into head)."""

app = typer.Typer(
    name="poolmgr",
    help="Pool-account lifecycle manager for grid computing sites.",
    epilog=EXIT_CODES,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"poolmgr {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Site configuration file.", show_default=False),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option("--database", help="Database URL (overrides the config)."),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output.")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Pool-account lifecycle manager for grid computing sites."""
    state.config, state.database, state.verbosity = config, database, verbose
    state._settings = None


lease.register(app)
pool.register(app)
app.add_typer(vocard.app, name="vocards")
app.add_typer(db_cli.app, name="db")
service_cli.register(app)
recycle_cli.register(app)
audit_cli.register(app)
app.add_typer(gridmapdir_cli.app, name="gridmapdir")
sizing.register(app)
provision.register(app)
check.register(app)
bans_cli.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and turn every failure into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    return run_guarded(typer.main.get_command(app), args)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
