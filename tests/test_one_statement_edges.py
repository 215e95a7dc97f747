"""Edges of PostgreSQL's one-statement mapping, and of the general path beside it.

Each test sets up a state the one statement must decide exactly (or leave
alone), then checks the account given, the rows written and the lease
invariants.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event, select, text, update

from poolmgr import nss
from poolmgr.db import unit_of_work
from poolmgr.errors import ContentionError, PoolExhaustedError
from poolmgr.holds import IS_HELD, hold_account
from poolmgr.leases import Mapper, MapRequest
from poolmgr.models import Account, Event, Hold, Identity, Lease
from poolmgr.timeutil import utcnow
from tests.conftest import _truncate, make_settings
from tests.factories import (
    after_the_read,
    all_leases,
    at,
    count_rows,
    end_open_lease,
    general_path_only,
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


def _held_and_leased(engine) -> list[str]:
    """Accounts with an open lease that started while a hold stood on them."""
    with unit_of_work(engine, write=False) as session:
        return list(
            session.scalars(
                select(Account.name)
                .join(Lease, Lease.account_id == Account.id)
                .where(Lease.open_marker == 1, IS_HELD)
            )
        )


def _wait_until_blocked(probe, database: str, seconds: float = 5.0) -> bool:
    """Whether some backend of database waits on a lock within seconds."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = :db AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with probe.connect() as conn:
            if conn.execute(query, {"db": database}).scalar():
                return True
        time.sleep(0.05)
    return False


def _map_while_identity_pending(engine, mapper: Mapper, dn: str, meanwhile):
    """Start mapping dn while another transaction holds an uncommitted
    identity for it, run meanwhile() once the mapping waits, then let it go
    on. Returns (whether it waited, the mapping)."""
    probe = create_engine(engine.url)
    try:
        with ThreadPoolExecutor(1) as executor:
            with identity_pending(engine, dn):
                future = executor.submit(mapper.map, MapRequest(dn=dn, fqans=("/tst",)))
                waited = _wait_until_blocked(probe, engine.url.database)
                meanwhile()
            return waited, future.result(20)
    finally:
        probe.dispose()


# Holds placed while a first mapping waits at the identity key.


@pytest.mark.parametrize("path", ["one statement", "general"])
def test_a_hold_placed_while_a_first_mapping_waits_is_respected(
    pg, site, monkeypatch, path
):
    """Kim's first mapping waits at the identity key behind another
    transaction's uncommitted identity for Kim. Meanwhile tst001 is put
    under a hold and committed; then the other transaction rolls back and
    Kim's mapping goes on. It must not lease the held tst001: the candidate
    read has to see the hold, not the snapshot taken before the wait."""
    sync(pg, site, [pool("tst", "tst", 3, "/tst")])
    mapper = Mapper(pg, site)
    if path == "general":
        general_path_only(monkeypatch, mapper)

    def place_hold():
        with unit_of_work(pg) as session:
            hold_account(session, "tst001", reason="incident", actor="t", now=utcnow())

    waited, mapping = _map_while_identity_pending(pg, mapper, KIM, place_hold)
    assert waited, "the mapping never waited at the identity key"
    assert mapping.account != "tst001", (
        "expected an account without a hold (tst002); the mapping leased the "
        f"held {mapping.account}, placed under its hold while it waited"
    )
    assert _held_and_leased(pg) == []
    assert invariant_violations(pg) == []


# The quiet period through the one statement, against _quiet_over.


def _forbid_general_path(monkeypatch):
    def general_path(*args):
        raise AssertionError("the one statement left the lease to the general path")

    monkeypatch.setattr(Mapper, "_map_writing", general_path)


QUIET_BOUNDARIES = {
    # quiet period, last use, the first instant the account may be handed out
    "weeks": ("2 weeks", "2024-02-20T10:00:00.123456Z", "2024-03-05T10:00:00.123456Z"),
    "days over a leap day": ("10 days", "2024-02-25T00:00:00Z", "2024-03-06T00:00:00Z"),
    "hours over midnight": ("36 hours", "2023-12-31T18:30:00Z", "2024-01-02T06:30:00Z"),
    "seconds": (
        "90061 seconds",
        "2025-06-30T23:59:59.999999Z",
        "2025-07-02T01:01:00.999999Z",
    ),
    "month from the 31st": ("1 month", "2025-01-31T23:00:00Z", "2025-02-28T23:00:00Z"),
    "month and day from the 30th": (
        "1 month 1 day",
        "2025-01-30T00:00:00Z",
        "2025-03-01T00:00:00Z",
    ),
    "year from a leap day": ("1 year", "2024-02-29T06:00:00Z", "2025-02-28T06:00:00Z"),
    "mixed units": (
        "1 year 2 months 3 weeks 4 days 5 hours 6 minutes 7 seconds",
        "2023-12-31T23:59:59.000001Z",
        "2025-03-26T05:06:06.000001Z",
    ),
}


