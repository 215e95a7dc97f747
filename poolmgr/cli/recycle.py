"""Commands that end leases and record uses: recycle, touch."""

from collections.abc import Iterable
from typing import Annotated

import typer

from poolmgr.cli.state import state
from poolmgr.db import unit_of_work
from poolmgr.errors import BadInputError
from poolmgr.freetext import check_reason
from poolmgr.history import touch_account
from poolmgr.recycle import OUT_OF_SERVICE, OVERRIDE, Outcome, Recycler
from poolmgr.timeutil import format_time, utcnow

RECYCLE_EPILOG = """Without --force: retries the accounts whose cleanup failed
before, then ends every lease unused for the whole quiet period, runs the
cleanup command (recycle.cleanup_command) and frees the account only when it
succeeded. Meant for a daily cron job or systemd timer. An account that the
in-use check (recycle.in_use_command) reports busy is postponed; one under an
incident hold or with a banned holder is left alone (blocked). With --force
ACCOUNT --reason TEXT: an override that recycles one account inside its quiet
period, recorded with the reason and the actor (--by, default the login
behind sudo). Output: one line per action, 'ACTION account=... pool=... lease=...
last_use=... dn=... note=...', ACTION one of recycled, postponed,
check_failed, cleanup_failed, blocked, skipped, override, and would_recycle,
would_retry, would_override for --dry-run. Exit codes: 0 done (postponed and
blocked accounts included); 1 a cleanup or in-use check failed (reported;
the account stays out of service and the next run retries it); 2 bad input
(e.g. --force without --reason, or --reason or --by without --force); 8
database unavailable; 9 another run or override is under way on this
database (this one did nothing); 11 unknown account; 12 refused: in use, held, banned
holder, or no open lease; 130 interrupted (the cleanup command is killed,
the account stays out of service and the next run retries it)."""

TOUCH_EPILOG = """For batch-system epilogues: the end of a long job is a use, so
the lease's last use becomes the current time (never earlier than it was).
Nothing else is recorded. Exit codes: 0 recorded; 7 the account has no open
lease; 8 database unavailable; 11 unknown account."""


def register(app: typer.Typer) -> None:
    """Add the recycle and touch commands to app."""
    app.command("recycle", epilog=RECYCLE_EPILOG)(recycle_command)
    app.command("touch", epilog=TOUCH_EPILOG)(touch_command)


def recycle_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; run and change nothing.")
    ] = False,
    force: Annotated[
        str | None,
        typer.Option("--force", metavar="ACCOUNT", help="Recycle this account now."),
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Why the override is needed (with --force).")
    ] = None,
    by: Annotated[
        str | None,
        typer.Option("--by", help="Who decided (default: the login behind sudo)."),
    ] = None,
    ignore_in_use: Annotated[
        bool,
        typer.Option(
            "--ignore-in-use",
            help="With --force: skip the in-use check (recorded on the override).",
        ),
    ] = False,
) -> None:
    """End leases past the quiet period, clean the accounts and free them."""
    if force is None and (reason is not None or by is not None or ignore_in_use):
        raise BadInputError("--reason, --by and --ignore-in-use only go with --force.")
    if force is not None:
        check_reason(reason)
    recycler = Recycler(state.engine(create=not dry_run), state.settings(), actor=by)

    outcomes: Iterable[Outcome]
    if force is not None:
        outcomes = recycler.force_steps(
            force, reason, ignore_in_use=ignore_in_use, dry_run=dry_run
        )
    else:
        outcomes = recycler.run(dry_run=dry_run)
    if not dry_run:
        state.interrupt_note = RUN_INTERRUPTED
    failed = _report(outcomes)
    if failed:
        raise typer.Exit(1)


RUN_INTERRUPTED = (
    "leases already ended stay ended; an account whose cleanup did not finish "
    f"stays out of service ({OUT_OF_SERVICE}) and the next 'poolmgr recycle' "
    "retries it"
)


def _report(outcomes: Iterable[Outcome]) -> bool:
    failed, count = False, 0
    for outcome in outcomes:
        typer.echo(outcome.line())
        if outcome.action == OVERRIDE:
            state.interrupt_note = (
                f"the override of {outcome.target.account} is recorded; the "
                f"account stays out of service ({OUT_OF_SERVICE}) until a "
                "cleanup succeeds, and the next 'poolmgr recycle' retries it"
            )
        failed = failed or outcome.failed
        count += 1
    if count == 0:
        typer.echo("Nothing to recycle.")
    return failed


def touch_command(
    account: Annotated[str, typer.Argument(help="Account name.")],
) -> None:
    """Record a use of an account's open lease (for batch job epilogues)."""
    with unit_of_work(state.engine()) as session:
        result = touch_account(session, account, utcnow())
    typer.echo(f"{result.account} last use {format_time(result.last_used_at)}")
