"""Bans: matching every DN form (F11), robustness and immediacy (F12)."""

import csv
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from poolmgr.audit import build_report
from poolmgr.audit_formats import render_csv, render_text
from poolmgr.banguard import BanList, RefusalLimiter
from poolmgr.banlists import BanListError, parse_ban_list, sync_source
from poolmgr.bans import (
    HAND,
    BanHit,
    add_ban,
    dn_entry,
    dn_pattern_entry,
    fold,
    fqan_entry,
    frozen_leases,
    glob_match,
    lift_ban,
)
from poolmgr.banviews import ban_health, list_bans, sync_changes
from poolmgr.db import unit_of_work
from poolmgr.dn import parse_dn
from poolmgr.errors import (
    BadInputError,
    BanListUnavailableError,
    BannedError,
    NotFoundError,
    PolicyError,
)
from poolmgr.fqan import parse_fqan
from poolmgr.health import CheckContext, CheckOptions, Status, check_bans
from poolmgr.holds import hold_account, release_account
from poolmgr.identities import X509, key_hash
from poolmgr.leases import Mapper, MapRequest
from poolmgr.logs import setup_logging
from poolmgr.models import Account, Ban, BanState, BanSync, Event, Identity, Lease
from poolmgr.recycle import Recycler
from tests.conftest import make_settings
from tests.factories import (
    all_leases,
    at,
    drain_datagrams,
    map_dn,
    open_leases,
    pool,
    set_last_use,
    sync,
    syslog_receiver,
)
from tests.test_service import exchange, mapper_handler, running

B1 = "/DC=org/DC=example/CN=Sam Example (guest)"
B2 = "/DC=org/DC=example/CN=A.B Example"
B3 = "/DC=org/DC=example/OU=Users/CN=lee.test"
JANE = "/DC=org/DC=example/CN=Jane Roe"
KIM = "/DC=org/DC=example/CN=Kim Sample"
NOW = at("2025-06-01T12:00:00Z")
SOURCE = {"name": "central", "location": "/srv/ban-mapfile"}


def atlas_pools(size: int = 3) -> list:
    return [
        pool("atlasprd", "atlas", 2, "/atlas/Role=production"),
        pool("atlas", "atlas", size, "/atlas"),
    ]


def mapfile(*entries: str) -> bytes:
    return "".join(f'"{entry}"\n' for entry in entries).encode()


def sync_list(engine, settings, data: bytes, now=NOW, **options):
    source = settings.ban_sources[0]
    return sync_source(
        engine, source, actor="cron", now=now, fetch=lambda _: data, **options
    )


def ban(engine, text: str, *, fqan: bool = False, now=NOW):
    entry = fqan_entry(text) if fqan else dn_entry(text)
    with unit_of_work(engine) as session:
        banned, _ = add_ban(session, entry, reason="incident 7", actor="sec", now=now)
        return banned.id


def unban(engine, text: str, *, fqan: bool = False, now=NOW):
    entry = fqan_entry(text) if fqan else dn_entry(text)
    with unit_of_work(engine) as session:
        return lift_ban(session, entry, reason="cleared", actor="sec", now=now).id


def refusals(engine) -> list[dict]:
    with unit_of_work(engine, write=False) as session:
        rows = session.scalars(
            select(Event).where(Event.kind == "mapping_refused").order_by(Event.id)
        ).all()
    return [{"dn": e.dn, "reason": e.reason, **json.loads(e.details)} for e in rows]


def count(engine, model) -> int:
    with unit_of_work(engine, write=False) as session:
        return session.scalar(select(func.count()).select_from(model))


# Entries and matching.

SAME_PERSON = {
    "slash": B1,
    "rfc2253": "CN=Sam Example (guest),DC=example,DC=org",
    "openssl": "DC = org, DC = example, CN = Sam Example (guest)",
    "lowercase": B1.lower(),
    "proxy": B1 + "/CN=proxy",
    "limited proxy": B1 + "/CN=limited proxy",
}