@pytest.mark.parametrize(
    ("quiet", "last_use", "over_at"),
    list(QUIET_BOUNDARIES.values()),
    ids=list(QUIET_BOUNDARIES),
)
def test_the_quiet_period_ends_at_the_exact_instant_on_every_backend(
    engine, monkeypatch, quiet, last_use, over_at
):
    """A new person: refused one microsecond before the quiet period ends
    (no identity left behind), given the rested account at that instant,
    on PostgreSQL by the one statement alone; the Python check agrees."""
    site = make_settings(quiet_period=quiet)
    assert site.quiet.after(at(last_use)) == at(over_at), "the table is wrong"
    sync(engine, site, [pool("tst", "tst", 1, "/tst")])
    map_dn(engine, site, JANE, "/tst", now=at(last_use))
    end_open_lease(engine, "tst001", at(last_use))
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, KIM, "/tst", now=at(over_at) - timedelta(microseconds=1))
    assert count_rows(engine, Identity) == 1, "the refused mapping left an identity"
    if engine.dialect.name == "postgresql":
        _forbid_general_path(monkeypatch)
    mapping = map_dn(engine, site, KIM, "/tst", now=at(over_at))
    assert (mapping.account, mapping.new) == ("tst001", True), (
        f"expected tst001 leased at {over_at}, the end of the quiet period"
    )
    assert invariant_violations(engine) == []


@pytest.mark.parametrize("who", ["the same person", "a known person"])
def test_a_rested_account_goes_to_a_known_person_exactly_at_the_end(
    engine, monkeypatch, who
):
    """A known person (their own earlier account, or somebody else's) gets a
    rested account at the instant its quiet period ends, not before."""
    site = make_settings(quiet_period="3 months")
    sync(engine, site, [pool("tst", "tst", 1, "/tst"), pool("oth", "oth", 1, "/oth")])
    requester = JANE if who == "the same person" else KIM
    map_dn(engine, site, KIM, "/oth", now=at("2024-01-01T00:00:00Z"))
    map_dn(engine, site, JANE, "/tst", now=at("2024-11-30T12:00:00Z"))
    end_open_lease(engine, "tst001", at("2024-12-01T00:00:00Z"))
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, requester, "/tst", now=at("2025-02-28T11:59:59.999999Z"))
    if engine.dialect.name == "postgresql":
        _forbid_general_path(monkeypatch)
    mapping = map_dn(engine, site, requester, "/tst", now=at("2025-02-28T12:00:00Z"))
    assert mapping.account == "tst001", "expected tst001 once its quiet period ended"
    assert count_rows(engine, Identity) == 2
    assert invariant_violations(engine) == []


def test_an_override_never_gives_the_account_back_to_its_person(engine, monkeypatch):
    """Kim's lease on tst001 ended by an override: anybody else may have it
    at once; Kim, known from another pool, gets tst002 (never used) and,
    with only tst001 left, is refused until the quiet period is over."""
    site = make_settings(quiet_period="6 months")
    sync(engine, site, [pool("tst", "tst", 2, "/tst"), pool("oth", "oth", 1, "/oth")])
    map_dn(engine, site, KIM, "/oth", now=at("2025-01-01T00:00:00Z"))
    map_dn(engine, site, KIM, "/tst", now=at("2025-03-01T00:00:00Z"))
    end_open_lease(engine, "tst001", at("2025-03-01T00:00:01Z"), waive=True)
    now = at("2025-03-02T00:00:00Z")
    assert map_dn(engine, site, KIM, "/tst", now=now).account == "tst002"
    end_open_lease(engine, "tst002", now)
    later = at("2025-06-01T00:00:00Z")
    # tst002 (used by Kim just now) is resting; tst001 is waived against Kim.
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, KIM, "/tst", now=later)
    assert map_dn(engine, site, JANE, "/tst", now=later).account == "tst001", (
        "expected the waived account for anybody but Kim"
    )
    assert invariant_violations(engine) == []


