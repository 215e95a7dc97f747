"""Commands for provisioning files: export, and import to adopt a site."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from poolmgr.adoption import ImportReport, import_users_conf
from poolmgr.cli.state import state
from poolmgr.db import unit_of_work
from poolmgr.errors import VoCardError
from poolmgr.files import write_atomically
from poolmgr.groupsconf import import_groups_conf
from poolmgr.provisioning import ExportOptions, export_text
from poolmgr.settings import Settings
from poolmgr.timeutil import utcnow
from poolmgr.vocards import load_cards

EXPORT_EPILOG = """passwd lines are name:x:uid:gid:poolmgr pool POOL:HOME/name:SHELL;
group lines list the accounts that have the group as a secondary group.
users.conf and groups.conf are YAIM's formats; a pool's flag is the one
imported with it, or follows its VO card type (software sgm, production
prd, pilot pilot). Output is sorted by uid, gid or routing order, and
--output replaces the file atomically. Retired accounts are written unless
--exclude-retired: they still own files and their uids are never reused.
Exit codes: 0 written; 1 the file could not be written; 2 bad option; 8
database unavailable; 13 a gid with two names (group)."""

IMPORT_EPILOG = """Adopting a site that YAIM configured, without renumbering:
(1) 'poolmgr import users.conf FILE' creates one pool per account prefix
(atlas001.. is pool atlas) with every account's real uid, groups and flag;
accounts must be numbered 1..N and static accounts (sgmatlas) left out.
(2) 'poolmgr import groups.conf FILE' writes one VO card per VO into the
configured vocards directory (or --vocards-out): each pool serves the FQANs
whose flag it carries, in file order, and declares its current size.
(3) 'poolmgr sync' installs that routing and changes no account. Every
problem (uid, login or gid used twice, a gid named otherwise in poolmgr or
on this host, a uid of another account in NSS) is listed at once and
nothing is imported; exit code 13 (2 for unreadable lines)."""


class ExportKind(StrEnum):
    """What export writes."""

    passwd = "passwd"
    group = "group"
    users_conf = "users.conf"
    groups_conf = "groups.conf"


class ImportKind(StrEnum):
    """What import reads."""

    users_conf = "users.conf"
    groups_conf = "groups.conf"


def register(app: typer.Typer) -> None:
    """Add the export and import commands to app."""
    app.command("export", epilog=EXPORT_EPILOG)(export_command)
    app.command("import", epilog=IMPORT_EPILOG)(import_command)


def export_command(
    kind: Annotated[ExportKind, typer.Argument(help="The format to write.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to replace.")
    ] = None,
    home_base: Annotated[
        str, typer.Option(help="Directory holding the home directories.")
    ] = "/home",
    shell: Annotated[str, typer.Option(help="Login shell of the accounts.")] = (
        "/bin/bash"
    ),
    exclude_retired: Annotated[
        bool, typer.Option(help="Leave retired accounts and pools out.")
    ] = False,
) -> None:
    """Write passwd, group, users.conf or groups.conf lines for the accounts."""
    settings = state.settings()
    options = ExportOptions(home_base, shell, include_retired=not exclude_retired)
    types = _card_types(settings) if kind.value.endswith(".conf") else {}
    with unit_of_work(state.engine(), write=False) as session:
        text, warnings = export_text(session, kind.value, options, types)
    for warning in warnings:
        typer.echo(f"poolmgr: warning: {warning}", err=True)
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_atomically(output, text)


def _card_types(settings: Settings) -> dict[str, str | None]:
    try:
        cards = load_cards(settings.vocards)
    except VoCardError:
        typer.echo(
            f"poolmgr: warning: VO cards in {settings.vocards} cannot be read; "
            "pools that were not imported get an empty flag",
            err=True,
        )
        return {}
    return {decl.name: decl.type for card in cards for decl in card.pools}


def import_command(
    kind: Annotated[ImportKind, typer.Argument(help="The format of FILE.")],
    file: Annotated[Path, typer.Argument(help="The YAIM file to read.")],
    vocards_out: Annotated[
        Path | None,
        typer.Option(
            help="Where groups.conf writes VO cards (default: the vocards setting)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace VO cards that already exist.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and report, change nothing.")
    ] = False,
) -> None:
    """Adopt a site: pools and accounts from users.conf, VO cards from groups.conf."""
    settings = state.settings()
    engine = state.engine(create=not dry_run)
    if kind is ImportKind.users_conf:
        with unit_of_work(engine) as session:
            report = import_users_conf(session, settings, file, utcnow())
            if dry_run:
                session.rollback()
    else:
        out_dir = vocards_out or settings.vocards
        with unit_of_work(engine, write=False) as session:
            report = import_groups_conf(
                session, file, out_dir, overwrite=overwrite, dry_run=dry_run
            )
    _report(report, dry_run)


def _report(report: ImportReport, dry_run: bool) -> None:
    for warning in report.warnings:
        typer.echo(f"poolmgr: warning: {warning}", err=True)
    verb = "Would create" if dry_run else "Created"
    if report.pools:
        count = sum(len(plan.accounts) for plan in report.pools)
        typer.echo(f"{verb} {len(report.pools)} pool(s) with {count} account(s):")
    for plan in report.pools:
        name, gid = plan.group
        typer.echo(
            f"  {plan.name:<12} vo={plan.vo} flag={plan.flag!r} group={name}({gid}) "
            f"accounts={len(plan.accounts)} uids={plan.accounts[0].uid}.."
            f"{plan.accounts[-1].uid}"
        )
    if report.cards:
        typer.echo(f"{verb} {len(report.cards)} VO card(s); run 'poolmgr sync' next:")
    for path in report.cards:
        typer.echo(f"  {path}")
