"""The audit report: its content, and each of its four formats."""

import csv
import io
import json
from html.parser import HTMLParser

import pytest
from sqlalchemy import select, update

from poolmgr.audit import build_report, idle_bucket
from poolmgr.audit_formats import render_csv, render_json, render_text
from poolmgr.audit_html import render_html
from poolmgr.db import unit_of_work
from poolmgr.dn import parse_dn
from poolmgr.holds import hold_account
from poolmgr.identities import get_or_create_identity
from poolmgr.models import Account, Identity, Lease, Pool
from poolmgr.recycle import Recycler
from poolmgr.site_commands import CommandResult
from tests.conftest import make_settings
from tests.factories import at, map_dn, pool, sync

NOW = at("2025-06-01T00:00:00Z")
MAY = at("2025-05-10T00:00:00Z")
HOSTILE = "/DC=org/DC=example/CN=<script>alert(1)<\\/script> & Co"
REASON = "home dir 2 TB, user left VO"


def failing_cleanup(argv, variables, timeout) -> CommandResult:
    return CommandResult(4, "rm: cannot remove '/home/cms001': busy")


@pytest.fixture
def report(sqlite_engine):
    """A site with leases of every age, an override, a failed cleanup and a
    planted violation, audited on 1 June 2025."""
    settings = make_settings(
        quiet_period="6 months", recycle={"cleanup_command": ["/usr/bin/clean"]}
    )
    sync(
        sqlite_engine,
        settings,
        [pool("atlas", "atlas", 6, "/atlas"), pool("cms", "cms", 2, "/cms")],
    )
    for dn, when in (
        ("/DC=org/DC=example/CN=Old", "2024-11-01T00:00:00Z"),
        ("/DC=org/DC=example/CN=Soon", "2024-12-20T00:00:00Z"),
        ("/DC=org/DC=example/CN=Week", "2025-05-28T00:00:00Z"),
        ("/DC=org/DC=example/CN=Fast Clock", "2025-06-03T00:00:00Z"),
        (HOSTILE, "2025-01-20T00:00:00Z"),
    ):
        map_dn(sqlite_engine, settings, dn, "/atlas", now=at(when))
    map_dn(sqlite_engine, settings, "/DC=org/DC=example/CN=Gone", "/cms", now=MAY)
    recycler = Recycler(sqlite_engine, settings, actor="admin1", runner=_ok)
    recycler.force("atlas005", REASON, now=at("2025-05-20T00:00:00Z"))
    map_dn(sqlite_engine, settings, "/DC=org/DC=example/CN=Next", "/atlas", now=NOW)
    Recycler(sqlite_engine, settings, actor="cron", runner=failing_cleanup).force(
        "cms001", "left the VO", now=at("2025-05-25T00:00:00Z")
    )
    _plant_violation(sqlite_engine)
    with unit_of_work(sqlite_engine, write=False) as session:
        return build_report(session, settings, NOW, at("2025-05-01T00:00:00Z"))


def _ok(argv, variables, timeout) -> CommandResult:
    return CommandResult(0, "")


def _plant_violation(engine) -> None:
    """Kim held cms002 until March; Lee got it in April: inside six months."""
    with unit_of_work(engine) as session:
        account = session.scalar(select(Account).where(Account.name == "cms002"))
        pool_id = session.scalar(select(Pool.id).where(Pool.name == "cms"))
        for dn, start, end in (
            ("/DC=org/DC=example/CN=Kim", "2025-01-01T00:00Z", "2025-03-01T00:00Z"),
            ("/DC=org/DC=example/CN=Lee", "2025-04-01T00:00Z", "2025-04-02T00:00Z"),
        ):
            identity = get_or_create_identity(session, parse_dn(dn))
            session.add(
                Lease(
                    account_id=account.id,
                    identity_id=identity.id,
                    pool_id=pool_id,
                    started_at=at(start),
                    last_used_at=at(start),
                    ended_at=at(end),
                    end_reason="released",
                )
            )
            session.flush()


def test_report_counts_pools_by_state(report):
    assert [
        (p.name, p.size, p.leased, p.free, p.out_of_service, p.retired)
        for p in report.pools
    ] == [("atlas", 6, 5, 1, 0, 0), ("cms", 2, 0, 1, 1, 0)]
    assert report.pools[0].occupancy == 5 / 6
    assert report.pools[1].occupancy == 0.0


def test_report_lists_recyclable_and_due_leases(report):
    assert [(d.account, d.due) for d in report.recyclable] == [
        ("atlas001", at("2025-05-01T00:00:00Z"))
    ]
    assert [(d.account, d.due) for d in report.due_soon] == [
        ("atlas002", at("2025-06-20T00:00:00Z"))
    ]


def test_report_buckets_time_since_last_use(report):
    assert report.idle == [
        ("<1 d", 2),
        ("<1 wk", 1),
        ("<1 mo", 0),
        ("<3 mo", 0),
        ("<6 mo", 1),
        (">=6 mo", 1),
    ]
    assert report.future_last_use == 1