# The one statement picks what the general path picks.

_HISTORY = st.one_of(
    st.none(),
    st.tuples(
        st.integers(0, 240),  # last use, hours after BASE
        st.integers(0, 72),  # free since, hours after the last use
        st.sampled_from(["", "waived by kim", "waived by other", "held"]),
    ),
)
BASE = at("2024-08-31T06:00:00Z")


def _set_history(engine, pool_name: str, histories, persons: dict[str, int]) -> None:
    """Write each account's history of pool_name straight into its row."""
    with unit_of_work(engine) as session:
        accounts = session.scalars(
            select(Account)
            .join(Account.pool)
            .where(Account.pool.has(name=pool_name))
            .order_by(Account.number)
        ).all()
        for account, history in zip(accounts, histories, strict=True):
            if history is None:
                continue
            last_hours, free_hours, mark = history
            account.last_used_at = BASE + timedelta(hours=last_hours)
            account.free_since = account.last_used_at + timedelta(hours=free_hours)
            if mark == "held":
                account.held = True
                session.add(
                    Hold(
                        account_id=account.id,
                        started_at=BASE,
                        started_by="t",
                        reason="x",
                        open_account_id=account.id,
                    )
                )
            elif mark:
                account.quiet_waived_at = account.free_since
                session.add(
                    Lease(
                        account_id=account.id,
                        identity_id=persons[mark.split()[-1]],
                        pool_id=account.pool_id,
                        started_at=BASE,
                        last_used_at=account.last_used_at,
                        ended_at=account.free_since,
                        end_reason="override",
                    )
                )


def _persons(engine, site) -> dict[str, int]:
    map_dn(engine, site, KIM, "/oth", now=BASE)
    map_dn(engine, site, LEE, "/oth2", now=BASE)
    with unit_of_work(engine, write=False) as session:
        ids = session.scalars(select(Identity.id).order_by(Identity.id)).all()
    return {"kim": ids[0], "other": ids[1]}


def _account_or_refusal(mapper: Mapper, dn: str, fqan: str, now) -> str:
    try:
        return mapper.map(MapRequest(dn=dn, fqans=(fqan,)), now).account[3:]
    except PoolExhaustedError:
        return "exhausted"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    histories=st.lists(_HISTORY, min_size=4, max_size=4),
    known=st.booleans(),
)
def test_the_one_statement_picks_the_account_the_general_path_picks(
    pg, monkeypatch, histories, known
):
    """Two pools with the same account histories (rested, in the loose
    window, waived against Kim or somebody else, held): the one statement
    in pool aaa and the general path in pool bbb give the same account
    number, or both refuse, to a new person and to Kim (known)."""
    _truncate(pg)
    site = make_settings(quiet_period="6 months")
    specs = [
        pool("aaa", "aaa", 4, "/aaa"),
        pool("bbb", "bbb", 4, "/bbb"),
        pool("oth", "oth", 2, "/oth"),
        pool("ot2", "ot2", 1, "/oth2"),
    ]
    sync(pg, site, specs, now=BASE)
    persons = _persons(pg, site)
    for name in ("aaa", "bbb"):
        _set_history(pg, name, histories, persons)
    now = site.quiet.after(BASE) + timedelta(days=5)
    short = Mapper(pg, site)
    general = Mapper(pg, site)
    with monkeypatch.context() as patch:
        patch.setattr(general, "_map_at_once", lambda *args: None)
        got = (
            _account_or_refusal(short, KIM if known else JANE, "/aaa", now),
            _account_or_refusal(general, KIM if known else LEE + " 2", "/bbb", now),
        )
    assert got[0] == got[1], (
        f"expected the same account from both paths, one statement {got[0]}, "
        f"general path {got[1]}, histories {histories}"
    )
    assert _held_and_leased(pg) == []
    assert invariant_violations(pg) == []


# Changes that land between the read and the one statement.


def _lease_events(engine, pool_name: str) -> list[str]:
    with unit_of_work(engine, write=False) as session:
        return list(
            session.scalars(
                select(Event.account)
                .where(Event.kind == "lease_started", Event.pool == pool_name)
                .order_by(Event.id)
            )
        )


