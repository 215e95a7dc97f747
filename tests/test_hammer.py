"""The heavy concurrency proof: two ``poolmgr serve`` and the library, one database.

On every backend, two services run as separate processes (the second one
with two forked workers) on the test's database, while threads in this
process call the library directly. Callers are released together by a
barrier. F13's cases run through the services, then 32 callers mix new and
returning persons across all three front-ends while a small pool runs out.
Every mapping writes last use (``last_use_resolution: 0``), the harshest
setting. Afterwards the lease invariants are checked with queries on the
database, and every reply is accounted for.
"""

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, func, select

from poolmgr import protocol
from poolmgr.db import unit_of_work
from poolmgr.errors import PoolmgrError
from poolmgr.leases import Mapper, MapRequest
from poolmgr.models import Event, Lease, Pool
from poolmgr.service import send_request
from tests.conftest import make_settings
from tests.factories import invariant_violations, pool, sync

DN = "/DC=org/DC=example/CN="
SERVE = [sys.executable, "-c", "from poolmgr.cli import run; run()"]
SERVICE_OPTIONS = ({"workers": 16, "processes": 1}, {"workers": 8, "processes": 2})

Reply = tuple[str, str]
"""("OK", account) or ("ERR", code)."""


@pytest.fixture
def services(engine: Engine, tmp_path: Path) -> Iterator[list[Path]]:
    """Two running services on the engine's database; stopped after the test."""
    directory = Path(tempfile.mkdtemp(prefix="pm-ham-", dir="/tmp"))
    url = engine.url.render_as_string(hide_password=False)
    processes, sockets = [], []
    try:
        for index, options in enumerate(SERVICE_OPTIONS):
            config = tmp_path / f"service{index}.yaml"
            config.write_text(yaml.safe_dump(_config(url, options)))
            sockets.append(directory / f"s{index}.sock")
            processes.append(_start(config, sockets[-1], tmp_path / f"s{index}.log"))
        for index, (process, path) in enumerate(zip(processes, sockets, strict=True)):
            _wait_listening(process, path, tmp_path / f"s{index}.log")
        yield sockets
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            _reap(process)
        shutil.rmtree(directory, ignore_errors=True)


def _config(url: str, service: dict[str, int]) -> dict[str, object]:
    return {
        "database": url,
        "check_nss": False,
        "last_use_resolution": 0,
        "syslog": {"enabled": False},
        "service": service,
    }


