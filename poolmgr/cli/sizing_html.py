"""The sizing report as one self-contained HTML page with inline SVG charts.

No script and no external file: the page opens from a mail attachment or a
web directory as it is. Every value that came from the database or a VO
card is escaped.
"""

from datetime import datetime, timedelta
from html import escape

from poolmgr.sizing import PoolSizing, SizingReport
from poolmgr.timeutil import format_time
from poolmgr.wording import counted

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; }
td.name, td.text { text-align: left; }
tr.risk td { background: #fde8e8; }
section { display: inline-block; margin: 0 2em 2em 0; vertical-align: top; }
svg text { font-size: 11px; font-family: sans-serif; }
"""
COLUMNS = (
    "pool",
    "VO",
    "kind",
    "declared",
    "accounts",
    "leased",
    "free",
    "frozen",
    "floor",
    "new/30d",
    "runs out",
    "recommend",
    "risk",
)
LEASED, FROZEN, FREE, FLOOR = "#3a6ea5", "#999999", "#6aa84f", "#cc0000"
WIDTH, HEIGHT, MARGIN = 480, 200, 40


def render_html(report: SizingReport) -> str:
    """Return the whole page."""
    now = report.generated_at
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>poolmgr sizing {escape(format_time(now))}</title>",
        f"<style>{STYLE}</style>\n</head>\n<body>",
        "<h1>Pool sizing</h1>",
        f"<p>At {escape(format_time(now))}; quiet period "
        f"{escape(report.quiet_period)}; growth over {escape(report.window)}; "
        f"headroom {report.headroom}%. Pools at risk come first.</p>",
        _pool_table(report),
        _glexec_table(report),
        "<h2>Occupancy and forecast</h2>",
        *(_pool_section(row, now) for row in report.pools),
        "</body>\n</html>\n",
    ]
    return "\n".join(part for part in parts if part)


def _row(cells: list[str], css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f"<tr{klass}>" + "".join(cells) + "</tr>"


def _td(value: object, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f"<td{klass}>{escape(str(value))}</td>"


def _pool_table(report: SizingReport) -> str:
    header = _row([f"<th>{escape(c)}</th>" for c in COLUMNS])
    rows = [
        _row(
            [
                _td(row.name, "name"),
                _td(row.vo, "text"),
                _td(row.kind or "-", "text"),
                *(
                    _td(v)
                    for v in (
                        row.declared,
                        row.provisioned,
                        row.leased,
                        row.free,
                        row.frozen,
                        row.floor,
                        f"{row.growth:g}",
                    )
                ),
                _td(_when(row, report.generated_at), "text"),
                _td(row.recommended),
                _td("; ".join(row.risks) or "-", "text"),
            ],
            "risk" if row.at_risk else "",
        )
        for row in report.pools
    ]
    return "<table>\n" + "\n".join([header, *rows]) + "\n</table>"


def _glexec_table(report: SizingReport) -> str:
    if not report.glexec:
        return ""
    header = _row(
        [
            f"<th>{escape(c)}</th>"
            for c in ("VO", "pilot pools", "pilot accounts", "pilot persons")
            + ("payload pools", "payload accounts", "payload persons", "new/30d")
        ]
    )
    rows = [
        _row(
            [
                _td(d.vo, "name"),
                _td(", ".join(d.pilot_pools) or "-", "text"),
                _td(d.pilot_accounts),
                _td(d.pilot_persons),
                _td(", ".join(d.payload_pools) or "-", "text"),
                _td(d.payload_accounts),
                _td(d.payload_persons),
                _td(f"{d.payload_growth:g}"),
            ]
        )
        for d in report.glexec
    ]
    return (
        "<h2>gLExec VOs</h2>\n<p>Every payload owner needs an account of their "
        "own in the VO's user pools; pilots need only the pilot accounts.</p>\n"
        "<table>\n" + "\n".join([header, *rows]) + "\n</table>"
    )


def _when(row: PoolSizing, now: datetime) -> str:
    if row.forecast is None:
        return "-"
    return "now" if row.forecast <= now else row.forecast.strftime("%Y-%m-%d")


def _pool_section(row: PoolSizing, now: datetime) -> str:
    return (
        f"<section>\n<h3>{escape(row.name)} ({escape(row.vo)})</h3>\n"
        f"{occupancy_svg(row)}\n{forecast_svg(row, now)}\n</section>"
    )


def occupancy_svg(row: PoolSizing) -> str:
    """Return a bar of leased, frozen and free accounts with the floor marked."""
    total = max(row.provisioned, row.floor, 1)
    scale = (WIDTH - 2) / total
    x, bars = 1.0, []
    for count, colour, label in (
        (row.leased, LEASED, "leased"),
        (row.frozen, FROZEN, "frozen"),
        (row.free, FREE, "free"),
    ):
        width = count * scale
        bars.append(
            f'<rect x="{x:.1f}" y="4" width="{width:.1f}" height="18" '
            f'fill="{colour}"><title>{count} {label}</title></rect>'
        )
        x += width
    floor_x = 1 + row.floor * scale
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="44" '
        f'role="img" aria-label="occupancy of {escape(row.name)}">'
        + "".join(bars)
        + f'<line x1="{floor_x:.1f}" y1="0" x2="{floor_x:.1f}" y2="26" '
        f'stroke="{FLOOR}" stroke-width="2"><title>floor {row.floor}</title></line>'
        f'<text x="1" y="40">{row.leased} leased, {row.frozen} frozen, '
        f"{row.free} free; floor {row.floor}</text></svg>"
    )


def _demand_label(row: PoolSizing) -> str:
    persons = counted(row.floor, "person")
    if not row.locked_idle:
        return persons
    return f"{persons} + {row.locked_idle} idle frozen"


def forecast_svg(row: PoolSizing, now: datetime) -> str:
    """Return a line chart: persons seen over the last period and the forecast.

    The forecast starts from the demand: the floor plus the held or
    ban-frozen accounts that no person of the floor stands for.
    """
    start = row.history[0][0] if row.history else now - timedelta(days=180)
    end = now + (now - start)
    projected = row.demand + row.growth * (end - now).total_seconds() / 86_400 / 30
    top = max(row.capacity, projected, *(n for _, n in row.history), 1) * 1.1

    def x(at: datetime) -> float:
        span = (end - start).total_seconds() or 1
        return MARGIN + (at - start).total_seconds() / span * (WIDTH - 2 * MARGIN)

    def y(value: float) -> float:
        return HEIGHT - MARGIN - value / top * (HEIGHT - 2 * MARGIN)

    history = " ".join(f"{x(at):.1f},{y(n):.1f}" for at, n in row.history)
    parts = [
        f'<line x1="{MARGIN}" y1="{y(0):.1f}" x2="{WIDTH - MARGIN}" y2="{y(0):.1f}" '
        'stroke="#444"/>',
        f'<line x1="{MARGIN}" y1="{y(row.capacity):.1f}" x2="{WIDTH - MARGIN}" '
        f'y2="{y(row.capacity):.1f}" stroke="{FLOOR}" stroke-dasharray="6 3"/>',
        f'<text x="{MARGIN}" y="{y(row.capacity) - 4:.1f}">'
        f"{counted(row.capacity, 'account')} in service</text>",
        f'<polyline points="{history}" fill="none" stroke="{LEASED}" '
        'stroke-width="2"><title>persons seen in the quiet period</title></polyline>',
        f'<line x1="{x(now):.1f}" y1="{y(row.demand):.1f}" x2="{x(end):.1f}" '
        f'y2="{y(projected):.1f}" stroke="{LEASED}" stroke-dasharray="4 4">'
        f"<title>forecast at {counted(row.growth, 'new person')} per 30 days"
        "</title></line>",
        f'<text x="{x(now) - 4:.1f}" y="{y(row.demand) - 6:.1f}" text-anchor="end">'
        f"{_demand_label(row)}</text>",
        f'<line x1="{x(now):.1f}" y1="{MARGIN / 2}" x2="{x(now):.1f}" '
        f'y2="{y(0):.1f}" stroke="#888" stroke-dasharray="2 2"/>',
    ]
    if row.forecast is not None and now < row.forecast <= end:
        parts.append(
            f'<circle cx="{x(row.forecast):.1f}" cy="{y(row.capacity):.1f}" r="4" '
            f'fill="{FLOOR}"><title>runs out {row.forecast:%Y-%m-%d}</title></circle>'
        )
    for at, anchor in ((start, "start"), (now, "middle"), (end, "end")):
        label = "now" if at == now else at.strftime("%Y-%m-%d")
        parts.append(
            f'<text x="{x(at):.1f}" y="{HEIGHT - MARGIN / 2:.1f}" '
            f'text-anchor="{anchor}">{label}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="forecast of {escape(row.name)}">'
        + "".join(parts)
        + "</svg>"
    )
