"""Commands about bans and incident holds: ban, unban, bans ..., hold, release."""

from typing import Annotated

import typer

from poolmgr.banlists import SyncResult, find_source, forget_source, sync_source
from poolmgr.bans import (
    HAND,
    add_ban,
    frozen_leases,
    lift_ban,
    origin_text,
    parse_entry,
    source_origin,
    source_origins_of,
)
from poolmgr.banviews import (
    BanRow,
    SourceState,
    ban_row,
    list_bans,
    list_syncs,
    source_states,
    sync_changes,
)
from poolmgr.cli.output import cell, emit_json, table
from poolmgr.cli.state import state
from poolmgr.db import unit_of_work
from poolmgr.errors import BadInputError, PoolmgrError
from poolmgr.freetext import check_actor
from poolmgr.holds import hold_account, list_holds, release_account
from poolmgr.recycle import default_actor
from poolmgr.timeutil import format_time, utcnow

BAN_EPILOG = """A DN ban refuses the person in every DN form, letter case and
proxy suffix, whatever FQANs they carry; the DN is literal, never a pattern.
--fqan FQAN refuses that role to everybody carrying it; a request without
FQANs is not caught by an FQAN ban. Refused mappings exit 5 (BANNED). While
a ban stands the person's open leases are frozen: never recycled. Hand bans
are kept apart from bans read from central lists. Exit codes: 0 banned (or
already banned by hand); 2 bad DN or FQAN, or a missing or unusable --reason
or --by; 8 database unavailable."""

UNBAN_EPILOG = """Lifts the hand ban only; a ban read from a central list stays
until that list drops it. Exit codes: 0 lifted; 2 bad DN or FQAN, or a
missing or unusable --reason or --by; 8 database unavailable; 11 no hand ban
on it; 12 banned only by a central list."""

SYNC_EPILOG = """Reads each source's list (a file or HTTP(S) URL, see
ban_sources in the configuration) and makes the bans from that source exactly
the list read; hand bans and other sources are untouched. A list with a bad
line is rejected as a whole, naming the line, and the previous list stays in
force; so does an empty list replacing a non-empty one, unless
--allow-empty. Until a configured source has been read once, every mapping
fails with exit code 6 (BAN_LIST_UNAVAILABLE). Meant for cron. Exit codes: 0
every source synced; 2 a list was rejected, or an unusable --by; 6 a source
could not be read; 8 database unavailable; 11 unknown source. With several
sources each is tried and the first failure's code is returned."""

HOLD_EPILOG = """An incident hold keeps the account out of circulation (never
given to a new person) and out of recycling, forced or not, until released;
its current holder keeps being mapped to it (ban the person to stop that).
Exit codes: 0 held (or already held); 2 a missing or unusable --reason or
--by; 8 database unavailable; 11 unknown account."""

RELEASE_EPILOG = """Exit codes: 0 released; 2 a missing or unusable --reason or
--by; 8 database unavailable; 11 unknown account, or not held."""

FORGET_EPILOG = """Exit codes: 0 lifted; 2 a missing or unusable --reason or
--by; 8 database unavailable; 11 no bans from that source; 12 the source is
still configured."""