def _start(config: Path, path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as output:
        return subprocess.Popen(
            [*SERVE, "--config", str(config), "serve", "--socket", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )


def _wait_listening(process: subprocess.Popen[bytes], path: Path, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if ask(path, "PING") == ("OK", "pong"):
                return
        except PoolmgrError:
            pass
        output = log.read_text(errors="replace")[-1500:]
        assert process.poll() is None, (
            f"poolmgr serve on {path} exited early with {process.returncode}:\n{output}"
        )
        assert time.monotonic() < deadline, (
            f"poolmgr serve on {path} never listened:\n{output}"
        )
        time.sleep(0.05)


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def ask(path: Path, verb: str, dn: str = "", *fqans: str) -> Reply:
    """Send one request on a fresh connection, as the LCMAPS plugin does."""
    line = send_request(path, protocol.encode_request(verb, dn, fqans), timeout=60)
    reply = protocol.parse_reply(line)
    return ("OK", reply.fields[0]) if reply.ok else ("ERR", reply.code)


def library_caller(mapper: Mapper) -> Callable[[str, str], Reply]:
    """Return a caller that maps through the library, replying like the service."""

    def call(dn: str, fqan: str) -> Reply:
        try:
            return "OK", mapper.map(MapRequest(dn, (fqan,))).account
        except PoolmgrError as exc:
            return "ERR", exc.code

    return call


def socket_caller(path: Path) -> Callable[[str, str], Reply]:
    """Return a caller that maps through the service on path."""
    return lambda dn, fqan: ask(path, "MAP", dn, fqan)


def hammer(
    callers: list[Callable[[str, str], Reply]], work: list[list[tuple[str, str]]]
) -> list[list[tuple[str, str, Reply]]]:
    """Run work[i] (a list of (dn, fqan)) on callers[i], all released at once."""
    barrier = threading.Barrier(len(callers))

    def run(index: int) -> list[tuple[str, str, Reply]]:
        barrier.wait()
        return [(dn, fqan, callers[index](dn, fqan)) for dn, fqan in work[index]]

    with ThreadPoolExecutor(len(callers)) as executor:
        return list(executor.map(run, range(len(callers))))


def lease_counts(engine: Engine) -> dict[str, int]:
    """Return the number of leases ever started per pool."""
    with unit_of_work(engine, write=False) as session:
        rows = session.execute(
            select(Pool.name, func.count(Lease.id))
            .join(Lease, Lease.pool_id == Pool.id)
            .group_by(Pool.name)
        ).all()
    return dict(rows)


def started_events(engine: Engine) -> Counter[int]:
    """Return how many lease_started events each lease id has."""
    with unit_of_work(engine, write=False) as session:
        ids = session.scalars(
            select(Event.lease_id).where(Event.kind == "lease_started")
        ).all()
    return Counter(ids)


def test_f13_cases_through_two_services_sharing_one_database(
    engine: Engine, services: list[Path]
) -> None:
    site = make_settings()
    sync(
        engine,
        site,
        [
            pool("cas", "cas", 20, "/cas"),
            pool("big", "big", 1000, "/big"),
            pool("five", "five", 5, "/five"),
        ],
    )
    one, two = (socket_caller(path) for path in services)

    # 1. Ten concurrent first mappings of one person, across both services.
    casey = DN + "Casey Concurrent"
    replies = _flatten(hammer([one, two] * 5, [[(casey, "/cas")]] * 10))
    assert Counter(replies) == {("OK", "cas001"): 10}, "all ten get the same account"
    assert lease_counts(engine).get("cas") == 1, "exactly one lease row for Casey"
    assert sum(started_events(engine).values()) == 1, "one lease_started event"

    # 2. 8 clients x 25 distinct new DNs, split across both services.
    work = [
        [(f"{DN}Client {c} Person {n}", "/big") for n in range(25)] for c in range(8)
    ]
    results = [r for batch in hammer([one, two] * 4, work) for r in batch]
    assert [reply for _, _, reply in results if reply[0] != "OK"] == []
    accounts = {reply[1] for _, _, reply in results}
    assert len(accounts) == 200, "200 distinct people get 200 distinct accounts"

    # 3. Six new persons race for a pool of five.
    work = [[(f"{DN}Racer {n}", "/five")] for n in range(6)]
    replies = _flatten(hammer([one, two] * 3, work))
    outcome = Counter(status if status == "OK" else code for status, code in replies)
    assert outcome == {"OK": 5, "POOL_EXHAUSTED": 1}
    assert len({account for status, account in replies if status == "OK"}) == 5

    assert invariant_violations(engine) == []
    assert all(count == 1 for count in started_events(engine).values())


def test_32_callers_mix_new_and_returning_persons_on_every_front_end(
    engine: Engine, services: list[Path]
) -> None:
    """24 socket callers (12 per service) and 8 library threads, all at once.

    Each caller maps 3 persons new to pool mix, 8 returning persons shared
    with other callers (so one person is mapped on several front-ends at
    once), one newcomer that 4 callers share, and 2 persons new to pool ex,
    which has 40 accounts for 64 of them.
    """
    site = make_settings()
    sync(engine, site, [pool("mix", "mix", 160, "/mix"), pool("ex", "ex", 40, "/ex")])
    mapper = Mapper(engine, site)
    returning = {
        f"{DN}Returning {n}": mapper.map(MapRequest(f"{DN}Returning {n}", ("/mix",)))
        for n in range(40)
    }
    callers = [socket_caller(services[i % 2]) for i in range(24)]
    callers += [library_caller(mapper) for _ in range(8)]
    work = [_mixed_work(index, list(returning)) for index in range(len(callers))]

    results = [r for batch in hammer(callers, work) for r in batch]

    by_pool: dict[str, list[tuple[str, Reply]]] = defaultdict(list)
    for dn, fqan, reply in results:
        by_pool[fqan].append((dn, reply))
    mix_failures = [(dn, reply) for dn, reply in by_pool["/mix"] if reply[0] != "OK"]
    assert mix_failures == [], "no mapping fails while the pool has free accounts"
    ex_outcome = Counter(
        reply[0] if reply[0] == "OK" else reply[1] for _, reply in by_pool["/ex"]
    )
    assert ex_outcome == {"OK": 40, "POOL_EXHAUSTED": 24}, "exactly the free accounts"

    for fqan, answers in by_pool.items():
        held: dict[str, set[str]] = defaultdict(set)
        for dn, (status, account) in answers:
            if status == "OK":
                held[dn].add(account)
        assert all(len(a) == 1 for a in held.values()), f"{fqan}: one account each"
        owners = Counter(next(iter(a)) for a in held.values())
        assert owners.most_common(1)[0][1] == 1, f"{fqan}: no account shared"
        if fqan == "/mix":
            for dn, mapping in returning.items():
                assert held[dn] == {mapping.account}, f"{dn} kept its account"

    assert lease_counts(engine) == {"mix": 40 + 32 * 3 + 8, "ex": 40}
    assert invariant_violations(engine) == []
    assert all(count == 1 for count in started_events(engine).values())


def _mixed_work(index: int, returning: list[str]) -> list[tuple[str, str]]:
    """Return one caller's requests, interleaving the kinds of person."""
    new = [(f"{DN}Caller {index} New {n}", "/mix") for n in range(3)]
    again = [(returning[(index * 5 + n) % len(returning)], "/mix") for n in range(8)]
    shared = [(f"{DN}Shared Newcomer {index // 4}", "/mix")]
    scarce = [(f"{DN}Caller {index} Scarce {n}", "/ex") for n in range(2)]
    work = again[:3] + new[:1] + scarce[:1] + shared + again[3:6] + new[1:]
    return work + scarce[1:] + again[6:]


def _flatten(batches: list[list[tuple[str, str, Reply]]]) -> list[Reply]:
    return [reply for batch in batches for _, _, reply in batch]
