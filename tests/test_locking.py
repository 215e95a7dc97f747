"""Account locking on the server databases, at its edges.

A mapping in flight must lock no account it does not take (rejected
candidates included), a new person's identity must be in place before any
account is locked for them, and rejections (NSS, the loose quiet-period
window, an override against the requester) never turn into failures while
a usable account is free.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, select, text

from poolmgr import nss
from poolmgr.db import unit_of_work
from poolmgr.errors import ContentionError, PoolExhaustedError
from poolmgr.holds import hold_account
from poolmgr.leases import Mapper, MapRequest
from poolmgr.models import Account, Identity
from poolmgr.timeutil import utcnow
from tests.conftest import make_settings
from tests.factories import (
    all_leases,
    at,
    end_open_lease,
    identity_pending,
    invariant_violations,
    map_dn,
    pool,
    sync,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KIM = "/DC=org/DC=example/CN=Kim Sample"
JANE = "/DC=org/DC=example/CN=Jane Roe"
LEE = "/DC=org/DC=example/CN=Lee Test"


def _servers_only(engine):
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite writers take the database lock in turn")


def _uids(engine) -> dict[str, int]:
    with unit_of_work(engine, write=False) as session:
        return dict(session.execute(select(Account.name, Account.uid)).all())


def _nss_without(monkeypatch, engine, *missing: str) -> None:
    uids = _uids(engine)

    def fetch(kind: str, key: str) -> object:
        if kind == "passwd" and key in uids and key not in missing:
            return nss.pwd.struct_passwd((key, "x", uids[key], 1, "", "/", "/bin/sh"))
        return None

    monkeypatch.setattr(nss, "_fetch", fetch)
    nss.clear_cache()


def _while_in_flight(
    monkeypatch,
    engine,
    settings,
    early_dn: str,
    second_dn: str,
    now=None,
    *,
    one_statement: bool = False,
):
    """Map early_dn to /tst and pause it just after its lease is written
    (uncommitted); meanwhile map second_dn with a single attempt. Returns
    (early, second|None); NSS answers are forgotten afterwards.

    early takes the general path and pauses after _start_lease, or with
    one_statement the PostgreSQL one-statement lease, paused at the NSS
    check that comes before its commit (check_nss must be on)."""
    import poolmgr.leases as leases

    taken, release = threading.Event(), threading.Event()
    calls = []

    def pausing(original):
        def call_then_wait(*args, **kwargs):
            result = original(*args, **kwargs)
            calls.append(result)
            if len(calls) == 1:
                taken.set()
                release.wait(2)
            return result

        return call_then_wait

    first_mapper = Mapper(engine, settings)
    if one_statement:
        monkeypatch.setattr(nss, "account_problem", pausing(nss.account_problem))
    else:
        monkeypatch.setattr(leases, "_start_lease", pausing(leases._start_lease))
        monkeypatch.setattr(first_mapper, "_map_at_once", lambda *args: None)
    monkeypatch.setattr(leases, "MAX_ATTEMPTS", 1)
    early = MapRequest(dn=early_dn, fqans=("/tst",))
    second = MapRequest(dn=second_dn, fqans=("/tst",))
    try:
        with ThreadPoolExecutor(1) as executor:
            first = executor.submit(first_mapper.map, early, now)
            assert taken.wait(10), "the first mapping never reached its write"
            try:
                result = Mapper(engine, settings).map(second, now)
            except ContentionError:
                result = None
            finally:
                release.set()
            return first.result(10), result
    finally:
        nss.clear_cache()


# A mapping paused after its write, before commit, next to a second one.


NEW_ONE = "/DC=org/DC=example/CN=New One"
NEW_TWO = "/DC=org/DC=example/CN=New Two"
# case: (what the first mapping rejects, the two persons, the accounts
# they get, one after the other as at the same time)
CASES = {
    # nothing to reject: the first takes tst001
    "none": (KIM, JANE, ("tst001", "tst002")),
    # tst001 does not resolve on this host
    "nss": (KIM, JANE, ("tst002", "tst003")),
    # tst001, free longest, ends its quiet period a day from now: inside the
    # loose window of the SQL, so only the exact check rejects it
    "loose": (NEW_ONE, NEW_TWO, ("tst002", "tst003")),
    # an override waived tst002's quiet period when Kim's lease on it
    # ended: anybody but Kim may have it
    "waived": (KIM, JANE, ("tst001", "tst002")),
}


def _scenario(case: str, engine, monkeypatch):
    """Set up case; return the settings and the time to map at."""
    site = make_settings(check_nss=(case == "nss"))
    now = None
    if case in ("none", "nss"):
        sync(engine, site, [pool("tst", "tst", 4, "/tst")])
        if case == "nss":
            _nss_without(monkeypatch, engine, "tst001")
    elif case == "loose":
        sync(engine, site, [pool("tst", "tst", 3, "/tst")])
        map_dn(engine, site, KIM, "/tst", now=at("2024-06-25T00:00:00Z"))
        map_dn(engine, site, JANE, "/tst", now=at("2024-01-01T00:00:00Z"))
        map_dn(engine, site, LEE, "/tst", now=at("2024-01-01T00:00:00Z"))
        end_open_lease(engine, "tst001", at("2024-06-26T00:00:00Z"))
        end_open_lease(engine, "tst002", at("2024-08-01T00:00:00Z"))
        end_open_lease(engine, "tst003", at("2024-08-01T00:00:01Z"))
        now = at("2024-12-24T00:00:00Z")
    else:
        sync(engine, site, [pool("tst", "tst", 2, "/tst")])
        map_dn(engine, site, LEE, "/tst", now=at("2024-01-01T00:00:00Z"))
        map_dn(engine, site, KIM, "/tst", now=at("2025-01-01T00:00:00Z"))
        end_open_lease(engine, "tst002", at("2025-03-01T00:00:00Z"), waive=True)
        end_open_lease(engine, "tst001", at("2025-03-02T00:00:00Z"))
        now = at("2025-03-03T00:00:00Z")
    return site, now


@pytest.mark.parametrize("case", CASES)
def test_a_mapping_in_flight_leaves_every_account_it_does_not_take(
    engine, monkeypatch, case
):
    """While one new lease is uncommitted, a second caller gets the next
    usable account at its first attempt, whatever the first one rejected."""
    _servers_only(engine)
    site, now = _scenario(case, engine, monkeypatch)
    early_dn, second_dn, (want_early, want_second) = CASES[case]
    early, second = _while_in_flight(
        monkeypatch, engine, site, early_dn, second_dn, now
    )
    assert early.account == want_early
    assert second is not None, (
        f"{want_second} was free, yet the mapping in flight had it locked"
    )
    assert second.account == want_second
    assert invariant_violations(engine) == []


def test_a_one_statement_lease_in_flight_leaves_every_other_account(pg, monkeypatch):
    """PostgreSQL with check_nss: the one-statement lease of tst001, paused
    at its NSS check before commit, holds no other account."""
    engine = pg
    site = make_settings(check_nss=True)
    sync(engine, site, [pool("tst", "tst", 4, "/tst")])
    _nss_without(monkeypatch, engine)
    early, second = _while_in_flight(
        monkeypatch, engine, site, KIM, JANE, one_statement=True
    )
    assert early.account == "tst001"
    assert second is not None, "tst002 was free, yet the lease in flight had it"
    assert second.account == "tst002"
    assert invariant_violations(engine) == []


def test_a_new_person_who_finds_the_last_account_locked_leaves_no_identity(
    engine, monkeypatch
):
    """The pool's only account is being leased to Kim: Jane's single attempt
    meets contention and writes nothing; afterwards the pool is exhausted."""
    _servers_only(engine)
    site = make_settings()
    sync(engine, site, [pool("tst", "tst", 1, "/tst")])
    early, second = _while_in_flight(monkeypatch, engine, site, KIM, JANE)
    assert early.account == "tst001"
    assert second is None, f"expected contention while tst001 was locked: {second}"
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, JANE, "/tst")
    with unit_of_work(engine, write=False) as session:
        displays = session.scalars(select(Identity.display)).all()
    assert displays == [KIM], f"a refused mapping left identities: {displays}"
    assert invariant_violations(engine) == []


@pytest.mark.parametrize("case", CASES)
def test_one_after_the_other_the_same_mappings_get_the_same_accounts(
    engine, monkeypatch, case
):
    """What the test above expects is what the mappings give unhurried."""
    site, now = _scenario(case, engine, monkeypatch)
    early_dn, second_dn, want = CASES[case]
    try:
        got = (
            map_dn(engine, site, early_dn, "/tst", now=now).account,
            map_dn(engine, site, second_dn, "/tst", now=now).account,
        )
    finally:
        nss.clear_cache()
    assert got == want


# A new person: the identity first, then an account.


def test_a_blocked_first_mapping_locks_no_account_before_the_identity_key(engine, site):
    """While another transaction holds an uncommitted identity for Kim, a
    first mapping of Kim waits at the unique key; it must not hold tst001."""
    _servers_only(engine)
    sync(engine, site, [pool("tst", "tst", 3, "/tst")])
    probe = create_engine(engine.url)
    mapper = Mapper(engine, site)
    try:
        with ThreadPoolExecutor(1) as executor:
            with identity_pending(engine, KIM):
                fut = executor.submit(mapper.map, MapRequest(dn=KIM, fqans=("/tst",)))
                time.sleep(1.0)
                waiting = not fut.done()
                with probe.connect() as conn:
                    if engine.dialect.name != "postgresql":
                        conn.execute(text("SET SESSION innodb_lock_wait_timeout=1"))
                    free = text(
                        "SELECT name FROM accounts WHERE state='free' "
                        "ORDER BY number FOR UPDATE SKIP LOCKED"
                    )
                    locked = conn.execute(free).scalars().all()
                    conn.rollback()
            result = fut.result(20)
    finally:
        probe.dispose()
    assert waiting, "the mapping did not wait at the identity key"
    assert locked == ["tst001", "tst002", "tst003"], (
        f"while waiting at the identity key the mapping already held {locked}"
    )
    assert result.account == "tst001"
    assert invariant_violations(engine) == []


def _hammer(mapper, dns, fqan="/tst", now=None):
    barrier = threading.Barrier(len(dns))

    def one(dn):
        barrier.wait()
        try:
            return mapper.map(MapRequest(dn=dn, fqans=(fqan,)), now)
        except (PoolExhaustedError, ContentionError) as exc:
            return exc

    with ThreadPoolExecutor(len(dns)) as executor:
        return list(executor.map(one, dns))


def test_ten_first_mappings_of_one_person_when_the_first_account_is_unresolvable(
    engine, monkeypatch
):
    site = make_settings(check_nss=True)
    sync(engine, site, [pool("tst", "tst", 20, "/tst")])
    _nss_without(monkeypatch, engine, "tst001")
    try:
        results = _hammer(Mapper(engine, site), [KIM] * 10)
    finally:
        nss.clear_cache()
    assert {getattr(r, "account", repr(r)) for r in results} == {"tst002"}
    assert len(all_leases(engine)) == 1
    assert invariant_violations(engine) == []


def test_ten_first_mappings_of_one_person_spill_to_the_fallback_pool(engine, site):
    sync(
        engine, site, [pool("full", "tst", 1, "/tst"), pool("spare", "tst", 5, "/tst")]
    )
    assert map_dn(engine, site, LEE, "/tst").account == "full001"
    results = _hammer(Mapper(engine, site), [KIM] * 10)
    assert {getattr(r, "account", repr(r)) for r in results} == {"spare001"}
    assert len(all_leases(engine)) == 2
    assert invariant_violations(engine) == []


def test_ten_first_mappings_of_one_person_first_account_held(engine, site):
    sync(engine, site, [pool("tst", "tst", 5, "/tst")])
    with unit_of_work(engine) as session:
        hold_account(session, "tst001", reason="x", actor="t", now=utcnow())
    results = _hammer(Mapper(engine, site), [KIM] * 10)
    assert {getattr(r, "account", repr(r)) for r in results} == {"tst002"}
    assert len(all_leases(engine)) == 1
    assert invariant_violations(engine) == []


def test_ten_first_mappings_of_one_person_only_rested_accounts(engine, site):
    sync(engine, site, [pool("tst", "tst", 3, "/tst")])
    for dn in (JANE, LEE, "/DC=org/DC=example/CN=Other"):
        map_dn(engine, site, dn, "/tst", now=at("2024-01-01T00:00:00Z"))
    end_open_lease(engine, "tst001", at("2024-06-26T00:00:00Z"))
    end_open_lease(engine, "tst002", at("2024-08-01T00:00:00Z"))
    end_open_lease(engine, "tst003", at("2024-08-02T00:00:00Z"))
    results = _hammer(Mapper(engine, site), [KIM] * 10, now=at("2025-01-01T00:00:00Z"))
    assert {getattr(r, "account", repr(r)) for r in results} == {"tst001"}
    assert invariant_violations(engine) == []


def test_exhaustion_with_unresolvable_and_resting_accounts_under_contention(
    engine, monkeypatch
):
    callers = 12
    """6 never-used accounts, tst001 and tst004 unresolvable; 2 rested
    (one in the loose window, unusable). Exactly 4+1 usable."""
    site = make_settings(check_nss=True)
    sync(engine, site, [pool("tst", "tst", 8, "/tst")])
    _nss_without(monkeypatch, engine)
    old = [f"/DC=org/DC=example/CN=Old {n}" for n in range(8)]
    for n, dn in enumerate(old):
        when = "2024-06-25T00:00:00Z" if n == 6 else "2024-01-01T00:00:00Z"
        map_dn(engine, site, dn, "/tst", now=at(when))
    for n in range(6):
        end_open_lease(engine, f"tst00{n + 1}", at("2024-01-02T00:00:00Z"))
    # tst001-tst006 rested and usable, tst007 inside the loose window,
    # tst008 still leased.
    end_open_lease(engine, "tst007", at("2024-06-26T00:00:00Z"))
    nss.clear_cache()
    _nss_without(monkeypatch, engine, "tst001", "tst004")
    dns = [f"/DC=org/DC=example/CN=Person {n}" for n in range(callers)]
    try:
        results = _hammer(Mapper(engine, site), dns, now=at("2024-12-24T00:00:00Z"))
    finally:
        nss.clear_cache()
    accounts = [r.account for r in results if not isinstance(r, Exception)]
    contention = [r for r in results if isinstance(r, ContentionError)]
    assert contention == []
    assert sorted(accounts) == ["tst002", "tst003", "tst005", "tst006"]
    assert invariant_violations(engine) == []


def test_exhaustion_of_never_used_with_unresolvable_first_account(engine, monkeypatch):
    site = make_settings(check_nss=True)
    sync(engine, site, [pool("tst", "tst", 6, "/tst")])
    _nss_without(monkeypatch, engine, "tst001")
    dns = [f"/DC=org/DC=example/CN=Person {n}" for n in range(9)]
    try:
        results = _hammer(Mapper(engine, site), dns)
    finally:
        nss.clear_cache()
    accounts = [r.account for r in results if not isinstance(r, Exception)]
    contention = [r for r in results if isinstance(r, ContentionError)]
    assert contention == []
    assert sorted(accounts) == [f"tst00{n}" for n in range(2, 7)]
    assert invariant_violations(engine) == []


def test_known_person_still_excluded_from_the_account_waived_against_them(engine, site):
    sync(engine, site, [pool("tst", "tst", 1, "/tst"), pool("cms", "cms", 1, "/cms")])
    map_dn(engine, site, KIM, "/tst", now=at("2025-01-15T00:00:00Z"))
    end_open_lease(engine, "tst001", at("2025-03-01T00:00:00Z"), waive=True)
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, KIM, "/tst", now=at("2025-03-01T00:00:01Z"))
    # a new person (the create statement on PostgreSQL) gets it
    assert (
        map_dn(engine, site, JANE, "/tst", now=at("2025-03-01T00:00:02Z")).account
        == "tst001"
    )
    assert invariant_violations(engine) == []


def test_new_person_concurrent_with_the_waived_person(engine, site):
    """Kim (waived against) and many new persons race for one waived account
    and one never-used: Kim must never get tst001."""
    sync(engine, site, [pool("tst", "tst", 2, "/tst")])
    map_dn(engine, site, KIM, "/tst", now=at("2025-01-15T00:00:00Z"))
    end_open_lease(engine, "tst001", at("2025-03-01T00:00:00Z"), waive=True)
    dns = [KIM] + [f"/DC=org/DC=example/CN=P{n}" for n in range(5)]
    results = _hammer(Mapper(engine, site), dns, now=at("2025-03-02T00:00:00Z"))
    kim = results[0]
    assert not isinstance(kim, ContentionError)
    assert isinstance(kim, PoolExhaustedError) or kim.account == "tst002"
    ok = [r for r in results if not isinstance(r, Exception)]
    assert len(ok) == 2 and len({r.account for r in ok}) == 2
    assert not any(isinstance(r, ContentionError) for r in results)
    assert invariant_violations(engine) == []


def test_32_callers_with_an_unresolvable_head_never_see_contention(engine, monkeypatch):
    site = make_settings(check_nss=True)
    sync(engine, site, [pool("tst", "tst", 24, "/tst")])
    _nss_without(monkeypatch, engine, "tst001", "tst002")
    dns = [f"/DC=org/DC=example/CN=Person {n}" for n in range(32)]
    try:
        results = _hammer(Mapper(engine, site), dns)
    finally:
        nss.clear_cache()
    contention = [r for r in results if isinstance(r, ContentionError)]
    ok = [r.account for r in results if not isinstance(r, Exception)]
    assert contention == []
    assert len(ok) == len(set(ok)) == 22
    assert invariant_violations(engine) == []


def test_pairs_of_one_person_racing_for_a_small_pool(engine, site):
    sync(engine, site, [pool("tst", "tst", 3, "/tst")])
    persons = [f"/DC=org/DC=example/CN=Pair {n}" for n in range(5)]
    results = _hammer(Mapper(engine, site), persons * 3)
    assert not any(isinstance(r, ContentionError) for r in results), results
    by = {}
    for dn, r in zip(persons * 3, results, strict=True):
        by.setdefault(dn, set()).add(getattr(r, "account", type(r).__name__))
    winners = [dn for dn, got in by.items() if got != {"PoolExhaustedError"}]
    assert len(winners) == 3
    assert all(len(by[dn]) == 1 for dn in winners), by
    assert len(all_leases(engine)) == 3
    assert invariant_violations(engine) == []
