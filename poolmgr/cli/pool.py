"""Commands about pools: pools, sync."""

from pathlib import Path
from typing import Annotated

import typer

from poolmgr.cli.output import emit_json, table
from poolmgr.cli.state import state
from poolmgr.db import unit_of_work
from poolmgr.pools import PoolSpec, SyncResult, sync_pools
from poolmgr.recycle import check_actor, default_actor
from poolmgr.timeutil import utcnow
from poolmgr.views import PoolSummary, list_rules, pool_summaries
from poolmgr.vocards import VoCard, load_cards


def register(app: typer.Typer) -> None:
    """Add the pool commands to app."""
    app.command("pools")(pools_command)
    app.command("sync")(sync_command)
    app.command("rules")(rules_command)


def pools_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List pools: accounts leased, free, quiet, held, cleaning, retired.

    Each account is counted once: LEASED counts every open lease, held or
    not; FREE the free accounts a newcomer could get now; QUIET free ones
    inside their quiet period; HELD free ones under an incident hold (see
    'poolmgr holds' for every hold); CLEANING those out of service, waiting
    for a cleanup ('out_of_service' in --json).
    """
    quiet = state.settings().quiet
    with unit_of_work(state.engine(), write=False) as session:
        summaries = pool_summaries(session, quiet)
    if as_json:
        emit_json([summary.__dict__ for summary in summaries])
        return
    headers = ["POOL", "VO", "SIZE", "DECLARED", "LEASED", "FREE", "QUIET", "HELD"]
    headers += ["CLEANING", "RETIRED", "GROUP", "GID", "FIRST UID"]
    table(headers, [_pool_cells(summary) for summary in summaries])


def _pool_cells(s: PoolSummary) -> list[object]:
    name = s.name if s.live else f"{s.name} (retired)"
    return [
        name, s.vo, s.size, s.declared, s.leased, s.free, s.quiet, s.held,
        s.out_of_service, s.retired, s.group, s.gid, s.first_uid,
    ]  # fmt: skip


def rules_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the FQAN routing rules in the order they are tried."""
    with unit_of_work(state.engine(), write=False) as session:
        rules = list_rules(session)
    if as_json:
        emit_json([rule.__dict__ for rule in rules])
        return
    table(
        ["#", "RULE", "POOL", "VO"], [[r.position, r.rule, r.pool, r.vo] for r in rules]
    )


def sync_command(
    directory: Annotated[
        Path | None,
        typer.Argument(help="VO card file or directory (default: configured)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, change nothing.")
    ] = False,
) -> None:
    """Create, grow and shrink pools and accounts to match the VO cards."""
    settings = state.settings()
    cards = load_cards(state.vocards(directory))
    engine = state.engine(create=not dry_run)
    actor = check_actor(default_actor())
    with unit_of_work(engine) as session:
        result = sync_pools(session, settings, card_specs(cards), utcnow(), actor=actor)
        if dry_run:
            session.rollback()
    _report(result, dry_run)


def card_specs(cards: list[VoCard]) -> list[PoolSpec]:
    """Return the pools the cards declare, in rule order."""
    specs = []
    for card in cards:
        for decl in card.pools:
            specs.append(
                PoolSpec(decl.name, card.vo, tuple(decl.serves), decl.accounts)
            )
    return specs


def _report(result: SyncResult, dry_run: bool) -> None:
    for warning in result.warnings:
        typer.echo(f"poolmgr: warning: {warning}", err=True)
    if not result.changes:
        typer.echo("Nothing to change.")
        return
    verb = "Would make" if dry_run else "Made"
    typer.echo(f"{verb} {len(result.changes)} change(s):")
    for change in result.changes:
        typer.echo(f"  {change}")
