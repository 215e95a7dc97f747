"""The sizing report: poolmgr sizing, as text, JSON, CSV or HTML."""

import csv
import io
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from poolmgr.cli.output import cell
from poolmgr.cli.sizing_html import render_html
from poolmgr.cli.state import state
from poolmgr.db import unit_of_work
from poolmgr.errors import VoCardError
from poolmgr.files import write_atomically
from poolmgr.sizing import GlexecDemand, PoolSizing, SizingOptions, SizingReport
from poolmgr.sizing import sizing_report as build_report
from poolmgr.timeutil import Duration, format_time, utcnow
from poolmgr.vocards import VoCard, load_cards

EPILOG = """FLOOR is the distinct persons seen in the last quiet period: their
accounts cannot be recycled, so the pool needs at least that many. NEW/30D
counts persons whose first lease in the pool started within --window,
per 30 days. FROZEN counts the accounts nobody new can get whatever their
idle time: held, frozen by a ban on their holder, or out of service (any
state but free, leased and retired); LEASED and FREE leave them out. RUNS
OUT is when FLOOR, plus the held or ban-frozen accounts nobody of FLOOR
used within the quiet period, growing linearly, reaches the accounts in
service ('now' if it has; '-' if it does not grow). RECOMMEND is that
demand plus one quiet period of growth and --headroom, rounded up to a
multiple of 5 (at least 5). Pools at risk (running out within the quiet
period, or under 10% free) come first. For VOs whose card sets glexec, the
demand of payload owners (user pools) is shown apart from the pilot
accounts. --output replaces the file atomically. Exit codes: 0 reported; 1
the file could not be written; 2 bad option (e.g. a --window that is not
longer than zero); 8 database unavailable."""


class Format(StrEnum):
    """Output formats of the sizing report."""

    text = "text"
    json = "json"
    csv = "csv"
    html = "html"


def register(app: typer.Typer) -> None:
    """Add the sizing command to app."""
    app.command("sizing", epilog=EPILOG)(sizing_command)


def sizing_command(
    output_format: Annotated[
        Format, typer.Option("--format", "-f", help="Output format.")
    ] = Format.text,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to replace.")
    ] = None,
    window: Annotated[
        str, typer.Option(help="How far back new persons are counted.")
    ] = "90 days",
    headroom: Annotated[
        int, typer.Option(min=0, max=1000, help="Percent added to a recommendation.")
    ] = 20,
) -> None:
    """Report each pool's demand, growth and when it runs out; at risk first."""
    settings = state.settings()
    window_span = Duration.parse_positive(window, "The --window")
    options = SizingOptions(window=window_span, headroom=headroom)
    cards = _cards(settings.vocards)
    with unit_of_work(state.engine(), write=False) as session:
        report = build_report(session, settings, cards, utcnow(), options)
    text = RENDERERS[output_format](report)
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_atomically(output, text)


def _cards(path: Path) -> list[VoCard]:
    try:
        return load_cards(path)
    except VoCardError:
        typer.echo(
            f"poolmgr: warning: VO cards in {path} cannot be read; pool types and "
            "gLExec demand are left out (run 'poolmgr vocards check')",
            err=True,
        )
        return []


def _when(row: PoolSizing, now: datetime) -> str:
    if row.forecast is None:
        return "-"
    if row.forecast <= now:
        return "now"
    return row.forecast.strftime("%Y-%m-%d")


POOL_COLUMNS = (
    "POOL",
    "VO",
    "KIND",
    "DECLARED",
    "ACCOUNTS",
    "LEASED",
    "FREE",
    "FROZEN",
    "FLOOR",
    "NEW/30D",
    "RUNS OUT",
    "RECOMMEND",
    "RISK",
)
GLEXEC_COLUMNS = (
    "VO",
    "PILOT POOLS",
    "PILOT ACCOUNTS",
    "PILOT PERSONS",
    "PAYLOAD POOLS",
    "PAYLOAD ACCOUNTS",
    "PAYLOAD PERSONS",
    "PAYLOAD NEW/30D",
)


def pool_cells(row: PoolSizing, now: datetime) -> list[Any]:
    """Return the text cells of one pool, in POOL_COLUMNS order."""
    return [
        row.name,
        row.vo,
        row.kind,
        row.declared,
        row.provisioned,
        row.leased,
        row.free,
        row.frozen,
        row.floor,
        f"{row.growth:g}",
        _when(row, now),
        row.recommended,
        "; ".join(row.risks) or "-",
    ]


def glexec_cells(demand: GlexecDemand) -> list[Any]:
    """Return the text cells of one gLExec VO, in GLEXEC_COLUMNS order."""
    return [
        demand.vo,
        ",".join(demand.pilot_pools) or "-",
        demand.pilot_accounts,
        demand.pilot_persons,
        ",".join(demand.payload_pools) or "-",
        demand.payload_accounts,
        demand.payload_persons,
        f"{demand.payload_growth:g}",
    ]


def render_text(report: SizingReport) -> str:
    """Return the report as aligned tables."""
    now = report.generated_at
    lines = [
        f"Pool sizing at {format_time(now)}: quiet period {report.quiet_period}, "
        f"growth over {report.window}, headroom {report.headroom}%.",
        *_table(POOL_COLUMNS, [pool_cells(row, now) for row in report.pools]),
    ]
    if report.glexec:
        lines += [
            "",
            "gLExec VOs: every payload owner needs an account in the VO's user pools.",
            *_table(GLEXEC_COLUMNS, [glexec_cells(d) for d in report.glexec]),
        ]
    return "\n".join(lines) + "\n"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[cell(value) for value in row] for row in rows]
    widths = [
        max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)
    ]
    return [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(headers), *cells]
    ]


def render_json(report: SizingReport) -> str:
    """Return the report as one JSON object."""
    data = {
        "generated_at": format_time(report.generated_at),
        "quiet_period": report.quiet_period,
        "window": report.window,
        "headroom": report.headroom,
        "pools": [
            {
                **{k: v for k, v in row.__dict__.items() if k != "history"},
                "forecast": format_time(row.forecast) if row.forecast else None,
                "risks": list(row.risks),
                "at_risk": row.at_risk,
                "capacity": row.capacity,
                "demand": row.demand,
                "history": [
                    {"at": format_time(at), "persons": n} for at, n in row.history
                ],
            }
            for row in report.pools
        ],
        "glexec": [
            {
                **demand.__dict__,
                "pilot_pools": list(demand.pilot_pools),
                "payload_pools": list(demand.payload_pools),
            }
            for demand in report.glexec
        ],
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = (
    "pool",
    "vo",
    "kind",
    "glexec",
    "declared",
    "provisioned",
    "leased",
    "free",
    "frozen",
    "floor",
    "new_persons",
    "growth_per_30d",
    "forecast",
    "recommended",
    "at_risk",
    "risks",
)


def render_csv(report: SizingReport) -> str:
    """Return one CSV row per pool, with a header row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.pools:
        writer.writerow(
            [
                row.name,
                row.vo,
                row.kind or "",
                "yes" if row.glexec else "no",
                row.declared,
                row.provisioned,
                row.leased,
                row.free,
                row.frozen,
                row.floor,
                row.new_persons,
                f"{row.growth:g}",
                format_time(row.forecast) if row.forecast else "",
                row.recommended,
                "yes" if row.at_risk else "no",
                "; ".join(row.risks),
            ]
        )
    return buffer.getvalue()


RENDERERS: dict[Format, Callable[[SizingReport], str]] = {
    Format.text: render_text,
    Format.json: render_json,
    Format.csv: render_csv,
    Format.html: render_html,
}