@pytest.mark.parametrize("text", SAME_PERSON.values(), ids=SAME_PERSON.keys())
def test_a_dn_ban_has_the_identity_hash_of_every_spelling(text):
    person = key_hash(X509, parse_dn(B1).key)
    assert dn_entry(text).key_hash == person


def test_a_numeric_last_cn_in_a_ban_entry_is_part_of_the_name():
    cern = "/DC=ch/DC=cern/OU=Users/CN=jdoe/CN=123456"
    assert dn_entry(cern).key.endswith("/CN=123456")


GLOBS = [
    ("/dc=org/*", "/dc=org/cn=x", True),
    ("/dc=org/*", "/dc=orgx/cn=x", False),
    ("/dc=org/cn=a*b", "/dc=org/cn=a-and-b", True),
    ("/dc=org/cn=a*b", "/dc=org/cn=a-and-bc", False),
    ("/dc=org/cn=a.b*", "/dc=org/cn=axb", False),
    ("/dc=org/cn=(x)*", "/dc=org/cn=(x) y", True),
    ("/dc=org/cn=?*", "/dc=org/cn=z", False),
    ("/a*b*c", "/abbbc", True),
    ("/a*b*c", "/acb", False),
    ("/abc", "/abc", True),
]


@pytest.mark.parametrize(
    ("pattern", "text", "matches"), GLOBS, ids=[f"{p} {t}" for p, t, _ in GLOBS]
)
def test_glob_match_treats_only_the_star_as_special(pattern, text, matches):
    assert glob_match(pattern, text) is matches


@pytest.mark.parametrize("text", ["*", "/*", "/DC=*", "/DC=org*/CN=x"])
def test_a_wildcard_dn_must_start_with_a_whole_rdn(text):
    with pytest.raises(BadInputError, match="complete RDN"):
        dn_pattern_entry(text)


def ban_list(*entries) -> BanList:
    hits = [
        (entry, BanHit(i, entry.kind, entry.entry, HAND))
        for i, entry in enumerate(entries, 1)
    ]
    return BanList(
        version="v",
        dns={e.key_hash: h for e, h in hits if e.kind == "dn"},
        dn_patterns=tuple((e.key, h) for e, h in hits if e.kind == "dn-pattern"),
        fqans={e.key: h for e, h in hits if e.kind == "fqan"},
        fqan_patterns=(),
        unread=(),
    )


PATTERN_CASES = {
    "same case": ("/DC=org/DC=example/CN=Sam*", B1, True),
    "other case": ("/dc=ORG/dc=Example/cn=sam*", B1, True),
    "rfc2253 request": ("/DC=org/DC=example/*", "CN=X Y,DC=example,DC=org", True),
    "alias E for emailAddress": (
        "/DC=org/E=a@example.org/*",
        "/DC=org/emailAddress=a@example.org/CN=x",
        True,
    ),
    "dot is literal": (
        "/DC=org/DC=example/CN=A.B*",
        "/DC=org/DC=example/CN=AxB",
        False,
    ),
    "other branch": ("/DC=org/DC=example/*", "/DC=org/DC=other/CN=Sam", False),
    "multi-valued RDN as printed": (
        "/DC=org/DC=example/UID=sam+CN=Sam Example/*",
        "/DC=org/DC=example/CN=Sam Example+UID=sam/CN=robot",
        True,
    ),
    "alias inside a multi-valued RDN": (
        "/DC=org/DC=example/userid=sam+commonName=Sam/*",
        "/DC=org/DC=example/CN=Sam+UID=sam/OU=x",
        True,
    ),
}


@pytest.mark.parametrize(
    ("pattern", "dn", "refused"), PATTERN_CASES.values(), ids=PATTERN_CASES.keys()
)
def test_wildcard_dn_bans_match_the_canonical_form_ignoring_case(pattern, dn, refused):
    bans = ban_list(dn_pattern_entry(pattern))
    assert (bans.match(parse_dn(dn), ()) is not None) is refused


