"""Commands that bridge to LCMAPS gridmapdirs: gridmapdir import, export."""

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from poolmgr.cli.output import emit_json, table
from poolmgr.cli.state import state
from poolmgr.db import unit_of_work
from poolmgr.gridmapdir import (
    ExportResult,
    Finding,
    ImportPlan,
    export_gridmapdir,
    import_gridmapdir,
)
from poolmgr.timeutil import utcnow
from poolmgr.wording import sample

app = typer.Typer(help="Import leases from, and export them to, an LCMAPS gridmapdir.")

IMPORT_EPILOG = """Names it cannot take over (stale or shared links, names
that do not decode to one DN, conflicts with poolmgr's leases) are listed
and skipped; files named like no poolmgr account are listed as unknown
accounts (a count and the first few; run 'poolmgr sync' first, so that the
pools exist). All leases are written in one transaction. Exit codes: 0 done
(problems are listed, not fatal); 2 unreadable directory; 8 database
unavailable."""

EXPORT_EPILOG = """Exit codes: 0 written; 2 bad target or option; 11 unknown
pool; 12 target not empty (use --update)."""


@app.command("import", epilog=IMPORT_EPILOG)
def import_command(
    directory: Annotated[Path, typer.Argument(help="The gridmapdir to read.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress on stderr (default: when stderr is a terminal).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Import the leases of an existing gridmapdir into the database."""
    show = sys.stderr.isatty() if progress is None else progress
    engine = state.engine(create=not dry_run)
    with unit_of_work(engine, write=not dry_run) as session:
        plan = import_gridmapdir(
            session,
            directory,
            dry_run=dry_run,
            progress=_progress if show else None,
            quiet=state.settings().quiet,
        )
    if as_json:
        emit_json(_plan_json(plan, dry_run))
        return
    _print_plan(plan, dry_run)


_PHASES = {
    "read": "entries read",
    "checked": "leases checked",
    "written": "leases written",
}


def _progress(phase: str, count: int) -> None:
    typer.echo(f"{count} {_PHASES[phase]}", err=True)


def _plan_json(plan: ImportPlan, dry_run: bool) -> dict[str, object]:
    return {
        "directory": str(plan.directory),
        "dry_run": dry_run,
        "entries": plan.entries,
        "free_accounts": plan.free_accounts,
        "leases": [
            {
                "name": lease.name,
                "account": lease.account,
                "pool": lease.pool,
                "dn": lease.dn,
                "last_use": lease.last_use,
                "groups": list(lease.groups),
                "action": lease.action,
            }
            for lease in plan.leases
        ],
        "problems": [asdict(finding) for finding in plan.findings],
        "unknown_accounts": plan.unknown_accounts,
    }


def _print_plan(plan: ImportPlan, dry_run: bool) -> None:
    verb = "would import" if dry_run else "imported"
    typer.echo(
        f"{plan.directory}: {plan.entries} entries; {verb} "
        f"{plan.count('create')} lease(s), {plan.count('unchanged')} already "
        f"known, {plan.count('refresh')} with a later last use; "
        f"{plan.free_accounts} free account(s); {len(plan.findings)} problem(s); "
        f"{len(plan.unknown_accounts)} unknown account(s)."
    )
    if dry_run and plan.leases:
        typer.echo("")
        table(
            ["ACTION", "ACCOUNT", "POOL", "LAST USE", "DN"],
            [[x.action, x.account, x.pool, x.last_use, x.dn] for x in plan.leases],
        )
    _print_findings(plan.findings)
    if plan.unknown_accounts:
        typer.echo("")
        typer.echo(
            f"Unknown accounts ({len(plan.unknown_accounts)}): "
            f"{sample(plan.unknown_accounts)}. If they are pool accounts, "
            "define their pools and run 'poolmgr sync' before importing "
            "(--json lists them all)."
        )


def _print_findings(findings: list[Finding]) -> None:
    if not findings:
        return
    typer.echo("")
    table(
        ["PROBLEM", "NAME", "DETAIL"],
        [[f.kind, f.name, f.detail] for f in findings],
    )


@app.command("export", epilog=EXPORT_EPILOG)
def export_command(
    directory: Annotated[
        Path, typer.Argument(help="Target directory (new, empty, or --update).")
    ],
    pool: Annotated[
        list[str] | None,
        typer.Option("--pool", help="Only this pool; repeatable (default: all)."),
    ] = None,
    suffix: Annotated[
        str,
        typer.Option(
            help="Lease name suffix: auto (':group' for FQAN leases), none, group."
        ),
    ] = "auto",
    non_ascii: Annotated[
        str,
        typer.Option(
            "--non-ascii",
            help="Non-ASCII DNs as LCMAPS sees certificates (lcmaps, \\xHH) "
            "or as UTF-8 (argus).",
        ),
    ] = "lcmaps",
    update: Annotated[
        bool, typer.Option("--update", help="Bring an existing gridmapdir in line.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write the open leases as a gridmapdir that LCMAPS and Argus can read."""
    with unit_of_work(state.engine(), write=False) as session:
        result = export_gridmapdir(
            session,
            directory,
            quiet=state.settings().quiet,
            now=utcnow(),
            pools=pool or None,
            suffix=suffix,
            non_ascii=non_ascii,
            update=update,
        )
    if as_json:
        data = asdict(result)
        data["directory"] = str(result.directory)
        emit_json(data)
        return
    _print_export(result)


def _print_export(result: ExportResult) -> None:
    removed = result.accounts_removed
    typer.echo(
        f"{result.directory}: {result.accounts_created} account file(s) created, "
        + (f"{removed} held account file(s) removed, " if removed else "")
        + f"{result.links_created} lease link(s) created, {result.links_replaced} "
        f"replaced, {result.links_removed} removed, {result.times_set} time(s) "
        f"set; {len(result.findings)} problem(s)."
    )
    _print_findings(result.findings)