@pytest.mark.parametrize("waive", [True, False], ids=["override", "recycled"])
def test_a_lease_ended_between_read_and_write(engine, monkeypatch, waive):
    """Kim's open lease on tst001 is ended (by an override, or by recycling
    once its quiet period is over) and Jane takes tst002, all between the
    read and the write of Kim's mapping. After an override Kim must be
    refused (tst001 is waived against Kim); after recycling Kim gets
    tst001 again, as a new lease."""
    site = make_settings(quiet_period="1 day")
    sync(engine, site, [pool("tst", "tst", 2, "/tst")])
    map_dn(engine, site, KIM, "/tst", now=at("2025-01-01T00:00:00Z"))
    now = at("2025-01-01T12:00:00Z" if waive else "2025-01-03T00:00:00Z")

    def end_and_take():
        end_open_lease(engine, "tst001", now, waive=waive)
        general = general_path_only(monkeypatch, Mapper(engine, site))
        general.map(MapRequest(dn=JANE, fqans=("/tst",)), now)

    after_the_read(monkeypatch, end_and_take)
    mapper = Mapper(engine, site)
    if waive:
        with pytest.raises(PoolExhaustedError):
            mapper.map(MapRequest(dn=KIM, fqans=("/tst",)), now)
        assert _lease_events(engine, "tst") == ["tst001", "tst002"]
    else:
        mapping = mapper.map(MapRequest(dn=KIM, fqans=("/tst",)), now)
        assert (mapping.account, mapping.new) == ("tst001", True), (
            f"expected a new lease of the rested tst001 for Kim, got {mapping}"
        )
        assert _lease_events(engine, "tst") == ["tst001", "tst002", "tst001"]
    assert invariant_violations(engine) == []


@pytest.mark.parametrize("who", ["new", "known"])
def test_the_same_person_leased_elsewhere_between_read_and_write(
    engine, monkeypatch, who
):
    """Another front-end gives Kim tst001 between the read and the write of
    Kim's mapping: the mapping answers with that lease, and no second
    lease, identity or lease_started event is left behind."""
    site = make_settings()
    sync(engine, site, [pool("tst", "tst", 3, "/tst"), pool("oth", "oth", 1, "/oth")])
    if who == "known":
        map_dn(engine, site, KIM, "/oth")
    after_the_read(
        monkeypatch,
        lambda: general_path_only(monkeypatch, Mapper(engine, site)).map(
            MapRequest(dn=KIM, fqans=("/tst",))
        ),
    )
    mapping = Mapper(engine, site).map(MapRequest(dn=KIM, fqans=("/tst",)))
    assert (mapping.account, mapping.new) == ("tst001", False), (
        f"expected Kim's lease of tst001 made by the other front-end: {mapping}"
    )
    assert count_rows(engine, Identity) == 1
    assert _lease_events(engine, "tst") == ["tst001"]
    assert len([lease for lease in all_leases(engine) if lease.pool_id == 1]) == 1
    assert invariant_violations(engine) == []


# The server log under ordinary traffic.


def _server_log(engine) -> str:
    """Debian's log file of the local cluster the tests use."""
    with engine.connect() as conn:
        major = conn.execute(text("SHOW server_version")).scalar().split(".")[0]
    return f"/var/log/postgresql/postgresql-{major}-main.log"


def _log_size(engine) -> int:
    try:
        with open(_server_log(engine), "rb") as log:
            return log.seek(0, 2)
    except OSError as exc:
        pytest.skip(f"the PostgreSQL server log is not readable: {exc}")


def _server_errors(engine, since: int) -> list[str]:
    """ERROR lines the server logged for this test's database since offset."""
    time.sleep(0.3)  # the server writes its log a moment later
    with open(_server_log(engine), "rb") as log:
        log.seek(since)
        lines = log.read().decode(errors="replace").splitlines()
    tag = f"@{engine.url.database} "
    return [
        line.split("ERROR:", 1)[1].strip()
        for line in lines
        if tag in line and "ERROR:" in line
    ]


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