bans_app = typer.Typer(
    help="List bans; sync central ban lists and inspect their syncs.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def register(app: typer.Typer) -> None:
    """Add the ban and hold commands to app."""
    app.command("ban", epilog=BAN_EPILOG)(ban_command)
    app.command("unban", epilog=UNBAN_EPILOG)(unban_command)
    app.add_typer(bans_app, name="bans")
    app.command("hold", epilog=HOLD_EPILOG)(hold_command)
    app.command("release", epilog=RELEASE_EPILOG)(release_command)
    app.command("holds")(holds_command)


Reason = Annotated[str | None, typer.Option(help="Why (required, recorded).")]
By = Annotated[
    str | None,
    typer.Option("--by", help="Who decided (default: the login behind sudo)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def ban_command(
    dn: Annotated[str | None, typer.Argument(help="Subject DN, in any form.")] = None,
    fqan: Annotated[
        str | None, typer.Option("--fqan", help="Ban this FQAN instead of a DN.")
    ] = None,
    reason: Reason = None,
    by: By = None,
) -> None:
    """Ban a person (DN) or a role (--fqan) by hand, site-wide."""
    entry = parse_entry(_one_target(dn, fqan), fqan=fqan is not None)
    actor = check_actor(by or default_actor())
    with unit_of_work(state.engine()) as session:
        ban, new = add_ban(
            session, entry, reason=reason or "", actor=actor, now=utcnow()
        )
        frozen = len(frozen_leases(session, {ban.id}))
    what = f"{ban.kind} {ban.entry!r}"
    if not new:
        typer.echo(
            f"Already banned by hand since {format_time(ban.created_at)}: {what} "
            f"(ban {ban.id})."
        )
        return
    typer.echo(f"Banned {what} (ban {ban.id}); {frozen} open lease(s) frozen.")


def unban_command(
    dn: Annotated[str | None, typer.Argument(help="Subject DN, in any form.")] = None,
    fqan: Annotated[
        str | None, typer.Option("--fqan", help="Lift an FQAN ban instead.")
    ] = None,
    reason: Reason = None,
    by: By = None,
) -> None:
    """Lift a hand ban on a person (DN) or a role (--fqan)."""
    entry = parse_entry(_one_target(dn, fqan), fqan=fqan is not None)
    actor = check_actor(by or default_actor())
    with unit_of_work(state.engine()) as session:
        ban = lift_ban(session, entry, reason=reason or "", actor=actor, now=utcnow())
        others = source_origins_of(session, entry.key_hash)
    typer.echo(f"Lifted hand ban {ban.id} on {ban.kind} {ban.entry!r}.")
    for origin in others:
        typer.echo(f"Still banned {origin_text(origin)}.")


def _one_target(dn: str | None, fqan: str | None) -> str:
    if (dn is None) == (fqan is None):
        raise BadInputError("Give either a DN or --fqan FQAN.")
    return dn if dn is not None else str(fqan)


@bans_app.callback()
def bans_command(
    ctx: typer.Context,
    source: Annotated[
        str | None, typer.Option(help="Only bans read from this source.")
    ] = None,
    hand: Annotated[bool, typer.Option("--hand", help="Only hand bans.")] = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="Include lifted bans.")
    ] = False,
    as_json: Json = False,
) -> None:
    """List the bans in force (with --all also lifted ones), oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    origin = HAND if hand else (source_origin(source) if source else None)
    with unit_of_work(state.engine(), write=False) as session:
        rows = list_bans(session, origin=origin, include_lifted=show_all)
    if as_json:
        emit_json([row.__dict__ for row in rows])
        return
    _ban_table(rows)


def _ban_table(rows: list[BanRow]) -> None:
    table(
        ["BAN", "KIND", "ORIGIN", "SINCE", "BY", "FROZEN", "LIFTED", "ENTRY"],
        [
            [
                r.ban_id,
                r.kind,
                r.origin,
                r.created_at,
                r.created_by,
                r.frozen_leases,
                r.lifted_at,
                r.entry,
            ]
            for r in rows
        ],
    )


@bans_app.command("sync", epilog=SYNC_EPILOG)
def sync_command(
    source: Annotated[
        str | None, typer.Argument(help="Source name (default: every source).")
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Accept an empty list.")
    ] = False,
    by: By = None,
    as_json: Json = False,
) -> None:
    """Read central ban lists and make their bans exactly what they list."""
    settings = state.settings()
    sources = [find_source(settings, source)] if source else settings.ban_sources
    if not sources:
        typer.echo("No ban source is configured (ban_sources).")
        return
    actor = check_actor(by or default_actor())
    engine = state.engine()
    results: list[SyncResult] = []
    failure: PoolmgrError | None = None
    for item in sources:
        try:
            results.append(
                sync_source(engine, item, actor=actor, allow_empty=allow_empty)
            )
        except PoolmgrError as exc:
            typer.echo(f"poolmgr: {exc}", err=True)
            failure = failure or exc
    _report_syncs(results, as_json)
    if failure is not None:
        raise typer.Exit(failure.exit_code)


def _report_syncs(results: list[SyncResult], as_json: bool) -> None:
    if as_json:
        emit_json([result.__dict__ for result in results])
        return
    for result in results:
        typer.echo(
            f"{result.source}: {result.entries} entries, {len(result.added)} added, "
            f"{len(result.removed)} removed (sync {result.sync_id})"
        )
        for entry in result.added:
            typer.echo(f"  + {entry}")
        for entry in result.removed:
            typer.echo(f"  - {entry}")


@bans_app.command("syncs")
def syncs_command(
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most N rows.")] = 20,
    as_json: Json = False,
) -> None:
    """List the newest attempts to read ban lists, newest first."""
    with unit_of_work(state.engine(), write=False) as session:
        rows = list_syncs(session, source=source, limit=limit)
    if as_json:
        emit_json([row.__dict__ for row in rows])
        return
    table(
        [
            "SYNC",
            "SOURCE",
            "AT",
            "BY",
            "STATUS",
            "ENTRIES",
            "ADDED",
            "REMOVED",
            "ERROR",
        ],
        [
            [
                r.sync_id,
                r.source,
                r.at,
                r.actor,
                r.status,
                r.entries,
                r.added,
                r.removed,
                r.error,
            ]
            for r in rows
        ],
    )


@bans_app.command("changes")
def changes_command(
    sync_id: Annotated[int, typer.Argument(help="Sync id (see 'bans syncs').")],
    as_json: Json = False,
) -> None:
    """Show the bans one sync added and lifted. Exit code 11: unknown sync."""
    with unit_of_work(state.engine(), write=False) as session:
        sync, added, removed = sync_changes(session, sync_id)
        added_rows = [ban_row(ban) for ban in added]
        removed_rows = [ban_row(ban) for ban in removed]
    if as_json:
        emit_json(
            {
                "sync": sync.__dict__,
                "added": [row.__dict__ for row in added_rows],
                "removed": [row.__dict__ for row in removed_rows],
            }
        )
        return
    typer.echo(
        f"sync {sync.sync_id} of {sync.source} at {cell(sync.at)}: {sync.status}"
    )
    for row in added_rows:
        typer.echo(f"  + {row.entry}")
    for row in removed_rows:
        typer.echo(f"  - {row.entry}")


@bans_app.command("sources")
def sources_command(as_json: Json = False) -> None:
    """Show each ban source: last good read, last attempt, bans in force."""
    with unit_of_work(state.engine(), write=False) as session:
        states = source_states(session, state.settings(), utcnow())
    if as_json:
        emit_json([s.__dict__ for s in states])
        return
    table(
        ["SOURCE", "BANS", "LAST READ", "LAST TRY", "STATUS", "NOTE"],
        [
            [s.name, s.bans, s.last_read, s.last_attempt, s.last_status, _note(s)]
            for s in states
        ],
    )


def _note(source: SourceState) -> str:
    if not source.configured:
        return "not configured; 'poolmgr bans forget' lifts its bans"
    if source.never_read:
        return "never read: every mapping is refused"
    if source.last_status != "accepted":
        return f"last read failed: {source.last_error}"
    return "stale" if source.stale else "ok"


@bans_app.command("forget", epilog=FORGET_EPILOG)
def forget_command(
    source: Annotated[str, typer.Argument(help="Source no longer configured.")],
    reason: Reason = None,
    by: By = None,
) -> None:
    """Lift every ban read from a source that is no longer configured."""
    actor = check_actor(by or default_actor())
    with unit_of_work(state.engine()) as session:
        count = forget_source(
            session,
            state.settings(),
            source,
            reason=reason or "",
            actor=actor,
            now=utcnow(),
        )
    typer.echo(f"Lifted {count} ban(s) from source {source}.")


def hold_command(
    account: Annotated[str, typer.Argument(help="Account name.")],
    reason: Reason = None,
    by: By = None,
) -> None:
    """Hold an account for an incident: out of circulation and recycling."""
    actor = check_actor(by or default_actor())
    with unit_of_work(state.engine()) as session:
        hold, new = hold_account(
            session, account, reason=reason or "", actor=actor, now=utcnow()
        )
    if not new:
        typer.echo(
            f"Account {account} is already held since {format_time(hold.started_at)} "
            f"by {hold.started_by}: {hold.reason}"
        )
        return
    typer.echo(f"Account {account} held (hold {hold.id}).")


def release_command(
    account: Annotated[str, typer.Argument(help="Account name.")],
    reason: Reason = None,
    by: By = None,
) -> None:
    """Release an incident hold: the account returns to circulation."""
    actor = check_actor(by or default_actor())
    with unit_of_work(state.engine()) as session:
        hold = release_account(
            session, account, reason=reason or "", actor=actor, now=utcnow()
        )
    if hold is None:
        typer.echo(
            f"Account {account} had no standing hold; its stray held flag is "
            "cleared and it returns to circulation."
        )
    else:
        typer.echo(f"Hold {hold.id} on account {account} released.")


def holds_command(
    show_all: Annotated[
        bool, typer.Option("--all", help="Include released holds.")
    ] = False,
    as_json: Json = False,
) -> None:
    """List incident holds (standing ones unless --all), oldest first."""
    with unit_of_work(state.engine(), write=False) as session:
        rows = list_holds(session, include_released=show_all)
    if as_json:
        emit_json([row.__dict__ for row in rows])
        return
    table(
        ["HOLD", "ACCOUNT", "POOL", "SINCE", "BY", "RELEASED", "REASON", "HOLDER"],
        [
            [
                r.hold_id,
                r.account,
                r.pool,
                r.started_at,
                r.started_by,
                r.released_at,
                r.reason,
                r.holder,
            ]
            for r in rows
        ],
    )
