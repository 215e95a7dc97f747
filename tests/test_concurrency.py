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
from tests.factories import all_leases, invariant_violations, pool, sync


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