def test_fqan_bans_catch_any_position_but_never_a_request_without_fqans():
    bans = ban_list(fqan_entry("/atlas/Role=pilot/Capability=NULL"))
    pilot = parse_fqan("/atlas/Role=pilot")[0]
    plain = parse_fqan("/atlas")[0]
    assert bans.match(parse_dn(JANE), (plain, pilot)).entry.startswith("/atlas")
    assert bans.match(parse_dn(JANE), (plain,)) is None
    assert bans.match(parse_dn(JANE), ()) is None


def test_patterns_are_folded_like_keys():
    assert fold("/DC=Org/CN=ÉCOLE") == "/dc=org/cn=école"


# F11: ban matching through the mapper, on every backend.


@pytest.fixture
def f11(engine):
    """The F11 site: b1 holds atlas002 (last use 2025-05-01), b1-b3 banned."""
    settings = make_settings(ban_sources=[SOURCE])
    sync(engine, settings, atlas_pools(size=6))
    sync_list(engine, settings, b"", now=at("2025-01-01T00:00:00Z"))
    map_dn(engine, settings, KIM, "/atlas", now=at("2025-04-01T00:00:00Z"))
    map_dn(engine, settings, B1, "/atlas", now=at("2025-04-01T00:00:00Z"))
    set_last_use(engine, "atlas002", at("2025-05-01T00:00:00Z"))
    sync_list(engine, settings, mapfile(B1, B2, B3), now=at("2025-05-15T00:00:00Z"))
    return engine, settings


F11_CALLS = {
    "a) production FQAN": (B1, ("/atlas/Role=production",), B1),
    "b) no FQAN": (B1, (), B1),
    "c) dot in the DN": (B2, ("/atlas",), B2),
    "d) not the last entry": (B3, ("/atlas",), B3),
    "e) proxy suffix": (B1 + "/CN=proxy", ("/atlas",), B1),
}


def test_f11_banned_persons_are_refused_and_nothing_is_written(f11):
    engine, settings = f11
    leases_before = [(x.id, x.last_used_at) for x in all_leases(engine)]
    identities_before = count(engine, Identity)

    for case, (dn, fqans, entry) in F11_CALLS.items():
        with pytest.raises(BannedError, match="is refused: dn ban") as refused:
            map_dn(engine, settings, dn, *fqans, now=NOW)
        assert entry in str(refused.value), case
        assert refusals(engine)[-1]["entry"] == entry, case
        assert (refused.value.exit_code, refused.value.code) == (5, "BANNED"), case
    with pytest.raises(BannedError):
        map_dn(engine, settings, B1, "/atlas", now=NOW, verify=True)

    assert [(x.id, x.last_used_at) for x in all_leases(engine)] == leases_before
    assert count(engine, Identity) == identities_before
    assert len(refusals(engine)) == len(F11_CALLS) + 1


def test_f11_the_banned_holders_lease_is_frozen(f11):
    engine, _ = f11
    with unit_of_work(engine, write=False) as session:
        frozen = frozen_leases(session)
        lease_id = session.scalar(
            select(Lease.id).join(Account).where(Account.name == "atlas002")
        )
    assert frozen[lease_id].entry == B1
    assert len(frozen) == 1, "Kim's lease must not be frozen"


LOOKALIKES = {
    "dot as any character": "/DC=org/DC=example/CN=AxB Example",
    "parentheses as a group": "/DC=org/DC=example/CN=Sam Example guest",
    "prefix of an entry": "/DC=org/DC=example/CN=Sam Example",
}


def test_f11_lookalike_dns_are_not_caught(f11):
    engine, settings = f11
    for case, dn in LOOKALIKES.items():
        assert map_dn(engine, settings, dn, "/atlas", now=NOW).new, case
    assert len(open_leases(engine)) == 2 + len(LOOKALIKES)


# F12: robustness and immediacy.


