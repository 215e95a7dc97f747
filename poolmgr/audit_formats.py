"""The audit report as text tables, JSON and CSV.

Text and HTML show times in UTC unless a zone is given; JSON and CSV always
carry ISO 8601 UTC times.

The CSV is one table with a ``section`` column; the other columns are
filled as each section needs:

- ``summary``: text = item (generated_at, since, quiet_period,
  leases_checked, violations), time, count or value = its value (the
  quiet period, a duration, in value);
- ``pool``: pool, text = measure (size, leased, free, out_of_service,
  retired), count;
- ``idle``: text = bucket of time since last use, count = open leases;
- ``recyclable`` and ``due_soon``: pool, account, dn, lease_id, time = last
  use, until = when the quiet period ends;
- ``override``: time, actor, pool, account, dn, lease_id, text = reason,
  until = when the quiet period would have ended;
- ``cleanup_failed``: time, actor, pool, account, dn, lease_id, text = detail;
- ``out_of_service``: pool, account, dn = last holder, time = since when;
- ``violation``: pool, account, dn and lease_id of the new holder, time = its
  start, until = end of the quiet period, text = the problem and the
  previous lease;
- ``restricted``: pool, account, dn = holder, text = frozen and/or held and
  why;
- ``ban_event``: time, actor, account or dn = subject, text = the event kind
  and its detail.
"""

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from poolmgr.audit import DUE_WINDOW, AuditReport, DueLease, PoolOccupancy
from poolmgr.banviews import BanAudit
from poolmgr.history import HistoryCheck, Violation, show_time
from poolmgr.timeutil import format_time

CSV_COLUMNS = (
    "section",
    "pool",
    "account",
    "dn",
    "lease_id",
    "time",
    "until",
    "actor",
    "text",
    "count",
    "value",
)


@dataclass(frozen=True)
class Section:
    """One part of the report as a titled table, shared by text and HTML."""

    key: str
    title: str
    count: int | None
    headers: list[str]
    rows: list[list[Any]]
    note: str | None = None


def sections(report: AuditReport) -> list[Section]:
    """Return the report's tables in reading order."""
    due = ["Account", "Pool", "Last use", "Due", "Lease", "DN"]
    future = report.future_last_use
    return [
        Section(
            "pools",
            "Occupancy per pool",
            len(report.pools),
            ["Pool", "VO", "Size", "Leased", "Free", "Out of service", "Retired"]
            + ["Used"],
            [pool_cells(p) for p in report.pools],
        ),
        Section(
            "idle",
            "Time since last use of open leases",
            None,
            ["Idle", "Leases"],
            [list(bucket) for bucket in report.idle],
            f"{future} open lease(s) have a last use in the future (a node with "
            "a fast clock); they are never treated as old."
            if future
            else None,
        ),
        Section(
            "recyclable",
            "Recyclable now",
            len(report.recyclable),
            due,
            [_due_cells(r) for r in report.recyclable],
        ),
        Section(
            "due_soon",
            f"Due in the next {DUE_WINDOW.days} days",
            len(report.due_soon),
            due,
            [_due_cells(r) for r in report.due_soon],
        ),
        Section(
            "overrides",
            "Overrides in the period",
            len(report.overrides),
            ["Time", "Account", "Pool", "By", "Reason", "DN"],
            [
                [e.at, e.account, e.pool, e.actor, e.reason, e.dn]
                for e in report.overrides
            ],
        ),
        Section(
            "cleanup_failures",
            "Failed cleanups in the period",
            len(report.cleanup_failures),
            ["Time", "Account", "Pool", "By", "Detail"],
            [
                [e.at, e.account, e.pool, e.actor, e.reason]
                for e in report.cleanup_failures
            ],
        ),
        Section(
            "out_of_service",
            "Out of service now (awaiting cleanup)",
            len(report.out_of_service),
            ["Account", "Pool", "Since", "Last holder"],
            [
                [o.account, o.pool, o.since, o.last_holder]
                for o in report.out_of_service
            ],
        ),
        Section(
            "history",
            "History check: handovers inside the quiet period without an override",
            len(report.history.violations),
            ["Account", "Pool", "Problem", "Started", "Quiet until", "DN"]
            + ["Previous DN"],
            [_violation_cells(v) for v in report.history.violations],
            history_verdict(report.history),
        ),
        *ban_sections(report.bans),
    ]


def ban_sections(bans: BanAudit) -> list[Section]:
    """Return the tables of frozen and held accounts and of the period's events."""
    return [
        Section(
            "restricted",
            "Frozen and held accounts now (never recycled)",
            len(bans.restricted),
            ["Account", "Pool", "Status", "Why", "Holder"],
            [[r.account, r.pool, r.status, r.why, r.holder] for r in bans.restricted],
            f"{bans.hand_bans} ban(s) entered by hand and {bans.source_bans} "
            "read from central lists are in force.",
        ),
        Section(
            "ban_events",
            "Bans, holds and refused mappings in the period",
            len(bans.events),
            ["Time", "Event", "By", "Subject", "Detail"],
            [[e.at, e.kind, e.actor, e.subject, e.detail] for e in bans.events],
        ),
    ]