def test_ordinary_mappings_one_after_another_log_no_server_error(pg, monkeypatch):
    """New, known and returning persons, a rested account, an exhausted
    first pool, a DN-only pool, an account NSS rejects and a refusal, one
    after another: the server logs no ERROR for any of them."""
    site = make_settings(check_nss=True, dn_only_pool="dno", quiet_period="1 day")
    sync(
        pg,
        site,
        [
            pool("tst", "tst", 2, "/tst"),
            pool("one", "one", 1, "/one"),
            pool("two", "two", 2, "/one"),
            pool("dno", "dno", 2, "/dno"),
        ],
    )
    monkeypatch.setattr(
        nss,
        "account_problem",
        lambda name, uid: nss.Problem(name, "gone") if name == "dno001" else None,
    )
    since = _log_size(pg)
    t0 = at("2025-01-01T00:00:00Z")
    assert map_dn(pg, site, KIM, "/tst", now=t0).account == "tst001"
    assert map_dn(pg, site, KIM, "/tst", now=t0 + timedelta(hours=1)).new is False
    assert map_dn(pg, site, JANE, "/tst", now=t0).account == "tst002"
    with pytest.raises(PoolExhaustedError):
        map_dn(pg, site, LEE, "/tst", now=t0)
    end_open_lease(pg, "tst001", t0 + timedelta(hours=2))
    assert map_dn(pg, site, LEE, "/tst", now=t0 + timedelta(days=2)).account == (
        "tst001"
    )
    assert map_dn(pg, site, KIM, "/one", now=t0).account == "one001"
    assert map_dn(pg, site, JANE, "/one", now=t0).account == "two001"
    assert map_dn(pg, site, LEE, "/one", now=t0).account == "two002"
    assert map_dn(pg, site, KIM, now=t0).account == "dno002"
    errors = _server_errors(pg, since)
    assert errors == [], f"expected no server ERROR from ordinary mappings: {errors}"
    assert invariant_violations(pg) == []


def test_new_persons_racing_for_the_last_accounts(engine, monkeypatch):
    """12 new persons at once for 6 accounts (3 never used, 3 rested, one
    more still resting): exactly 6 succeed with distinct accounts, the
    others are refused as exhausted, none sees contention, and no refused
    person is left with an identity."""
    site = make_settings(quiet_period="1 day")
    sync(engine, site, [pool("tst", "tst", 7, "/tst")])
    t0 = at("2025-01-01T00:00:00Z")
    now = t0 + timedelta(days=1)
    for n in range(4):
        last_use = t0 if n < 3 else now - timedelta(hours=1)
        map_dn(engine, site, f"/DC=org/DC=example/CN=Old {n}", "/tst", now=last_use)
        end_open_lease(engine, f"tst00{n + 1}", last_use)
    dns = [f"/DC=org/DC=example/CN=Person {n}" for n in range(12)]
    results = _hammer(Mapper(engine, site), dns, now=now)
    accounts = sorted(r.account for r in results if not isinstance(r, Exception))
    contention = [r for r in results if isinstance(r, ContentionError)]
    assert contention == [], "expected no contention while accounts were free"
    assert accounts == [f"tst00{n}" for n in (1, 2, 3, 5, 6, 7)], (
        f"expected the 6 usable accounts, each once: {accounts}"
    )
    assert count_rows(engine, Identity) == 4 + 6, "a refused person left an identity"
    assert invariant_violations(engine) == []


@pytest.mark.parametrize("path", ["one statement", "general"])
def test_a_new_person_meeting_a_lease_in_flight_is_refused_and_leaves_nothing(
    pg, monkeypatch, path
):
    """Kim's lease of the pool's last account is in flight (paused at its
    NSS check, before commit) when Jane, a new person, maps: Jane is
    refused as exhausted once Kim's lease commits, and leaves no identity.
    The general path logs no server ERROR; the one statement ends in the
    not-null violation on leases.account_id that undoes it (README), and in
    nothing else."""
    site = make_settings(check_nss=True)
    sync(pg, site, [pool("tst", "tst", 1, "/tst")])
    taken, release = threading.Event(), threading.Event()

    def resolves_after_a_pause(name, uid):
        if not taken.is_set():
            taken.set()
            release.wait(5)
        return None

    monkeypatch.setattr(nss, "account_problem", resolves_after_a_pause)
    jane = Mapper(pg, site)
    if path == "general":
        general_path_only(monkeypatch, jane)
    since = _log_size(pg)
    with ThreadPoolExecutor(2) as executor:
        kim = executor.submit(Mapper(pg, site).map, MapRequest(dn=KIM, fqans=("/tst",)))
        assert taken.wait(10), "Kim's mapping never reached its NSS check"
        refused = executor.submit(jane.map, MapRequest(dn=JANE, fqans=("/tst",)))
        time.sleep(0.5)
        release.set()
        assert kim.result(10).account == "tst001"
        with pytest.raises(PoolExhaustedError):
            refused.result(20)
    assert count_rows(pg, Identity) == 1, "the refused Jane left an identity"
    errors = _server_errors(pg, since)
    allowed = 'null value in column "account_id" of relation "leases"'
    if path == "one statement":
        errors = [e for e in errors if not e.startswith(allowed)]
    assert errors == [], (
        f"expected no other server ERROR from a refused first mapping; "
        f"{len(errors)} logged: {errors}"
    )


