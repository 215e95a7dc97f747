"""Sizing: floor, growth, forecast, recommendation, gLExec demand, renderings."""

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser

import pytest
from freezegun import freeze_time
from sqlalchemy import update

from poolmgr.bans import add_ban, dn_entry
from poolmgr.cli.sizing import render_csv, render_json, render_text
from poolmgr.cli.sizing_html import render_html
from poolmgr.db import unit_of_work
from poolmgr.holds import hold_account
from poolmgr.models import Account
from poolmgr.sizing import forecast_exhaustion, recommend, sizing_report
from poolmgr.timeutil import utcnow
from poolmgr.vocards import VoCard
from tests.factories import at, map_dn, pool, set_last_use, sync

NOW = at("2026-09-01T00:00:00Z")
QUIET_START = at("2026-03-01T00:00:00Z")  # NOW minus six months


def person(n: int) -> str:
    return f"/DC=org/DC=example/CN=Person {n}"


def card(vo: str, glexec: bool, *pools: tuple[str, str, str, int]) -> VoCard:
    return VoCard.model_validate(
        {
            "format": "poolmgr-vocard/1",
            "vo": vo,
            "extensions": {
                "poolmgr": {
                    "glexec": glexec,
                    "pools": [
                        {"name": name, "serves": [rule], "type": kind, "accounts": n}
                        for name, rule, kind, n in pools
                    ],
                }
            },
        }
    )


ATLAS = card(
    "atlas",
    True,
    ("atlasprd", "/atlas/Role=production", "production", 2),
    ("atlasplt", "/atlas/Role=pilot", "pilot", 3),
    ("atlas", "/atlas", "users", 10),
)


def fill(engine, site):
    """Make pools with persons seen before, at and after the quiet-period start."""
    sync(
        engine,
        site,
        [
            pool("atlasprd", "atlas", 2, "/atlas/Role=production"),
            pool("atlasplt", "atlas", 3, "/atlas/Role=pilot"),
            pool("atlas", "atlas", 10, "/atlas"),
        ],
        now=at("2026-01-01T00:00:00Z"),
    )
    for n, started in [
        (1, "2026-01-10T00:00:00Z"),
        (2, "2026-01-10T00:00:00Z"),
        (3, "2026-06-15T00:00:00Z"),
        (4, "2026-08-20T00:00:00Z"),
    ]:
        map_dn(engine, site, person(n), "/atlas", now=at(started))
    set_last_use(engine, "atlas001", QUIET_START)
    set_last_use(engine, "atlas002", at("2026-02-28T23:59:59Z"))
    for n in (5, 6):
        map_dn(
            engine,
            site,
            person(n),
            "/atlas/Role=production",
            now=at("2026-08-01T00:00:00Z"),
        )
    map_dn(engine, site, person(7), "/atlas/Role=pilot", now=at("2026-08-01T00:00:00Z"))
    map_dn(engine, site, person(4), "/atlas/Role=pilot", now=at("2026-08-02T00:00:00Z"))
    with unit_of_work(engine) as session:
        session.execute(
            update(Account).where(Account.name == "atlas010").values(state="cleaning")
        )


@pytest.fixture
def busy(sqlite_engine, site):
    """The filled pools on SQLite, for logic that does not depend on the backend."""
    fill(sqlite_engine, site)
    return sqlite_engine


@pytest.fixture
def busy_any(engine, site):
    """The filled pools on every backend, for the counting queries."""
    fill(engine, site)
    return engine


def report_at(engine, site, now=NOW, cards=(ATLAS,)):
    with unit_of_work(engine, write=False) as session:
        return sizing_report(session, site, list(cards), now)


@pytest.mark.parametrize(
    ("floor", "capacity", "growth", "expected"),
    [
        (3, 10, 1.0, "2027-03-30T00:00:00Z"),
        (10, 10, 1.0, "2026-09-01T00:00:00Z"),
        (12, 10, 0.0, "2026-09-01T00:00:00Z"),
        (3, 10, 0.0, None),
        (0, 0, 0.0, None),
        (0, 100_000, 0.001, None),
    ],
    ids=["linear", "full", "over-full", "no-growth", "empty", "beyond-a-century"],
)
def test_forecast_is_linear_from_floor_to_capacity(floor, capacity, growth, expected):
    forecast = forecast_exhaustion(floor, capacity, growth, NOW)
    assert forecast == (at(expected) if expected else None)


@pytest.mark.parametrize(
    ("need", "headroom", "expected"),
    [(7.02, 20, 10), (10.0, 0, 10), (10.01, 0, 15), (0.0, 20, 5), (41.0, 20, 50)],
    ids=["headroom", "exact", "just-over", "idle-pool-keeps-5", "large"],
)
def test_recommendation_adds_headroom_and_rounds_up_to_five(need, headroom, expected):
    assert recommend(need, headroom) == expected


def test_pool_figures_follow_the_leases(busy_any, site):
    rows = {row.name: row for row in report_at(busy_any, site).pools}
    atlas = rows["atlas"]
    assert (
        atlas.declared,
        atlas.provisioned,
        atlas.leased,
        atlas.free,
        atlas.frozen,
    ) == (10, 10, 4, 5, 1)
    # Person 1 was last seen exactly at the start of the quiet period, person 2
    # one second before it; persons 3 and 4 are new within the 90-day window.
    assert (atlas.floor, atlas.new_persons, atlas.growth) == (3, 2, 0.67)
    assert atlas.forecast is not None
    # 6 accounts left (9 in service) at 2 persons per 90 days: 270 days.
    assert atlas.forecast.date().isoformat() == "2027-05-29"
    assert atlas.recommended == 10
    assert (atlas.kind, atlas.glexec, atlas.at_risk) == ("users", True, False)