def test_f12_a_bad_list_is_rejected_whole_and_the_previous_one_stays(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    sync(sqlite_engine, settings, atlas_pools())
    mapper = Mapper(sqlite_engine, settings)
    sync_list(sqlite_engine, settings, mapfile(B1), now=at("2025-06-01T10:00:00Z"))

    v2 = mapfile(B1, B2) + b'"/DC=org/DC=example/CN=Broken\n'
    with pytest.raises(BanListError, match="line 3: the quote is not closed"):
        sync_list(sqlite_engine, settings, v2, now=at("2025-06-01T10:05:00Z"))

    assert mapper.map(MapRequest(JANE, ("/atlas",))).account == "atlas001"
    assert mapper.map(MapRequest(B2, ("/atlas",))).account == "atlas002"
    with pytest.raises(BannedError):
        mapper.map(MapRequest(B1, ("/atlas",)))
    with unit_of_work(sqlite_engine, write=False) as session:
        last = session.scalars(select(BanSync).order_by(BanSync.id.desc())).first()
        alert = session.scalars(
            select(Event).where(Event.kind == "ban_list_rejected")
        ).one()
    assert (last.status, "line 3" in last.error) == ("rejected", True)
    assert "line 3" in alert.reason

    sync_list(sqlite_engine, settings, mapfile(B1, B2), now=at("2025-06-01T10:10:00Z"))
    with pytest.raises(BannedError, match="A.B Example"):
        mapper.map(MapRequest(B2, ("/atlas",)))


def test_f12_a_source_never_read_fails_every_mapping_closed(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    sync(sqlite_engine, settings, atlas_pools())
    source = settings.ban_sources[0]
    with pytest.raises(BanListUnavailableError, match="cannot read"):
        sync_source(sqlite_engine, source, actor="cron", now=NOW)

    with pytest.raises(BanListUnavailableError, match="central has never been read"):
        map_dn(sqlite_engine, settings, JANE, "/atlas")
    assert all_leases(sqlite_engine) == []
    assert refusals(sqlite_engine)[-1]["sources"] == "central"


def test_two_sources_never_read_are_both_named(sqlite_engine):
    other = {"name": "egi", "location": "/srv/egi-ban-mapfile"}
    settings = make_settings(ban_sources=[SOURCE, other])
    sync(sqlite_engine, settings, atlas_pools())
    with pytest.raises(
        BanListUnavailableError,
        match="^Ban lists central, egi have never been read, so every mapping is "
        "refused until 'poolmgr bans sync' succeeds for each ",
    ):
        map_dn(sqlite_engine, settings, JANE, "/atlas")


def test_f12_a_source_unreadable_after_a_good_read_keeps_its_list(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    sync(sqlite_engine, settings, atlas_pools())
    sync_list(sqlite_engine, settings, mapfile(B1))
    with pytest.raises(BanListUnavailableError):
        sync_source(sqlite_engine, settings.ban_sources[0], actor="cron", now=NOW)

    assert map_dn(sqlite_engine, settings, JANE, "/atlas").account == "atlas001"
    with pytest.raises(BannedError):
        map_dn(sqlite_engine, settings, B1, "/atlas")


def test_f12_an_fqan_ban_spares_persons_without_fqans(sqlite_engine):
    settings = make_settings(dn_only_pool="atlas")
    sync(sqlite_engine, settings, atlas_pools())
    ban(sqlite_engine, "/atlas/Role=pilot", fqan=True)
    ban(sqlite_engine, B1)

    assert map_dn(sqlite_engine, settings, JANE).account == "atlas001"
    with pytest.raises(BannedError, match="fqan ban '/atlas/Role=pilot'"):
        map_dn(sqlite_engine, settings, KIM, "/atlas", "/atlas/Role=pilot")
    with pytest.raises(BannedError, match="dn ban"):
        map_dn(sqlite_engine, settings, B1)


def test_a_hand_ban_reaches_a_running_mapper_at_its_next_request(engine, site):
    sync(engine, site, atlas_pools())
    mapper = Mapper(engine, site, router_ttl=3600)
    assert mapper.map(MapRequest(JANE, ("/atlas",))).account == "atlas001"
    ban(engine, JANE)
    with pytest.raises(BannedError):
        mapper.map(MapRequest(JANE, ("/atlas",)))
    unban(engine, JANE)
    assert mapper.map(MapRequest(JANE, ("/atlas",))).account == "atlas001"


def test_a_missing_ban_state_row_means_no_caching_not_a_stale_list(sqlite_engine, site):
    sync(sqlite_engine, site, atlas_pools())
    with unit_of_work(sqlite_engine) as session:
        session.execute(BanState.__table__.delete())
    mapper = Mapper(sqlite_engine, site)
    mapper.map(MapRequest(JANE, ("/atlas",)))
    ban(sqlite_engine, KIM)
    with pytest.raises(BannedError):
        mapper.map(MapRequest(KIM, ("/atlas",)))


# Refusal records.


def test_refusals_are_recorded_once_per_person_per_interval(
    sqlite_engine, site, caplog
):
    sync(sqlite_engine, site, atlas_pools())
    ban(sqlite_engine, JANE)
    mapper = Mapper(sqlite_engine, site)
    caplog.set_level(logging.WARNING, logger="poolmgr.banguard")
    for _ in range(3):
        with pytest.raises(BannedError):
            mapper.map(MapRequest(JANE, ("/atlas",)))

    assert len(refusals(sqlite_engine)) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f'entry="{JANE}"' in warnings[0]


def test_refusal_limiter_lets_the_next_record_through_at_the_interval():
    limiter = RefusalLimiter(600.0)
    assert limiter.allow("jane", now=1000.0) == (True, 0)
    assert limiter.allow("jane", now=1599.999) == (False, 0)
    assert limiter.allow("kim", now=1599.999) == (True, 0)
    assert limiter.allow("jane", now=1600.0) == (True, 1)


def test_refusal_limiter_memory_stays_bounded():
    limiter = RefusalLimiter(600.0, max_keys=3)
    for number in range(10):
        limiter.allow(f"dn{number}", now=float(number))
    assert len(limiter._seen) <= 3


# Hand bans and source bans.


def test_a_source_sync_never_lifts_a_hand_ban(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    sync(sqlite_engine, settings, atlas_pools())
    ban(sqlite_engine, B1)
    sync_list(sqlite_engine, settings, mapfile(B1, B2))
    result = sync_list(sqlite_engine, settings, mapfile(B2))

    assert result.removed == [B1]
    with pytest.raises(BannedError, match="entered by hand"):
        map_dn(sqlite_engine, settings, B1, "/atlas")
    with unit_of_work(sqlite_engine, write=False) as session:
        hand = list_bans(session, origin=HAND)
    assert [row.entry for row in hand] == [B1]


def test_unban_lifts_only_hand_bans(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    sync_list(sqlite_engine, settings, mapfile(B1))
    with pytest.raises(PolicyError, match="from source central"):
        unban(sqlite_engine, B1)
    with pytest.raises(NotFoundError, match="No hand ban"):
        unban(sqlite_engine, JANE)


def test_banning_twice_keeps_the_first_ban(sqlite_engine):
    first = ban(sqlite_engine, "CN=Jane Roe,DC=example,DC=org")
    assert ban(sqlite_engine, JANE + "/CN=proxy") == first
    assert count(sqlite_engine, Ban) == 1


def test_a_ban_needs_a_reason(sqlite_engine):
    with (
        unit_of_work(sqlite_engine) as session,
        pytest.raises(BadInputError, match="reason is required"),
    ):
        add_ban(session, dn_entry(JANE), reason=" ", actor="sec", now=NOW)


def test_unban_unfreezes_the_lease_and_both_are_events(sqlite_engine, site):
    sync(sqlite_engine, site, atlas_pools())
    map_dn(sqlite_engine, site, JANE, "/atlas")
    ban(sqlite_engine, JANE)
    with unit_of_work(sqlite_engine, write=False) as session:
        assert len(frozen_leases(session)) == 1
    unban(sqlite_engine, JANE)
    with unit_of_work(sqlite_engine, write=False) as session:
        assert frozen_leases(session) == {}
        kinds = session.execute(
            select(Event.kind, Event.actor, Event.reason, Event.details).where(
                Event.kind.like("ban_%")
            )
        ).all()
    assert [(k, a, r) for k, a, r, _ in kinds] == [
        ("ban_added", "sec", "incident 7"),
        ("ban_lifted", "sec", "cleared"),
    ]
    assert all(json.loads(d)["frozen_leases"] == 1 for *_, d in kinds)


def test_each_sync_records_what_it_added_and_removed(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    first = sync_list(sqlite_engine, settings, mapfile(B1, B2))
    second = sync_list(sqlite_engine, settings, mapfile(B2, B3))
    same = sync_list(sqlite_engine, settings, mapfile(B3, B2))

    assert (first.added, first.removed) == ([B1, B2], [])
    assert (second.added, second.removed) == ([B3], [B1])
    assert (same.added, same.removed) == ([], [])
    with unit_of_work(sqlite_engine, write=False) as session:
        row, added, removed = sync_changes(session, second.sync_id)
    assert (row.status, row.added, row.removed) == ("accepted", 1, 1)
    assert [b.entry for b in added] == [B3] and [b.entry for b in removed] == [B1]


def test_an_empty_list_replacing_bans_needs_allow_empty(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    sync_list(sqlite_engine, settings, mapfile(B1))
    with pytest.raises(BanListError, match="empty while 1 bans"):
        sync_list(sqlite_engine, settings, b"\n")
    assert sync_list(sqlite_engine, settings, b"", allow_empty=True).removed == [B1]


def test_a_comment_only_list_is_a_deliberate_empty_list(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    sync_list(sqlite_engine, settings, mapfile(B1))
    assert sync_list(sqlite_engine, settings, b"# none\n").removed == [B1]


def test_parsed_entries_of_one_list_are_distinct_persons():
    entries = parse_ban_list(mapfile(B1, B1.upper(), B1 + "/CN=proxy"), "ban-mapfile")
    assert [e.entry for e in entries] == [B1]


# Recycling, the check and the audit.


def test_a_frozen_lease_is_never_recycled_until_the_ban_is_lifted(sqlite_engine):
    settings = make_settings(quiet_period="30 days", ban_sources=[SOURCE])
    sync(sqlite_engine, settings, atlas_pools())
    sync_list(sqlite_engine, settings, b"")
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at("2024-01-01T00:00:00Z"))
    map_dn(sqlite_engine, settings, B1, "/atlas", now=at("2024-01-01T00:00:00Z"))
    sync_list(sqlite_engine, settings, b'"/DC=org/DC=example/CN=Sam*"\n')
    ban(sqlite_engine, JANE)
    worker = Recycler(sqlite_engine, settings, actor="cron")

    outcomes = list(worker.run(now=NOW))
    assert [(o.action, o.target.account) for o in outcomes] == [
        ("blocked", "atlas001"),
        ("blocked", "atlas002"),
    ]
    assert "dn-pattern ban" in outcomes[1].detail
    with pytest.raises(PolicyError, match="frozen: its holder is refused by the dn"):
        worker.force("atlas001", "disk full")

    unban(sqlite_engine, JANE)
    assert [o.action for o in worker.run(now=NOW)] == ["recycled", "blocked"]


def health(engine, settings, now):
    with unit_of_work(engine, write=False) as session:
        return ban_health(session, settings, now)


def test_check_is_critical_for_a_list_never_read_and_warns_when_it_fails(
    sqlite_engine,
):
    settings = make_settings(ban_sources=[SOURCE])
    assert health(sqlite_engine, settings, NOW) == (
        2,
        "ban lists: central never read, every mapping is refused; 0 ban(s) in "
        "force, 0 frozen lease(s), 0 held account(s)",
    )
    sync_list(sqlite_engine, settings, mapfile(B1))
    assert health(sqlite_engine, settings, NOW)[0] == 0
    with pytest.raises(BanListError):
        sync_list(sqlite_engine, settings, b"junk\n")
    level, line = health(sqlite_engine, settings, NOW)
    assert level == 1 and "central last read rejected: line 1: " in line


def test_check_warns_once_the_last_good_read_is_older_than_stale_after(
    sqlite_engine,
):
    settings = make_settings(ban_sources=[SOURCE | {"stale_after": "1 day"}])
    sync_list(sqlite_engine, settings, mapfile(B1), now=NOW)
    assert health(sqlite_engine, settings, at("2025-06-02T12:00:00Z"))[0] == 0
    level, line = health(sqlite_engine, settings, at("2025-06-02T12:00:01Z"))
    assert (level, line.split(";")[0]) == (
        1,
        "ban lists: central stale since 2025-06-01T12:00:00Z",
    )


def test_check_runs_as_part_of_poolmgr_check(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    with unit_of_work(sqlite_engine, write=False) as session:
        context = CheckContext(session, settings, CheckOptions(), NOW)
        result = check_bans(context)
    assert (result.name, result.status) == ("bans", Status.CRITICAL)


def test_audit_shows_frozen_and_held_accounts_and_the_periods_events(sqlite_engine):
    settings = make_settings(ban_sources=[SOURCE])
    sync(sqlite_engine, settings, atlas_pools())
    sync_list(sqlite_engine, settings, mapfile(B2), now=at("2025-05-01T00:00:00Z"))
    map_dn(sqlite_engine, settings, JANE, "/atlas")
    map_dn(sqlite_engine, settings, KIM, "/atlas")
    ban(sqlite_engine, JANE)
    with unit_of_work(sqlite_engine) as session:
        hold_account(session, "atlas002", reason="disk", actor="sec", now=NOW)
    with pytest.raises(BannedError):
        map_dn(sqlite_engine, settings, B2, "/atlas")

    with unit_of_work(sqlite_engine, write=False) as session:
        report = build_report(session, settings, NOW, at("2025-05-15T00:00:00Z"))
    bans = report.bans
    assert (bans.hand_bans, bans.source_bans) == (1, 1)
    assert [(r.account, r.status, r.holder) for r in bans.restricted] == [
        ("atlas001", "frozen", JANE),
        ("atlas002", "held", KIM),
    ]
    assert [(e.kind, e.subject) for e in bans.events] == [
        ("ban_added", JANE),
        ("hold_started", "atlas002"),
        ("mapping_refused", B2),
    ]
    text = render_text(report)
    assert "Frozen and held accounts now (never recycled)" in text
    assert "1 ban(s) entered by hand and 1 read from central lists" in text
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert {"restricted", "ban_event"} <= {row["section"] for row in rows}


def test_a_running_service_refuses_a_person_banned_after_it_started(sqlite_engine):
    directory = Path(tempfile.mkdtemp(prefix="pm-ban-", dir="/tmp"))
    path = directory / "s.sock"
    try:
        with running(mapper_handler(sqlite_engine), path):
            first = exchange(path, f"MAP\t{JANE}\t/atlas\n".encode())
            ban(sqlite_engine, JANE)
            second = exchange(path, f"VERIFY\t{JANE}\t/atlas\n".encode())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert first[0].startswith(b"OK\tatlas001\t")
    assert second[0].startswith(b"ERR\tBANNED\t")


@pytest.mark.parametrize("tail", ["/CN=123456789", "/CN=123/CN=456", "/CN=7/CN=proxy"])
def test_a_proxy_numeric_cn_left_on_a_service_request_does_not_hide_a_ban(
    sqlite_engine, tail
):
    # The service takes the DN it receives as the end-entity subject, so a
    # trailing numeric CN stays part of the name there; a ban on the person
    # must still refuse it, and no lease may be made for it.
    directory = Path(tempfile.mkdtemp(prefix="pm-ban-", dir="/tmp"))
    path = directory / "s.sock"
    try:
        with running(mapper_handler(sqlite_engine), path):
            exchange(path, f"MAP\t{KIM}\t/atlas\n".encode())
            ban(sqlite_engine, JANE)
            reply = exchange(path, f"MAP\t{JANE}{tail}\t/atlas\n".encode())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert reply[0].startswith(b"ERR\tBANNED\t"), f"expected BANNED, got {reply}"
    assert count(sqlite_engine, Lease) == 1, "only Kim's lease, none for the proxy DN"


NUMBERED = "/DC=org/DC=example/CN=Ann Roe/CN=12345"
ISSUED = {
    "own proxy": (NUMBERED + "/CN=999", NUMBERED),
    "proxy of a proxy": (NUMBERED + "/CN=999/CN=7", NUMBERED + "/CN=999"),
    "shorter issuer": (NUMBERED, "/DC=org/DC=example/CN=Ann Roe"),
}


@pytest.mark.parametrize("dn, issuer", ISSUED.values(), ids=ISSUED.keys())
def test_a_ban_on_a_dn_ending_in_a_numeric_cn_survives_proxy_stripping(
    sqlite_engine, dn, issuer
):
    # With an issuer, stripping reads the chain as proxies of proxies and may
    # cut the banned DN's own numeric CN; the ban must still refuse the DN
    # as written, since the check fails closed.
    settings = make_settings()
    sync(sqlite_engine, settings, atlas_pools())
    ban(sqlite_engine, NUMBERED)
    with pytest.raises(BannedError, match="is refused: dn ban"):
        map_dn(sqlite_engine, settings, dn, "/atlas", issuer=issuer, now=NOW)
    assert count(sqlite_engine, Lease) == 0, "no lease for a banned person"


def test_bans_holds_refusals_and_list_syncs_reach_syslog(sqlite_engine, tmp_path):
    address = tmp_path / "log"
    receiver = syslog_receiver(address)
    settings = make_settings(
        ban_sources=[SOURCE], syslog={"enabled": True, "address": str(address)}
    )
    sync(sqlite_engine, settings, atlas_pools())
    setup_logging(0, settings.syslog)
    try:
        sync_list(sqlite_engine, settings, mapfile(B2))
        with pytest.raises(BanListError):
            sync_list(sqlite_engine, settings, b'"/DC=org/CN=Broken\n')
        ban(sqlite_engine, JANE)
        with pytest.raises(BannedError):
            map_dn(sqlite_engine, settings, JANE + "/CN=proxy", "/atlas")
        unban(sqlite_engine, JANE)
        with unit_of_work(sqlite_engine) as session:
            hold_account(session, "atlas001", reason="disk", actor="sec", now=NOW)
            release_account(session, "atlas001", reason="done", actor="sec", now=NOW)
        received = b"".join(drain_datagrams(receiver))
    finally:
        setup_logging(0, None)
        receiver.close()

    pid = os.getpid()
    jane = f'"{JANE}"'
    for line in (
        "<86>poolmgr[{pid}]: event=ban_list_synced actor=cron source=central",
        "<84>poolmgr[{pid}]: ban list central rejected: line 1: the quote is not",
        "<86>poolmgr[{pid}]: event=ban_list_rejected actor=cron",
        '<86>poolmgr[{pid}]: event=ban_added actor=sec dn={jane} reason="incident 7"'
        " entry={jane} ban_kind=dn origin=hand",
        "<84>poolmgr[{pid}]: event=mapping_refused dn={jane} reason=banned "
        "entry={jane} ban_kind=dn origin=hand",
        "<86>poolmgr[{pid}]: event=ban_lifted actor=sec dn={jane} reason=cleared",
        "<86>poolmgr[{pid}]: event=hold_started actor=sec pool=atlas "
        "account=atlas001 reason=disk",
        "<86>poolmgr[{pid}]: event=hold_released actor=sec pool=atlas "
        "account=atlas001 reason=done",
    ):
        expected = line.format(pid=pid, jane=jane).encode()
        assert expected in received, f"syslog lacks {expected!r}"