# NSS, DN-only pools and lowercased displays.


def test_every_account_unresolvable_leaves_nothing_behind(pg, monkeypatch):
    """check_nss with no account of the pool resolving: the one statement
    is rolled back each time, the new person is refused as exhausted with
    the note naming the accounts, and no identity, lease or event is left."""
    site = make_settings(check_nss=True)
    sync(pg, site, [pool("tst", "tst", 2, "/tst")])
    monkeypatch.setattr(nss, "account_problem", lambda n, u: nss.Problem(n, "gone"))
    with pytest.raises(PoolExhaustedError, match="do not resolve"):
        map_dn(pg, site, KIM, "/tst")
    assert count_rows(pg, Identity) == 0, "the refused person left an identity"
    assert all_leases(pg) == []
    assert count_rows(pg, Event, Event.kind == "lease_started") == 0
    assert count_rows(pg, Account, Account.state == "free") == 2


def test_an_nss_error_rolls_the_one_statement_back(pg, monkeypatch):
    """An NSS lookup that raises (a broken back-end) fails the mapping and
    leaves no identity, lease or event; the next mapping works."""
    site = make_settings(check_nss=True)
    sync(pg, site, [pool("tst", "tst", 2, "/tst")])

    def broken(name, uid):
        raise OSError("nss back-end down")

    monkeypatch.setattr(nss, "account_problem", broken)
    with pytest.raises(OSError):
        map_dn(pg, site, KIM, "/tst")
    assert (count_rows(pg, Identity), len(all_leases(pg))) == (0, 0), (
        "expected the failed mapping to leave no identity and no lease"
    )
    monkeypatch.setattr(nss, "account_problem", lambda name, uid: None)
    assert map_dn(pg, site, KIM, "/tst").account == "tst001"
    assert invariant_violations(pg) == []


def test_a_dn_only_request_through_the_one_statement(pg, monkeypatch):
    """No FQAN, dn_only_pool set: the one statement leases the DN-only
    pool's account with no FQAN on the lease, as the general path does."""
    site = make_settings(dn_only_pool="dno")
    sync(pg, site, [pool("tst", "tst", 2, "/tst"), pool("dno", "dno", 2, "/dno")])
    short = map_dn(pg, site, KIM)
    general = general_path_only(monkeypatch, Mapper(pg, site))
    long = general.map(MapRequest(dn=JANE))
    assert (short.account, long.account) == ("dno001", "dno002")
    with unit_of_work(pg, write=False) as session:
        rows = session.execute(
            select(Lease.fqan, Event.details)
            .join(Event, Event.lease_id == Lease.id)
            .order_by(Lease.id)
        ).all()
    assert rows[0] == rows[1], f"the two paths wrote different rows: {rows}"
    assert rows[0][0] is None
    assert invariant_violations(pg) == []


def test_a_lowercased_person_whose_lease_ended_gets_the_display_back(engine):
    """A person known only by a lowercased display (a gridmapdir import),
    whose lease ended, maps again: the display is restored from the DN
    now presented, and the new lease's event carries the restored one."""
    site = make_settings()
    sync(engine, site, [pool("tst", "tst", 2, "/tst")])
    map_dn(engine, site, KIM, "/tst")
    with unit_of_work(engine) as session:
        identity = session.scalars(select(Identity)).one()
        identity.display, identity.display_lossy = KIM.lower(), True
    end_open_lease(engine, "tst001", utcnow())
    mapping = map_dn(engine, site, KIM, "/tst")
    assert mapping.account == "tst002"
    with unit_of_work(engine, write=False) as session:
        identity = session.scalars(select(Identity)).one()
        dns = session.scalars(
            select(Event.dn).where(Event.kind == "lease_started").order_by(Event.id)
        ).all()
    assert (identity.display, identity.display_lossy) == (KIM, False), (
        "expected the display restored to the DN as presented"
    )
    assert dns == [KIM, KIM], f"expected the restored display in the event: {dns}"
    assert invariant_violations(engine) == []