def render_text(report: AuditReport, zone: tzinfo = UTC) -> str:
    """Return the report as plain text tables, times in zone."""
    t = _Text(zone)
    t.line(
        f"poolmgr audit generated {t.time(report.generated_at)}; period from "
        f"{t.time(report.since)}; quiet period {report.quiet_period}"
    )
    for section in sections(report):
        title = section.title
        t.line("")
        t.line(title if section.count is None else f"{title} ({section.count})")
        if section.note:
            t.line(section.note)
        if section.rows or not section.note:
            # An empty table says "(none)", unless its note said it already.
            t.table([h.upper() for h in section.headers], section.rows)
    return t.text()


def history_verdict(check: HistoryCheck) -> str:
    """Return one sentence on the outcome of the history check."""
    if not check.violations:
        return (
            f"{check.leases_checked} lease(s) checked: no account went to another "
            "person inside its quiet period without an override."
        )
    return (
        f"{check.leases_checked} lease(s) checked: {len(check.violations)} "
        "handover(s) to another person inside the quiet period without an override."
    )


def render_json(report: AuditReport) -> str:
    """Return the report as a JSON document; times in UTC."""
    data = asdict(report)
    data["idle"] = [{"bucket": label, "leases": n} for label, n in report.idle]
    for pool, source in zip(data["pools"], report.pools, strict=True):
        pool["in_service"], pool["occupancy"] = source.in_service, source.occupancy
    return json.dumps(data, indent=2, default=_json_default, ensure_ascii=False) + "\n"


def render_csv(report: AuditReport) -> str:
    """Return the report as one CSV table with a section column (see module doc)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_csv_rows(report))
    return out.getvalue()


def _csv_rows(report: AuditReport) -> Iterable[dict[str, Any]]:
    yield from (
        _csv("summary", text="generated_at", time=report.generated_at),
        _csv("summary", text="since", time=report.since),
        _csv("summary", text="quiet_period", value=report.quiet_period),
        _csv("summary", text="leases_checked", count=report.history.leases_checked),
        _csv("summary", text="violations", count=len(report.history.violations)),
    )
    for p in report.pools:
        for measure in ("size", "leased", "free", "out_of_service", "retired"):
            yield _csv("pool", pool=p.name, text=measure, count=getattr(p, measure))
    for label, count in report.idle:
        yield _csv("idle", text=label, count=count)
    for section, rows in (
        ("recyclable", report.recyclable),
        ("due_soon", report.due_soon),
    ):
        for r in rows:
            yield _csv(
                section,
                pool=r.pool,
                account=r.account,
                dn=r.dn,
                lease_id=r.lease_id,
                time=r.last_use,
                until=r.due,
            )
    for section, entries in (
        ("override", report.overrides),
        ("cleanup_failed", report.cleanup_failures),
    ):
        for e in entries:
            yield _csv(
                section,
                pool=e.pool,
                account=e.account,
                dn=e.dn,
                lease_id=e.lease_id,
                time=e.at,
                actor=e.actor,
                text=e.reason,
                until=e.details.get("quiet_until"),
            )
    for o in report.out_of_service:
        yield _csv(
            "out_of_service",
            pool=o.pool,
            account=o.account,
            dn=o.last_holder,
            time=o.since,
        )
    for v in report.history.violations:
        yield _csv(
            "violation",
            pool=v.pool,
            account=v.account,
            dn=v.dn,
            lease_id=v.lease_id,
            time=v.started_at,
            until=v.quiet_until,
            text=f"{v.problem}; previous lease {v.previous_lease_id} "
            f"of {v.previous_dn}",
        )
    for kept in report.bans.restricted:
        text = f"{kept.status}: {kept.why}"
        yield _csv(
            "restricted",
            pool=kept.pool,
            account=kept.account,
            dn=kept.holder,
            text=text,
        )
    for event in report.bans.events:
        text = f"{event.kind}: {event.detail}"
        yield _csv(
            "ban_event", time=event.at, actor=event.actor, dn=event.subject, text=text
        )


def _csv(section: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, "")
    row["section"] = section
    for key, value in values.items():
        row[key] = (
            format_time(value)
            if isinstance(value, datetime)
            else ("" if value is None else value)
        )
    return row


def _due_cells(r: DueLease) -> list[Any]:
    return [r.account, r.pool, r.last_use, r.due, r.lease_id, r.dn]


def _violation_cells(v: Violation) -> list[Any]:
    return [
        v.account,
        v.pool,
        v.problem,
        v.started_at,
        v.quiet_until,
        v.dn,
        v.previous_dn,
    ]


def pool_cells(p: PoolOccupancy) -> list[Any]:
    """Return the table cells of one pool: name, counts and the leased share."""
    name = p.name if p.live else f"{p.name} (retired)"
    return [
        name,
        p.vo,
        p.size,
        p.leased,
        p.free,
        p.out_of_service,
        p.retired,
        f"{p.occupancy:.0%}",
    ]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class _Text:
    """Accumulates the text report: headings, sentences and aligned tables."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self.lines: list[str] = []

    def time(self, value: datetime | None) -> str:
        return show_time(value, self.zone)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            self.lines.append("(none)")
            return
        cells = [[self._cell(v) for v in row] for row in rows]
        widths = [
            max(len(r[i]) for r in [list(headers), *cells]) for i in range(len(headers))
        ]
        for row in [list(headers), *cells]:
            self.lines.append(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            )

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def _cell(self, value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, datetime):
            return self.time(value)
        return printable(value) or "-"


def printable(value: Any) -> str:
    """Return value on one line with control characters as \\xNN.

    A DN is attacker-controlled text; it must not forge report lines.
    """
    text = " ".join(str(value).split())
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
