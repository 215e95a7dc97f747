"""Commands for the security officer: audit, who, history."""

import re
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from dateutil.relativedelta import relativedelta

from poolmgr.audit import AuditReport, build_report
from poolmgr.audit_formats import render_csv, render_json, render_text
from poolmgr.audit_html import render_html
from poolmgr.cli.output import emit_json, table
from poolmgr.cli.state import state
from poolmgr.db import unit_of_work
from poolmgr.errors import BadInputError
from poolmgr.files import write_atomically
from poolmgr.history import parse_zone, person_history, show_time, who_held
from poolmgr.timeutil import parse_time, utcnow
from poolmgr.views import LeaseRow

AUDIT_EPILOG = """The report: per pool, capacity and occupancy; accounts
recyclable now and due in the next 30 days; overrides and failed cleanups
since --since (default: one month ago) with who and why; accounts out of
service; time since last use; and a check of the whole lease history that no
account went to another person inside its quiet period without an override.
html is one self-contained page with charts; csv is one table whose first
column, 'section', names the part of the report each row belongs to. --output writes
the file atomically, mode 0640. Exit codes: 0 written (also when the history
check found violations: they are in the report); 1 the file could not be
written; 2 bad option; 8 database unavailable."""

WHO_EPILOG = """Exit codes: 0 answered; 2 bad time, or a time in the future; 8
database unavailable; 11 unknown account."""

HISTORY_EPILOG = """Exit codes: 0 listed; 2 bad DN; 8 database unavailable; 11
unknown person."""

TIME_HELP = "ISO 8601 with a zone, e.g. 2025-03-01T14:00Z or 2025-03-01T15:00+01:00."
ZONE_HELP = "Show times in this IANA zone (e.g. Europe/Zurich) instead of UTC."


class ReportFormat(StrEnum):
    """Output formats of the audit report."""

    text = "text"
    json = "json"
    csv = "csv"
    html = "html"


def register(app: typer.Typer) -> None:
    """Add the audit, who and history commands to app."""
    app.command("audit", epilog=AUDIT_EPILOG)(audit_command)
    app.command("who", epilog=WHO_EPILOG)(who_command)
    app.command("history", epilog=HISTORY_EPILOG)(history_command)


def audit_command(
    since: Annotated[
        str | None,
        typer.Option(help="Start of the period: YYYY-MM-DD (UTC) or " + TIME_HELP),
    ] = None,
    report_format: Annotated[
        ReportFormat, typer.Option("--format", help="Output format.")
    ] = ReportFormat.text,
    output: Annotated[
        Path | None, typer.Option(help="Write to this file instead of stdout.")
    ] = None,
    zone: Annotated[str | None, typer.Option("--tz", help=ZONE_HELP)] = None,
) -> None:
    """Write the audit report: occupancy, recycling, overrides and history check."""
    shown = parse_zone(zone)
    now = utcnow()
    start = parse_since(since) if since else now - relativedelta(months=1)
    settings = state.settings()
    with unit_of_work(state.engine(), write=False) as session:
        report = build_report(session, settings, now, start)
    text = _render(report, report_format, shown)
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_atomically(output, text, 0o640)


def _render(report: AuditReport, report_format: ReportFormat, zone: tzinfo) -> str:
    if report_format is ReportFormat.json:
        return render_json(report)
    if report_format is ReportFormat.csv:
        return render_csv(report)
    if report_format is ReportFormat.html:
        return render_html(report, zone)
    return render_text(report, zone)


def parse_since(text: str) -> datetime:
    """Parse a date (midnight UTC) or an ISO 8601 time with a zone."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        try:
            return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
        except ValueError:
            raise BadInputError(
                f"Date {text.strip()!r} does not exist (e.g. 2025-03-01)."
            ) from None
    return parse_time(text)


def who_command(
    account: Annotated[str, typer.Argument(help="Account name.")],
    at: Annotated[str | None, typer.Option(help=TIME_HELP + " Default: now.")] = None,
    zone: Annotated[str | None, typer.Option("--tz", help=ZONE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say who held an account at a time, or that nobody did."""
    shown = parse_zone(zone)
    now = utcnow()
    when = parse_time(at) if at else now
    if when > now:
        raise BadInputError(
            f"--at {show_time(when, shown)} is in the future (now is "
            f"{show_time(now, shown)}); leave out --at to ask who holds it now."
        )
    with unit_of_work(state.engine(), write=False) as session:
        holder = who_held(session, account, when)
    if as_json:
        data = holder.lease.__dict__ if holder.lease else None
        emit_json({"account": holder.account, "at": holder.at, "holder": data})
        return
    prefix = f"{holder.account} at {show_time(holder.at, shown)}"
    if holder.lease is None:
        typer.echo(f"{prefix}: nobody")
        return
    lease = holder.lease
    typer.echo(f"{prefix}: {lease.dn}")
    typer.echo(f"  {_lease_summary(lease, shown)}")


def history_command(
    dn: Annotated[str, typer.Argument(help="The person's DN, in any common form.")],
    zone: Annotated[str | None, typer.Option("--tz", help=ZONE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every lease a person held, across pools, oldest first."""
    shown = parse_zone(zone)
    with unit_of_work(state.engine(), write=False) as session:
        found = person_history(session, dn)
    if as_json:
        emit_json({"dn": found.dn, "leases": [row.__dict__ for row in found.leases]})
        return
    typer.echo(f"dn: {found.dn}")
    table(
        ["LEASE", "ACCOUNT", "POOL", "STARTED", "LAST USE", "ENDED", "REASON", "BY"],
        [
            [
                row.lease_id,
                row.account,
                row.pool,
                show_time(row.started_at, shown),
                show_time(row.last_used_at, shown),
                show_time(row.ended_at, shown),
                row.end_reason,
                row.ended_by,
            ]
            for row in found.leases
        ],
    )


def _lease_summary(lease: LeaseRow, zone: tzinfo = UTC) -> str:
    text = (
        f"lease {lease.lease_id}, pool {lease.pool}, started "
        f"{show_time(lease.started_at, zone)}, last use "
        f"{show_time(lease.last_used_at, zone)}"
    )
    if lease.ended_at is None:
        return text + ", still open"
    text += f", ended {show_time(lease.ended_at, zone)} ({lease.end_reason}"
    if lease.ended_by:
        text += f" by {lease.ended_by}"
    return text + ")"
