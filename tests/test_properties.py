"""Property: random sync, map and end sequences never break the invariants.

After every sequence: no account has two open leases, no person has two
open leases in one pool, account states agree with the leases, and no
account ever went to a second person inside the quiet period of the
previous holder without an override.
"""

import contextlib
import itertools
import shutil
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from poolmgr import db
from poolmgr.db import unit_of_work
from poolmgr.errors import PoolExhaustedError
from poolmgr.leases import Mapper, MapRequest, end_lease
from poolmgr.models import Lease
from tests.conftest import make_settings
from tests.factories import at, invariant_violations, pool, sync

PERSONS = [f"/DC=org/DC=example/CN=Person {n}" for n in range(6)]
FQANS = ["/atlas", "/atlas/Role=production", "/atlas/uk"]
SITE = make_settings()
_counter = itertools.count()

operation = st.one_of(
    st.tuples(st.just("map"), st.integers(0, 5), st.integers(0, 2)),
    st.tuples(st.just("sync"), st.integers(0, 4), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("wait"), st.integers(1, 120), st.just(0)),
)


def quiet_violations(engine) -> list[str]:
    """Return accounts handed to a new person before the quiet period ended."""
    problems = []
    with unit_of_work(engine, write=False) as session:
        leases = session.scalars(
            select(Lease).order_by(Lease.account_id, Lease.started_at)
        )
        for _, group in itertools.groupby(leases, key=lambda lease: lease.account_id):
            history = list(group)
            for before, after in itertools.pairwise(history):
                waived = before.end_reason == "override"
                handed_on = before.identity_id != after.identity_id and not waived
                if handed_on and after.started_at < SITE.quiet.after(
                    before.last_used_at
                ):
                    problems.append(f"lease {after.id} inside quiet of {before.id}")
    return problems


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(operation, min_size=1, max_size=25))
def test_random_sequences_keep_every_invariant(tmp_path, _sqlite_template, ops):
    path = tmp_path / f"prop{next(_counter)}.db"
    shutil.copy(_sqlite_template, path)
    engine = db.get_engine(f"sqlite:///{path}")
    try:
        _run(engine, ops)
        assert invariant_violations(engine) == []
        assert quiet_violations(engine) == []
    finally:
        engine.dispose()


def _run(engine, ops) -> None:
    now = at("2024-01-01T00:00:00Z")
    mapper = Mapper(engine, SITE)
    sync(engine, SITE, _specs(2, 1), now)
    for kind, a, b in ops:
        if kind == "wait":
            now += timedelta(days=a)
        elif kind == "sync":
            sync(engine, SITE, _specs(a, b), now)
        elif kind == "map":
            with contextlib.suppress(PoolExhaustedError):
                mapper.map(MapRequest(dn=PERSONS[a], fqans=(FQANS[b],)), now=now)
        else:
            _end_one(engine, PERSONS[a], now, override=b)


def _specs(users: int, production: int) -> list:
    return [
        pool("atlasprd", "atlas", production, "/atlas/Role=production"),
        pool("atlas", "atlas", users, "/atlas", "/atlas/*"),
    ]


def _end_one(engine, dn: str, now, override: bool) -> None:
    from poolmgr.dn import parse_dn
    from poolmgr.identities import find_identity

    with unit_of_work(engine) as session:
        identity = find_identity(session, parse_dn(dn))
        if identity is None:
            return
        lease = session.scalars(
            select(Lease).where(
                Lease.identity_id == identity.id, Lease.open_marker == 1
            )
        ).first()
        if lease is not None:
            end_lease(
                session,
                lease,
                reason="override" if override else "released",
                actor="property",
                now=now,
                waive_quiet=override,
            )