def lock_some(engine):
    """Hold a never-used free account and person 3's account; ban person 2."""
    with unit_of_work(engine) as session:
        for account in ("atlas009", "atlas003"):
            hold_account(session, account, reason="incident", actor="sec", now=NOW)
        add_ban(session, dn_entry(person(2)), reason="incident", actor="sec", now=NOW)


def test_held_and_banned_accounts_are_frozen_and_idle_ones_add_demand(busy_any, site):
    lock_some(busy_any)
    atlas = {row.name: row for row in report_at(busy_any, site).pools}["atlas"]

    # Leased 4 - 2 locked, free 5 - 1 held, frozen 1 cleaning + 3 locked.
    assert (atlas.provisioned, atlas.leased, atlas.free, atlas.frozen) == (
        10,
        2,
        4,
        4,
    )
    # Person 2's banned lease and the held atlas009 are idle since before the
    # quiet period: no person of the floor stands for them, yet they stay
    # taken. Person 3's held account is counted once, through the floor.
    assert (atlas.floor, atlas.locked, atlas.locked_idle, atlas.demand) == (
        3,
        3,
        2,
        5,
    )
    assert atlas.capacity == 9
    # 4 accounts left at 2 persons per 90 days: 180 days, inside the quiet
    # period (without the locks it was 270 days, 2027-05-29).
    assert atlas.forecast is not None
    assert atlas.forecast.date().isoformat() == "2027-02-28"
    assert atlas.risks == ("runs out within the quiet period",)
    assert atlas.recommended == 15
    assert "3 persons + 2 idle frozen" in render_html(report_at(busy_any, site))


def test_pools_at_risk_come_first_with_their_reasons(busy, site):
    rows = report_at(busy, site).pools
    assert [row.name for row in rows] == ["atlasprd", "atlasplt", "atlas"]
    assert rows[0].risks == ("runs out within the quiet period", "under 10% free")
    assert rows[0].forecast == NOW
    assert rows[1].risks == ("runs out within the quiet period",)


@pytest.mark.parametrize(
    ("now", "floor"),
    [("2026-09-01T00:00:00Z", 3), ("2026-09-01T00:00:01Z", 2)],
    ids=["at-boundary", "one-second-later"],
)
def test_floor_counts_persons_seen_at_the_quiet_period_boundary(busy, site, now, floor):
    with freeze_time(now):
        rows = {row.name: row for row in report_at(busy, site, now=utcnow()).pools}
    assert rows["atlas"].floor == floor


def test_glexec_demand_is_shown_apart_from_the_pilots(busy_any, site):
    (demand,) = report_at(busy_any, site).glexec
    assert (demand.vo, demand.pilot_pools, demand.pilot_accounts) == (
        "atlas",
        ("atlasplt",),
        3,
    )
    assert demand.pilot_persons == 2
    assert (demand.payload_pools, demand.payload_accounts, demand.payload_persons) == (
        ("atlas",),
        10,
        3,
    )


def test_without_cards_the_report_keeps_database_figures(busy, site):
    report = report_at(busy, site, cards=())
    assert report.glexec == ()
    assert {row.kind for row in report.pools} == {None}
    assert {row.name: row.declared for row in report.pools}["atlas"] == 10


def test_history_spans_the_quiet_period_up_to_now(busy, site):
    history = {row.name: row.history for row in report_at(busy, site).pools}["atlas"]
    assert history[0][0] == QUIET_START and history[-1] == (NOW, 3)
    assert len(history) == 7
    assert [n for _, n in history][:2] == [2, 2]


def test_text_lists_every_pool_and_the_glexec_section(busy, site):
    text = render_text(report_at(busy, site))
    lines = text.splitlines()
    assert lines[0] == (
        "Pool sizing at 2026-09-01T00:00:00Z: quiet period 6 months, growth over "
        "90 days, headroom 20%."
    )
    assert lines[1].split() == [
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
        "RUNS",
        "OUT",
        "RECOMMEND",
        "RISK",
    ]
    assert lines[4].split()[:12] == [
        "atlas",
        "atlas",
        "users",
        "10",
        "10",
        "4",
        "5",
        "1",
        "3",
        "0.67",
        "2027-05-29",
        "10",
    ]
    assert "gLExec VOs: every payload owner needs an account" in text


def test_csv_and_json_carry_the_same_rows(busy, site):
    report = report_at(busy, site)
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    data = json.loads(render_json(report))
    assert [row["pool"] for row in rows] == [p["name"] for p in data["pools"]]
    assert rows[0]["at_risk"] == "yes" and data["pools"][0]["at_risk"] is True
    assert rows[2]["forecast"] == data["pools"][2]["forecast"]
    assert data["glexec"][0]["payload_persons"] == 3
    assert data["pools"][2]["history"][-1] == {
        "at": "2026-09-01T00:00:00Z",
        "persons": 3,
    }


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag != "meta":
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()


def test_html_is_one_well_formed_page_with_svg_charts(busy, site):
    page = render_html(report_at(busy, site))
    collector = _Collector()
    collector.feed(page)
    assert collector.open == []
    assert collector.tags.count("svg") == 6
    assert "script" not in collector.tags and "<link" not in page
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_html_escapes_every_value(busy, site):
    report = report_at(busy, site)
    hostile = replace(report.pools[0], name="<b>x</b>", vo='"&', risks=("<i>",))
    page = render_html(replace(report, pools=(hostile,), glexec=()))
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "&quot;&amp;" in page and "<i>" not in page