def test_report_lists_overrides_failures_and_violations(report):
    assert [(e.account, e.actor, e.reason) for e in report.overrides] == [
        ("atlas005", "admin1", REASON),
        ("cms001", "cron", "left the VO"),
    ]
    [failure] = report.cleanup_failures
    assert (failure.account, failure.actor) == ("cms001", "cron")
    assert "exit status 4: rm: cannot remove" in failure.reason
    assert [(o.account, o.last_holder) for o in report.out_of_service] == [
        ("cms001", "/DC=org/DC=example/CN=Gone")
    ]
    [violation] = report.history.violations
    assert (violation.account, violation.dn) == ("cms002", "/DC=org/DC=example/CN=Lee")


@pytest.mark.parametrize(
    ("last_use", "bucket"),
    [
        ("2025-05-31T00:00:01Z", "<1 d"),
        ("2025-05-31T00:00:00Z", "<1 wk"),
        ("2025-05-01T00:00:01Z", "<1 mo"),
        ("2025-05-01T00:00:00Z", "<3 mo"),
        ("2024-12-01T00:00:01Z", "<6 mo"),
        ("2024-12-01T00:00:00Z", ">=6 mo"),
        ("2025-07-01T00:00:00Z", "<1 d"),
    ],
    ids=["day", "day-edge", "month", "month-edge", "half-year", "half-edge", "future"],
)
def test_idle_buckets_have_exact_edges(last_use, bucket):
    assert idle_bucket(at(last_use), NOW) == bucket


def test_text_report_shows_the_override_with_actor_and_reason(report):
    text = render_text(report)
    assert "Overrides in the period (2)" in text
    override_lines = [line for line in text.splitlines() if "atlas005" in line]
    assert any("admin1" in line and REASON in line for line in override_lines), text
    assert "1 handover(s) to another person inside the quiet period" in text
    assert HOSTILE in text, "text is not HTML: the DN is shown as it is"


def test_text_report_cannot_be_forged_by_a_stored_name(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    map_dn(sqlite_engine, site, "/DC=org/CN=Ann", "/atlas", now=at("2024-01-01T00:00Z"))
    with unit_of_work(sqlite_engine) as session:
        # The DN parser refuses control characters; stored text from elsewhere
        # (an old import, a hand edit) is still not trusted.
        session.execute(update(Identity).values(display="/CN=A\natlas009  x\x07"))
    with unit_of_work(sqlite_engine, write=False) as session:
        text = render_text(build_report(session, site, NOW, NOW))
    assert "/CN=A atlas009 x\\x07" in text
    assert "\x07" not in text and "\natlas009" not in text


def test_json_report_has_every_section(report):
    data = json.loads(render_json(report))
    assert data["overrides"][0]["actor"] == "admin1"
    assert data["overrides"][0]["details"]["quiet_until"] == "2025-07-20T00:00:00Z"
    assert data["pools"][0]["occupancy"] == 5 / 6
    assert data["idle"][0] == {"bucket": "<1 d", "leases": 2}
    assert data["history"]["violations"][0]["account"] == "cms002"
    assert data["generated_at"] == "2025-06-01T00:00:00Z"


def test_csv_report_is_one_table_with_a_section_column(report):
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    sections = {row["section"] for row in rows}
    assert sections == {
        "summary",
        "pool",
        "idle",
        "recyclable",
        "due_soon",
        "override",
        "cleanup_failed",
        "out_of_service",
        "violation",
    }
    override = next(r for r in rows if r["section"] == "override")
    assert (override["account"], override["actor"], override["text"]) == (
        "atlas005",
        "admin1",
        REASON,
    )
    leased = next(r for r in rows if r["pool"] == "atlas" and r["text"] == "leased")
    assert leased["count"] == "5"
    quiet = next(r for r in rows if r["text"] == "quiet_period")
    assert (quiet["section"], quiet["value"], quiet["until"]) == (
        "summary",
        "6 months",
        "",
    ), "a duration is not a time: it goes in the value column"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_one_page_with_two_svg_charts(report):
    page = render_html(report)
    parser = _Collector()
    parser.feed(page)
    parser.close()

    assert parser.tags.count("svg") == 2
    assert parser.tags.count("rect") >= 9, "bars for pools, legend and buckets"
    assert "script" not in parser.tags, "the hostile DN stays text"
    assert "link" not in parser.tags and "img" not in parser.tags
    assert "src=" not in page and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", ""
    )
    text = "".join(parser.text)
    assert HOSTILE in text
    assert REASON in text and "admin1" in text
    assert "Occupancy per pool" in text and "Time since last use" in text


def test_a_held_account_is_not_listed_as_recyclable(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    for name in ("Held", "Idle"):
        dn = f"/DC=org/DC=example/CN={name}"
        map_dn(sqlite_engine, site, dn, "/atlas", now=at("2024-01-01T00:00:00Z"))
    with unit_of_work(sqlite_engine) as session:
        hold_account(session, "atlas001", reason="incident 42", actor="sec", now=NOW)
    with unit_of_work(sqlite_engine, write=False) as session:
        report = build_report(session, site, NOW, NOW)
    assert [d.account for d in report.recyclable] == ["atlas002"], (
        "the periodic run would leave atlas001 alone: it is not recyclable"
    )
    assert "atlas001" in render_text(report).split("Frozen and held accounts")[1]
