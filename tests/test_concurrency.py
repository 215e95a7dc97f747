"""F13: concurrent first mappings in threads and processes, on every backend.

Callers are released together by a barrier. Afterwards the invariants are
checked with queries on the database itself.
"""

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from poolmgr.errors import PoolExhaustedError
from poolmgr.leases import Mapper, MapRequest
from tests.factories import (
    after_the_read,
    all_leases,
    invariant_violations,
    pool,
    sync,
)


def _hammer(mapper: Mapper, dns: list[str], fqan: str = "/tst") -> list[object]:
    barrier = threading.Barrier(len(dns))

    def one(dn: str) -> object:
        barrier.wait()
        try:
            return mapper.map(MapRequest(dn=dn, fqans=(fqan,)))
        except PoolExhaustedError as exc:
            return exc

    with ThreadPoolExecutor(len(dns)) as executor:
        return list(executor.map(one, dns))


def test_ten_concurrent_first_mappings_of_one_person_share_one_lease(engine, site):
    sync(engine, site, [pool("tst", "tst", 20, "/tst")])
    results = _hammer(
        Mapper(engine, site), ["/DC=org/DC=example/CN=Casey Concurrent"] * 10
    )
    assert {r.account for r in results} == {"tst001"}
    assert len(all_leases(engine)) == 1
    assert invariant_violations(engine) == []


def test_exhaustion_under_contention_gives_exactly_the_free_accounts(engine, site):
    sync(engine, site, [pool("tst", "tst", 5, "/tst")])
    dns = [f"/DC=org/DC=example/CN=Person {n}" for n in range(6)]
    results = _hammer(Mapper(engine, site), dns)
    accounts = [r.account for r in results if not isinstance(r, Exception)]
    failures = [r for r in results if isinstance(r, PoolExhaustedError)]
    assert len(accounts) == len(set(accounts)) == 5
    assert len(failures) == 1
    assert invariant_violations(engine) == []


def test_many_new_persons_at_once_all_succeed_with_distinct_accounts(engine, site):
    sync(engine, site, [pool("tst", "tst", 100, "/tst")])
    dns = [f"/DC=org/DC=example/CN=Person {n}" for n in range(32)]
    results = _hammer(Mapper(engine, site), dns)
    accounts = [r.account for r in results]
    assert len(set(accounts)) == 32
    assert invariant_violations(engine) == []


def _process_worker(url: str, dns: list[str], start, queue) -> None:
    from poolmgr.db import get_engine
    from tests.conftest import make_settings

    mapper = Mapper(get_engine(url), make_settings())
    start.wait()
    for dn in dns:
        try:
            queue.put((dn, mapper.map(MapRequest(dn=dn, fqans=("/tst",))).account))
        except Exception as exc:  # noqa: BLE001  (reported to the parent)
            queue.put((dn, f"error: {exc}"))


def test_separate_processes_sharing_one_database(engine, site):
    """Two front-ends: 4 processes x 10 new DNs plus repeats, one database."""
    url = engine.url.render_as_string(hide_password=False)
    sync(engine, site, [pool("tst", "tst", 100, "/tst")])
    context = multiprocessing.get_context("spawn")
    start, queue = context.Event(), context.Queue()
    groups = [[f"/DC=org/DC=example/CN=P{w}-{n}" for n in range(10)] for w in range(4)]
    groups[1] += groups[0][:5]
    workers = [
        context.Process(target=_process_worker, args=(url, dns, start, queue))
        for dns in groups
    ]
    for worker in workers:
        worker.start()
    start.set()
    results = [queue.get(timeout=120) for _ in range(sum(map(len, groups)))]
    for worker in workers:
        worker.join(timeout=60)
    errors = [r for r in results if r[1].startswith("error")]
    assert errors == []
    by_dn: dict[str, set[str]] = {}
    for dn, account in results:
        by_dn.setdefault(dn, set()).add(account)
    assert all(len(accounts) == 1 for accounts in by_dn.values())
    assert len({next(iter(a)) for a in by_dn.values()}) == 40
    assert invariant_violations(engine) == []


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# Changes that land between a mapping's read and its write. On a server
# database the first write attempt relies on what the read found; these
# make that read stale on purpose, right after it.


def test_a_lease_ended_after_the_read_is_not_touched_and_a_new_one_starts(
    engine, site, monkeypatch
):
    from datetime import timedelta

    from poolmgr.db import unit_of_work
    from poolmgr.leases import end_lease
    from poolmgr.models import Lease
    from poolmgr.timeutil import utcnow

    sync(engine, site, [pool("tst", "tst", 3, "/tst")])
    dn = "/DC=org/DC=example/CN=Robin Race"
    start = utcnow() - timedelta(hours=1)
    first = Mapper(engine, site).map(MapRequest(dn=dn, fqans=("/tst",)), now=start)

    def end_it() -> None:
        with unit_of_work(engine) as session:
            lease = session.get(Lease, first.lease_id)
            end_lease(session, lease, reason="test", actor="test", now=utcnow())

    after_the_read(monkeypatch, end_it)
    again = Mapper(engine, site).map(MapRequest(dn=dn, fqans=("/tst",)))

    leases = all_leases(engine)
    assert again.new and again.lease_id != first.lease_id, (
        f"expected a new lease after the old one ended, got {again}"
    )
    assert leases[0].ended_at is not None
    assert leases[0].last_used_at == start, "an ended lease was touched"
    assert invariant_violations(engine) == []


def test_a_person_created_after_the_read_is_found_on_retry(engine, site, monkeypatch):
    sync(engine, site, [pool("tst", "tst", 3, "/tst")])
    dn = "/DC=org/DC=example/CN=Robin Race"
    other = Mapper(engine, site)

    def map_elsewhere() -> None:
        other.map(MapRequest(dn=dn, fqans=("/tst",)))

    after_the_read(monkeypatch, map_elsewhere)
    result = Mapper(engine, site).map(MapRequest(dn=dn, fqans=("/tst",)))

    (lease,) = all_leases(engine)
    assert result.lease_id == lease.id and result.account == "tst001"
    assert invariant_violations(engine) == []
