"""The monitoring probe: poolmgr check."""

from typing import Annotated

import typer

from poolmgr.cli.state import state
from poolmgr.health import CheckOptions, probe
from poolmgr.timeutil import utcnow

EPILOG = """Checks: the database answers and its schema is current; no live pool
is at or below the thresholds of available accounts (free and past their
quiet period); accounts and groups resolve in NSS with their ids (when
check_nss is on or with --nss); no account is out of service (a state other
than free, leased or retired); the lease invariants hold (one open lease per
account and per person and pool, account states agree with the leases) and
no account that got a lease in the last 7 days went to another person inside
its quiet period without an override (poolmgr audit checks the whole
history); dn_only_pool names a live pool (CRITICAL otherwise); syslog, when
enabled, can be reached (WARNING otherwise). After '|' the line carries
Nagios performance data: per live pool 'POOL'=available;warn;crit;0;accounts,
then 'invariant_violations'. Exit codes follow Nagios and nothing else is
ever returned: 0 OK, 1 WARNING, 2 CRITICAL (also a database that cannot be
reached, or at a schema revision this poolmgr does not use, or any invariant
violation), 3 UNKNOWN (a check could not run, or the configuration is bad);
a mistyped option is exit 2."""


def register(app: typer.Typer) -> None:
    """Add the check command to app."""
    app.command("check", epilog=EPILOG)(check_command)


def check_command(
    warning: Annotated[
        float,
        typer.Option(
            "--warning",
            "-w",
            min=0,
            max=100,
            help="WARNING when a pool's available accounts are at or below "
            "this percent.",
        ),
    ] = 10.0,
    critical: Annotated[
        float,
        typer.Option(
            "--critical",
            "-c",
            min=0,
            max=100,
            help="CRITICAL at or below this percent (0: none left).",
        ),
    ] = 0.0,
    check_nss: Annotated[
        bool, typer.Option("--nss", help="Check NSS even when check_nss is off.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Print every check's line after.")
    ] = False,
) -> None:
    """Nagios probe: one line; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    options = CheckOptions(warning=warning, critical=critical, nss=check_nss)
    report = probe(state.settings, options, utcnow())
    typer.echo(report.summary())
    if verbose:
        for line in report.details():
            typer.echo(line)
    raise typer.Exit(int(report.status))
