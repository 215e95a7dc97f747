"""Helpers that build pools and leases for tests."""

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, update

from poolmgr import leases
from poolmgr.db import unit_of_work
from poolmgr.dn import parse_dn
from poolmgr.identities import X509, key_hash
from poolmgr.invariants import find_broken_invariants
from poolmgr.lease_sql import INSERT_IDENTITY
from poolmgr.leases import Mapper, Mapping, MapRequest, end_lease
from poolmgr.models import Account, Lease
from poolmgr.pools import PoolSpec, SyncResult, sync_pools
from poolmgr.settings import Settings
from poolmgr.timeutil import parse_time, utcnow


def at(text: str) -> datetime:
    """Parse an ISO 8601 UTC time for a test."""
    return parse_time(text)


def pool(name: str, vo: str, size: int, *serves: str) -> PoolSpec:
    """A pool spec serving the given FQAN rules."""
    return PoolSpec(name=name, vo=vo, serves=tuple(serves), accounts=size)


def sync(
    engine: Engine,
    settings: Settings,
    specs: list[PoolSpec],
    now: datetime | None = None,
) -> SyncResult:
    """Run sync_pools in its own unit of work."""
    with unit_of_work(engine) as session:
        return sync_pools(session, settings, specs, now or utcnow())


def map_dn(
    engine: Engine,
    settings: Settings,
    dn: str,
    *fqans: str,
    now: datetime | None = None,
    issuer: str | None = None,
    verify: bool = False,
) -> Mapping:
    """Map dn with fqans through a fresh Mapper."""
    request = MapRequest(dn=dn, fqans=tuple(fqans), issuer=issuer, verify=verify)
    return Mapper(engine, settings).map(request, now=now)


def open_leases(engine: Engine) -> list[Lease]:
    """Return every open lease."""
    with unit_of_work(engine, write=False) as session:
        return list(session.scalars(select(Lease).where(Lease.open_marker == 1)))


def all_leases(engine: Engine) -> list[Lease]:
    """Return every lease, ended ones included, by id."""
    with unit_of_work(engine, write=False) as session:
        return list(session.scalars(select(Lease).order_by(Lease.id)))


def set_last_use(engine: Engine, account: str, when: datetime) -> None:
    """Backdate the last use of the open lease on account."""
    with unit_of_work(engine) as session:
        account_id = session.scalar(select(Account.id).where(Account.name == account))
        session.execute(
            update(Lease)
            .where(Lease.account_id == account_id, Lease.open_marker == 1)
            .values(last_used_at=when)
        )


def end_open_lease(
    engine: Engine, account: str, when: datetime, waive: bool = False
) -> None:
    """End the open lease of account at when; waive: as an override does."""
    with unit_of_work(engine) as session:
        lease = session.scalars(
            select(Lease)
            .join(Lease.account)
            .where(Lease.open_marker == 1, Lease.account.has(name=account))
        ).one()
        end_lease(
            session, lease, reason="test", actor="tester", now=when, waive_quiet=waive
        )


def invariant_violations(engine: Engine) -> list[str]:
    """Return descriptions of broken lease invariants (empty when sound)."""
    with unit_of_work(engine, write=False) as session:
        return find_broken_invariants(session)


def syslog_receiver(address: object) -> socket.socket:
    """Return a datagram socket bound at address, as a test syslog; close it."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(address))
    receiver.settimeout(2)
    return receiver


def drain_datagrams(receiver: socket.socket) -> list[bytes]:
    """Return what a test syslog socket received, waiting for the first line.

    The socket's own timeout bounds the wait for the first datagram; after
    it, 0.2 s of silence ends the list.
    """
    received = []
    try:
        while True:
            received.append(receiver.recv(65536))
            receiver.settimeout(0.2)
    except TimeoutError:
        return received


def count_rows(engine: Engine, model: type, *where: object) -> int:
    """Return how many rows of model's table match where."""
    with unit_of_work(engine, write=False) as session:
        query = select(func.count()).select_from(model).where(*where)
        return int(session.scalar(query) or 0)


def general_path_only(monkeypatch: pytest.MonkeyPatch, mapper: Mapper) -> Mapper:
    """Make mapper skip PostgreSQL's one-statement path; return it."""
    monkeypatch.setattr(mapper, "_map_at_once", lambda *args: None)
    return mapper


@contextmanager
def identity_pending(engine: Engine, dn: str) -> Iterator[None]:
    """Hold an uncommitted identity row for dn in another transaction.

    A first mapping of dn started inside the block waits at the identity's
    unique key; the row is rolled back as the block ends, and the mapping
    goes on. Leave the block before waiting for that mapping's result.
    """
    parsed = parse_dn(dn)
    other = create_engine(engine.url)
    try:
        with other.connect() as holder, holder.begin() as tx:
            holder.execute(
                INSERT_IDENTITY,
                {
                    "v_kind": X509,
                    "v_key": parsed.key,
                    "v_key_hash": key_hash(X509, parsed.key),
                    "v_display": parsed.slash(),
                    "v_now": utcnow(),
                },
            )
            try:
                yield
            finally:
                tx.rollback()
    finally:
        other.dispose()


def after_the_read(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[], object]
) -> None:
    """Run change() once, just after the next mapping has read the person
    (before it decides or writes anything)."""
    original = leases._read_person
    pending = [change]

    def read_then_change(conn: Any, dn: Any) -> Any:
        rows = original(conn, dn)
        if pending:
            pending.pop()()
        return rows

    monkeypatch.setattr(leases, "_read_person", read_then_change)
