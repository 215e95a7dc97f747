"""The audit report as one self-contained HTML page with inline SVG charts.

No scripts, fonts, images or style sheets are loaded from anywhere: the
page can be mailed, archived and opened offline years later. Every text
that came from outside (DNs, reasons, command output) is escaped.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from html import escape
from typing import Any

from poolmgr.audit import AuditReport, PoolOccupancy
from poolmgr.audit_formats import history_verdict, printable, sections
from poolmgr.history import show_time

LEASED, FREE, OUT = "#3b6ea5", "#8cc084", "#e0a030"
OLD = "#c0504d"
WIDTH = 760

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #222; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.meta { color: #555; }
.verdict { padding: 0.6em 1em; border-radius: 4px; font-weight: 600; }
.ok { background: #e6f4e6; border: 1px solid #8cc084; }
.bad { background: #fbe9e7; border: 1px solid #c0504d; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
td.dn { font-family: ui-monospace, monospace; font-size: 0.9em; }
.none { color: #777; font-style: italic; }
svg text { font: 12px system-ui, sans-serif; fill: #222; }
"""


def render_html(report: AuditReport, zone: tzinfo = UTC) -> str:
    """Return the report as one HTML document, times shown in zone."""
    page = _Page(zone)
    page.add(f"<h1>poolmgr audit</h1><p class='meta'>{_meta(report, page)}</p>")
    page.verdict(history_verdict(report.history), not report.history.violations)
    for section in sections(report):
        suffix = "" if section.count is None else f" ({section.count})"
        page.add(f"<h2>{escape(section.title)}{suffix}</h2>")
        if section.key == "pools":
            page.add(occupancy_chart(report.pools))
        elif section.key == "idle":
            page.add(idle_chart(report.idle))
        if section.note:
            page.add(f"<p>{escape(section.note)}</p>")
        page.table(section.headers, section.rows)
    return page.document()


def occupancy_chart(pools: Sequence[PoolOccupancy]) -> str:
    """Return an SVG of stacked bars per pool: leased, free, out of service."""
    left, bar_area, row = 150, WIDTH - 150 - 130, 26
    scale = max([p.in_service for p in pools] + [1])
    height = 34 + row * max(len(pools), 1)
    parts = [_svg_open(height, "Occupancy per pool"), _legend()]
    for i, pool in enumerate(pools):
        y = 30 + i * row
        parts.append(_text(left - 8, y + 15, pool.name, anchor="end"))
        x = float(left)
        for count, colour, label in (
            (pool.leased, LEASED, "leased"),
            (pool.free, FREE, "free"),
            (pool.out_of_service, OUT, "out of service"),
        ):
            width = bar_area * count / scale
            if width > 0:
                tip = f"{pool.name}: {count} {label}"
                parts.append(_rect(x, y + 3, width, row - 8, colour, tip))
            x += width
        summary = f"{pool.leased}/{pool.in_service} ({pool.occupancy:.0%})"
        parts.append(_text(x + 6, y + 15, summary))
    if not pools:
        parts.append(_text(left, 45, "no pools"))
    return "".join(parts) + "</svg>"


def idle_chart(buckets: Sequence[tuple[str, int]]) -> str:
    """Return an SVG histogram of open leases by time since their last use."""
    height, base, top = 240, 200, 24
    slot = (WIDTH - 60) / max(len(buckets), 1)
    scale = max([count for _, count in buckets] + [1])
    parts = [_svg_open(height, "Time since last use of open leases")]
    parts.append(
        f"<line x1='40' y1='{base}' x2='{WIDTH - 10}' y2='{base}' stroke='#888'/>"
    )
    for i, (label, count) in enumerate(buckets):
        x = 40 + i * slot + slot * 0.15
        bar = (base - top) * count / scale
        colour = OLD if i == len(buckets) - 1 else LEASED
        parts.append(_rect(x, base - bar, slot * 0.7, bar, colour, f"{label}: {count}"))
        middle = x + slot * 0.35
        parts.append(_text(middle, base - bar - 5, str(count), anchor="middle"))
        parts.append(_text(middle, base + 18, label, anchor="middle"))
    return "".join(parts) + "</svg>"


class _Page:
    """Collects the body of the page; cells are escaped on the way in."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self.body: list[str] = []

    def add(self, html: str) -> None:
        self.body.append(html)

    def verdict(self, text: str, good: bool) -> None:
        self.add(f"<p class='verdict {'ok' if good else 'bad'}'>{escape(text)}</p>")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            self.add("<p class='none'>none</p>")
            return
        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        lines = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
        for row in rows:
            cells = "".join(self._cell(h, v) for h, v in zip(headers, row, strict=True))
            lines.append(f"<tr>{cells}</tr>")
        self.add("\n".join(lines) + "</tbody></table>")

    def time(self, value: datetime | None) -> str:
        return show_time(value, self.zone)

    def document(self) -> str:
        body = "\n".join(self.body)
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>poolmgr audit</title><style>{_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n"
        )

    def _cell(self, header: str, value: Any) -> str:
        css = " class='dn'" if "DN" in header or header == "Last holder" else ""
        if value is None:
            text = "-"
        elif isinstance(value, datetime):
            text = self.time(value)
        else:
            text = printable(value)
        return f"<td{css}>{escape(text)}</td>"


def _meta(report: AuditReport, page: _Page) -> str:
    return escape(
        f"Generated {page.time(report.generated_at)}; events from "
        f"{page.time(report.since)}; quiet period {report.quiet_period}."
    )


def _svg_open(height: int, title: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}'"
        f" viewBox='0 0 {WIDTH} {height}' role='img' aria-label='{escape(title)}'>"
        f"<title>{escape(title)}</title>"
    )


def _legend() -> str:
    parts = []
    for i, (colour, label) in enumerate(
        ((LEASED, "leased"), (FREE, "free"), (OUT, "out of service"))
    ):
        x = 150 + i * 130
        parts.append(_rect(x, 6, 12, 12, colour, label))
        parts.append(_text(x + 17, 16, label))
    return "".join(parts)


def _rect(x: float, y: float, width: float, height: float, fill: str, tip: str) -> str:
    return (
        f"<rect x='{x:.1f}' y='{y:.1f}' width='{width:.1f}' height='{height:.1f}'"
        f" fill='{fill}'><title>{escape(tip)}</title></rect>"
    )


def _text(x: float, y: float, text: str, *, anchor: str = "start") -> str:
    return (
        f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}'>"
        f"{escape(printable(text))}</text>"
    )
