"""Recycle and audit over a long lease history: time and peak memory.

The database holds one pool of 100,000 accounts, half of them leased, and a
history of ended leases that grows in steps (100,000, then 1,000,000). Each
account's past is a chain of leases that each ended by recycling after the
quiet period, with two events per lease, as poolmgr itself would have
written them. At every step a fixed number of open leases is past its quiet
period, so recycle has the same work to do; then ``poolmgr recycle`` and
``poolmgr audit`` run as child processes and their wall time and peak RSS
(ru_maxrss) are taken. Memory that does not grow from step to step shows
that neither command holds the history in memory.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from bench_db import (
    FQAN,
    POOL,
    bulk_insert,
    create_database,
    drop_database,
    insert_identities,
    load_pool,
    person_dn,
    tidy,
)
from bench_service import write_config
from sqlalchemy import Engine, select, update

from poolmgr import db
from poolmgr.models import Account, Event, Lease
from poolmgr.timeutil import utcnow

ACCOUNTS = 100_000
PAST_PERSONS = 100_000
DUE = 200
CYCLE = timedelta(days=215)
USED_FOR = timedelta(days=10)
RECYCLED_AFTER = timedelta(days=190)
ROWS = 20_000


@dataclass(frozen=True)
class Measured:
    """One command run over one history size."""

    backend: str
    history: int
    command: str
    seconds: float
    peak_mb: float
    status: int
    note: str


def run_history(
    backend: str, workdir: Path, steps: Sequence[int], log: Callable[[str], None]
) -> list[Measured]:
    """Build the history step by step; after each, time recycle and audit."""
    url = create_database(backend, workdir, f"pmbench_history_{os.getpid()}")
    engine = db.get_engine(url)
    config = write_config(workdir / f"history-{backend}.yaml", url)
    now = utcnow()
    anchor = now - timedelta(days=300)
    accounts = min(ACCOUNTS, *steps)
    results: list[Measured] = []
    try:
        started = time.perf_counter()
        pool_id = load_pool(engine, accounts, now)
        holders = _open_leases(engine, pool_id, accounts, now, anchor)
        past = _identities(engine, "Past", PAST_PERSONS, anchor - CYCLE * 12)
        log(f"{backend}: pool, {holders} open leases in {_since(started)}")
        cycles = 0
        for step in steps:
            started = time.perf_counter()
            wanted = -(-step // accounts)
            for cycle in range(cycles + 1, wanted + 1):
                _add_cycle(engine, pool_id, accounts, cycle, (anchor, past))
            cycles = max(cycles, wanted)
            _make_due(engine, now)
            tidy(engine)
            log(f"{backend}: {cycles * accounts:,} ended leases in {_since(started)}")
            results += _measure(backend, config, workdir, cycles * accounts)
    finally:
        drop_database(backend, url)
    return results


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


def _identities(engine: Engine, kind: str, count: int, created: datetime) -> int:
    """Insert persons ``<kind> 1..count``; return the id of the first."""
    first = 0
    with engine.begin() as conn:
        for chunk in _ranges(count):
            dns = [person_dn(kind, n + 1) for n in chunk]
            ids = insert_identities(conn, dns, created)
            first = first or ids[0]
            assert ids == list(range(ids[0], ids[0] + len(ids))), "ids have gaps"
    return first


def _open_leases(
    engine: Engine, pool_id: int, accounts: int, now: datetime, anchor: datetime
) -> int:
    """Lease the first half of the accounts to holders used in the last 30 days."""
    count = accounts // 2
    first = _identities(engine, "Holder", count, anchor)
    with engine.begin() as conn:
        for chunk in _ranges(count):
            leases = []
            for i in chunk:
                last = now - timedelta(minutes=(i * 7919) % (30 * 24 * 60))
                leases.append(_lease(i + 1, first + i, pool_id, anchor, last, None))
            bulk_insert(conn, Lease.__table__, leases)
            bulk_insert(
                conn,
                Event.__table__,
                [
                    _event("lease_started", lease, lease["started_at"])
                    for lease in leases
                ],
            )
        conn.execute(
            update(Account)
            .where(Account.pool_id == pool_id, Account.number <= count)
            .values(state="leased")
        )
    return count


def _add_cycle(
    engine: Engine,
    pool_id: int,
    accounts: int,
    cycle: int,
    origin: tuple[datetime, int],
) -> None:
    """Add the cycle-th lease before the present one on every account.

    origin is the start of the present leases and the first past person's id.
    """
    anchor, past = origin
    started = anchor - CYCLE * cycle
    with engine.begin() as conn:
        for chunk in _ranges(accounts):
            leases, events = [], []
            for i in chunk:
                person = past + (i * 7 + cycle * 13) % PAST_PERSONS
                begin = started + timedelta(minutes=i % 1440)
                lease = _lease(i + 1, person, pool_id, begin, begin + USED_FOR, True)
                leases.append(lease)
                events.append(_event("lease_started", lease, begin))
                events.append(_event("lease_ended", lease, lease["ended_at"]))
            bulk_insert(conn, Lease.__table__, leases)
            bulk_insert(conn, Event.__table__, events)


def _lease(
    account: int,
    person: int,
    pool_id: int,
    started: datetime,
    last_used: datetime,
    ended: bool | None,
) -> dict[str, object]:
    row: dict[str, object] = {
        "account_id": account,
        "identity_id": person,
        "pool_id": pool_id,
        "fqan": FQAN,
        "started_at": started,
        "last_used_at": last_used,
        "ended_at": None,
        "end_reason": None,
        "ended_by": None,
        "open_account_id": account,
        "open_marker": 1,
    }
    if ended:
        row.update(
            ended_at=last_used + RECYCLED_AFTER,
            end_reason="quiet_period",
            ended_by="recycle",
            open_account_id=None,
            open_marker=None,
        )
    return row


def _event(kind: str, lease: dict[str, object], at: object) -> dict[str, object]:
    return {
        "at": at,
        "kind": kind,
        "actor": "recycle" if kind == "lease_ended" else None,
        "pool": POOL,
        "account": f"{POOL}{lease['account_id']:06d}",
        "identity_id": lease["identity_id"],
        "dn": None,
        "lease_id": None,
        "reason": None,
        "details": json.dumps({"fqan": FQAN}),
    }


def _make_due(engine: Engine, now: datetime) -> None:
    """Backdate the DUE oldest open leases past the quiet period."""
    with engine.begin() as conn:
        ids = conn.execute(
            select(Lease.id).where(Lease.open_marker == 1).order_by(Lease.id).limit(DUE)
        ).scalars()
        conn.execute(
            update(Lease)
            .where(Lease.id.in_(list(ids)))
            .values(last_used_at=now - timedelta(days=220))
        )


def _measure(backend: str, config: Path, workdir: Path, history: int) -> list[Measured]:
    report = workdir / f"audit-{backend}-{history}.txt"
    commands = {
        "recycle": ["recycle"],
        "audit": ["audit", "--format", "text", "--output", str(report)],
    }
    results = []
    for name, args in commands.items():
        seconds, peak, status, output = _child(["--config", str(config), *args])
        note = _note(name, output, report)
        results.append(Measured(backend, history, name, seconds, peak, status, note))
    return results


def _note(name: str, output: str, report: Path) -> str:
    if name == "recycle":
        recycled = sum(1 for line in output.splitlines() if line.startswith("recycled"))
        return f"{recycled} recycled"
    if report.exists():
        return f"report of {len(report.read_text().splitlines())} lines"
    return output.strip()[-200:]


def _child(argv: list[str]) -> tuple[float, float, int, str]:
    """Run a poolmgr command; return wall seconds, peak RSS in MB, status, output.

    The peak is the child's own VmHWM, written by the child as it exits:
    ru_maxrss from wait4 would include this large parent, which the child
    was forked from.
    """
    with tempfile.TemporaryDirectory() as scratch:
        peak = Path(scratch) / "peak"
        command = [sys.executable, "-c", _PEAK_REPORTER, str(peak), *argv]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        kib = int(peak.read_text()) if peak.exists() else 0
    return seconds, kib / 1024, done.returncode, done.stdout + done.stderr


_PEAK_REPORTER = """
import atexit, sys
path = sys.argv.pop(1)
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(path, "w").write(line.split()[1])
atexit.register(report)
sys.argv[0] = "poolmgr"
from poolmgr.cli import run
run()
"""


def _ranges(count: int) -> Iterator[range]:
    for start in range(0, count, ROWS):
        yield range(start, min(start + ROWS, count))