def test_a_spilled_first_mapping_returns_to_its_second_pool(pg, monkeypatch):
    """Two pools serve /one and the first is exhausted: a new person gets
    the second pool's account (one identity), and mapping again only
    records last use on that lease, through the single guarded update."""
    site = make_settings()
    sync(pg, site, [pool("one", "one", 1, "/one"), pool("two", "two", 2, "/one")])
    map_dn(pg, site, LEE, "/one")
    first = map_dn(pg, site, KIM, "/one")
    assert (first.account, first.new) == ("two001", True)
    _forbid_general_path(monkeypatch)
    again = map_dn(pg, site, KIM, "/one")
    assert (again.account, again.new, again.lease_id) == (
        "two001",
        False,
        first.lease_id,
    )
    assert count_rows(pg, Identity) == 2
    assert invariant_violations(pg) == []


# Cost of a refusal in a big pool whose free accounts all still rest.


def _statementcount_rows(engine, work) -> int:
    sent = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        work()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return len(sent)


def test_a_refusal_in_a_big_resting_pool_takes_a_bounded_number_of_statements(
    pg,
):
    """400 free accounts, every one used half an hour ago with a quiet
    period of one hour: all inside the loose cutoff window, none usable. On
    PostgreSQL, where the quiet period is checked exactly in SQL, a new
    person's refusal costs a few statements, not one batch query per 16
    accounts rejected, each excluding every account rejected so far."""
    engine = pg
    site = make_settings(quiet_period="1 hour")
    sync(engine, site, [pool("big", "big", 400, "/big")])
    now = at("2025-03-01T00:00:00Z")
    with unit_of_work(engine) as session:
        session.execute(
            update(Account).values(
                last_used_at=now - timedelta(minutes=30),
                free_since=now - timedelta(minutes=30),
            )
        )
    mapper = Mapper(engine, site)

    def refused():
        with pytest.raises(PoolExhaustedError):
            mapper.map(MapRequest(dn=KIM, fqans=("/big",)), now)

    sent = _statementcount_rows(engine, refused)
    assert sent <= 12, (
        f"expected a refusal in a few statements, it took {sent} for 400 "
        "resting accounts"
    )


def test_new_and_returning_persons_at_once_near_exhaustion(engine):
    """8 returning persons (each must keep their account) and 10 new ones
    race for a pool with 3 never-used and 2 rested accounts left: all 8
    returning keep their leases, exactly 5 new persons get the 5 free
    accounts, the rest are refused, nobody sees contention."""
    site = make_settings(quiet_period="1 day")
    sync(engine, site, [pool("tst", "tst", 13, "/tst")])
    t0 = at("2025-01-01T00:00:00Z")
    now = t0 + timedelta(days=2)
    old = [f"/DC=org/DC=example/CN=Old {n}" for n in range(10)]
    held = {}
    for dn in old:
        held[dn] = map_dn(engine, site, dn, "/tst", now=t0).account
    for dn in old[:2]:
        end_open_lease(engine, held.pop(dn), t0 + timedelta(hours=1))
    new = [f"/DC=org/DC=example/CN=New {n}" for n in range(10)]
    dns = list(held) + new
    results = _hammer(Mapper(engine, site), dns, now=now)
    got = dict(zip(dns, results, strict=True))
    assert not any(isinstance(r, ContentionError) for r in results), results
    kept = {dn: got[dn].account for dn in held}
    assert kept == held, f"expected returning persons to keep {held}: {kept}"
    granted = [got[dn].account for dn in new if not isinstance(got[dn], Exception)]
    assert sorted(granted) == ["tst001", "tst002", "tst011", "tst012", "tst013"], (
        f"expected the 3 never-used and 2 rested accounts, each once: {granted}"
    )
    assert count_rows(engine, Identity) == 10 + 5, "a refused person left an identity"
    assert invariant_violations(engine) == []
