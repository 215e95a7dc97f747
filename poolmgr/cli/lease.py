"""Commands about leases: map, leases, show."""

import logging
from typing import Annotated

import typer

from poolmgr.cli.output import cell, emit_json, table
from poolmgr.cli.state import state
from poolmgr.db import unit_of_work
from poolmgr.events import format_fields
from poolmgr.holds import account_flags, open_lease_status
from poolmgr.leases import Mapper, Mapping, MapRequest
from poolmgr.views import LeaseRow, account_detail, list_leases

logger = logging.getLogger(__name__)

MAP_EPILOG = """Exit codes: 0 mapped; 2 bad input or usage (malformed DN or
FQAN); 3 no pool matches the primary FQAN; 4 pool exhausted; 5 banned; 6 ban
list unavailable; 7 no lease (--verify); 8 database unavailable; 9 gave up
after concurrent conflicts. On failure one line on stderr says why."""

LEASES_EPILOG = """Exit codes: 0 listed (also when nothing matches); 2 bad DN or
option; 8 database unavailable; 11 unknown pool or account."""

SHOW_EPILOG = """Exit codes: 0 shown; 8 database unavailable; 11 unknown account."""


def register(app: typer.Typer) -> None:
    """Add the lease commands to app."""
    app.command("map", epilog=MAP_EPILOG)(map_command)
    app.command("leases", epilog=LEASES_EPILOG)(leases_command)
    app.command("show", epilog=SHOW_EPILOG)(show_command)


def map_command(
    dn: Annotated[str, typer.Argument(help="Subject DN, in any common form.")],
    fqan: Annotated[
        list[str] | None,
        typer.Option("--fqan", "-f", help="FQAN, repeatable; the first is primary."),
    ] = None,
    issuer: Annotated[
        str | None, typer.Option(help="Issuer DN, to strip a numeric proxy CN.")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Only confirm an existing lease.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Map a person (DN and FQANs) to a pool account and print it."""
    settings = state.settings()
    request = MapRequest(dn=dn, fqans=tuple(fqan or ()), issuer=issuer, verify=verify)
    mapping = Mapper(state.engine(), settings).map(request)
    # A routine decision: syslog's debug priority, as the service logs it.
    logger.debug("%s", format_fields("mapped", mapping_log_fields(mapping)))
    if as_json:
        emit_json(mapping_json(mapping))
    else:
        typer.echo(mapping.account)


def mapping_log_fields(mapping: Mapping) -> dict[str, object]:
    """Return the key=value fields that describe a mapping in the log."""
    return {
        "account": mapping.account,
        "pool": mapping.pool,
        "new": mapping.new,
        "dn": mapping.dn,
        "fqan": mapping.fqan,
        "lease_id": mapping.lease_id,
    }


def mapping_json(mapping: Mapping) -> dict[str, object]:
    """Return the JSON object for a mapping result."""
    return {
        "account": mapping.account,
        "uid": mapping.uid,
        "gid": mapping.gid,
        "groups": list(mapping.groups),
        "pool": mapping.pool,
        "dn": mapping.dn,
        "fqan": mapping.fqan,
        "lease_id": mapping.lease_id,
        "lease_key": mapping.lease_key,
        "new": mapping.new,
    }


def leases_command(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    dn: Annotated[str | None, typer.Option(help="Only this person.")] = None,
    account: Annotated[str | None, typer.Option(help="Only this account.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Include ended leases.")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N rows.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List leases (open ones unless --all), newest first."""
    with unit_of_work(state.engine(), write=False) as session:
        rows = list_leases(
            session,
            pool=pool,
            dn=dn,
            account=account,
            include_ended=show_all,
            limit=limit,
        )
        status = open_lease_status(session)
    if as_json:
        emit_json([row.__dict__ | {"status": status.get(row.lease_id)} for row in rows])
        return
    headers = ["LEASE", "ACCOUNT", "POOL", "STARTED", "LAST USE", "ENDED", "REASON"]
    cells = [_lease_cells(row) for row in rows]
    # Frozen (banned holder) or held leases add a column only when there are any.
    if any(row.lease_id in status for row in rows):
        headers.append("STATUS")
        cells = [
            [*c[:-1], status.get(r.lease_id), c[-1]]
            for c, r in zip(cells, rows, strict=True)
        ]
    table([*headers, "DN"], cells)


def _lease_cells(row: LeaseRow) -> list[object]:
    return [
        row.lease_id,
        row.account,
        row.pool,
        row.started_at,
        row.last_used_at,
        row.ended_at,
        row.end_reason,
        row.dn,
    ]


def show_command(
    account: Annotated[str, typer.Argument(help="Account name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one account: its holder, last use and lease history."""
    with unit_of_work(state.engine(), write=False) as session:
        detail = account_detail(session, account)
        flags = account_flags(session, account)
    if as_json:
        data = dict(detail.__dict__) | flags
        data["holder"] = detail.holder.__dict__ if detail.holder else None
        data["history"] = [row.__dict__ for row in detail.history]
        emit_json(data)
        return
    holder = detail.holder
    typer.echo(f"account:   {detail.name} (uid {detail.uid}, gid {detail.gid})")
    typer.echo(f"pool:      {detail.pool}")
    typer.echo(f"state:     {detail.state}")
    typer.echo(f"holder:    {holder.dn if holder else '-'}")
    for flag, why in flags.items():
        typer.echo(f"{flag + ':':<10} {why}")
    typer.echo(f"last use:  {cell(detail.last_used_at)}")
    typer.echo("history:")
    table(
        ["LEASE", "STARTED", "LAST USE", "ENDED", "REASON", "BY", "DN"],
        [
            [
                r.lease_id,
                r.started_at,
                r.last_used_at,
                r.ended_at,
                r.end_reason,
                r.ended_by,
                r.dn,
            ]
            for r in detail.history
        ],
    )
