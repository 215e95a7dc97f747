"""Properties: random sequences never break the invariants.

Sync, map and end; then map, touch, recycle and override. After every
sequence: no account has two open leases, no person has two open leases in
one pool, account states agree with the leases, and no account ever went
to a second person inside the quiet period of the previous holder without
an override.
"""

import contextlib
import itertools
import shutil
from datetime import timedelta

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from poolmgr import db
from poolmgr.db import unit_of_work
from poolmgr.errors import (
    NoLeaseError,
    NotFoundError,
    PolicyError,
    PoolExhaustedError,
)
from poolmgr.history import touch_account, verify_history
from poolmgr.leases import Mapper, MapRequest, end_lease
from poolmgr.models import Account, Lease
from poolmgr.recycle import Recycler
from poolmgr.site_commands import CommandResult
from tests.conftest import make_settings
from tests.factories import all_leases, at, invariant_violations, pool, sync

# Both property tests: 40 cases each, no deadline (every case works on a database).
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


PERSONS = [f"/DC=org/DC=example/CN=Person {n}" for n in range(6)]
FQANS = ["/atlas", "/atlas/Role=production", "/atlas/uk"]
SITE = make_settings()
_counter = itertools.count()

# To one second before, at or after the end of an account's quiet period.
_until_due = st.tuples(
    st.just("until_due"), st.integers(0, 1), st.sampled_from([-1, 0, 1])
)
operation = st.one_of(
    st.tuples(st.just("map"), st.integers(0, 5), st.integers(0, 2)),
    st.tuples(st.just("sync"), st.integers(0, 4), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("wait"), st.integers(1, 120), st.just(0)),
    _until_due,
)


def quiet_violations(engine, quiet=SITE.quiet) -> list[str]:
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
                if handed_on and after.started_at < quiet.after(before.last_used_at):
                    problems.append(f"lease {after.id} inside quiet of {before.id}")
    return problems


@EXAMPLES
@given(st.lists(operation, min_size=1, max_size=25))
# Released, then wanted by another person one second before its quiet ends.
@example(
    ops=[
        ("map", 0, 0),
        ("map", 1, 0),
        ("end", 0, False),
        ("until_due", 0, -1),
        ("map", 2, 0),
    ]
)
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
        elif kind == "until_due":
            end = _quiet_end(engine, ["atlas001", "atlas002"][a], now, SITE.quiet)
            now = max(now, end + timedelta(seconds=b))
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


# --- map, touch, recycle and override -----------------------------------------

RECYCLING = make_settings(
    quiet_period="1 month",
    recycle={
        "cleanup_command": ["/usr/local/sbin/pool-clean"],
        "in_use_command": ["/usr/local/sbin/pool-busy"],
    },
)
ACCOUNTS = ["atlas001", "atlas002", "atlas009"]

# Four persons for two accounts: holders come back often.
_maps = st.tuples(st.just("map"), st.integers(0, 3), st.just(0))
_waits = st.tuples(st.just("wait"), st.integers(1, 45), st.sampled_from([0, -1, 1]))
# (cleanup succeeds, account busy): mostly an ordinary night.
_recycles = st.sampled_from(
    [
        ("recycle", True, False),
        ("recycle", True, False),
        ("recycle", False, False),
        ("recycle", True, True),
    ]
)
# Maps, waits and recycling runs weigh more, so that accounts go round
# several holders within one sequence.
lifecycle = st.one_of(
    _maps,
    _maps,
    _maps,
    _waits,
    _waits,
    _recycles,
    _recycles,
    st.tuples(st.just("touch"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("override"), st.integers(0, 2), st.booleans()),
    _until_due,
)


class _Commands:
    """The site's cleanup and in-use check, answering as the sequence says."""

    def __init__(self) -> None:
        self.clean, self.busy = True, False

    def __call__(self, argv, variables, timeout) -> CommandResult:
        if variables["POOLMGR_ACTION"] == "cleanup":
            return CommandResult(0 if self.clean else 1, "")
        return CommandResult(0 if self.busy else 1, "")


@EXAMPLES
@given(st.lists(lifecycle, min_size=10, max_size=40))
# The nightly run one second before, then at, the end of the quiet period.
@example(
    ops=[
        ("map", 0, 0),
        ("until_due", 0, -1),
        ("recycle", True, False),
        ("until_due", 0, 0),
        ("recycle", True, False),
        ("map", 1, 0),
    ]
)
# The holder of an overridden account comes back while it is the only free one.
@example(ops=[("map", 0, 0), ("map", 1, 0), ("override", 0, True), ("map", 0, 0)])
def test_map_touch_recycle_and_override_never_hand_on_inside_the_quiet_period(
    tmp_path, _sqlite_template, ops
):
    path = tmp_path / f"life{next(_counter)}.db"
    shutil.copy(_sqlite_template, path)
    engine = db.get_engine(f"sqlite:///{path}")
    try:
        _live(engine, ops)
        assert invariant_violations(engine) == []
        assert quiet_violations(engine, RECYCLING.quiet) == []
        assert _early_recycles(engine) == []
        assert _returned_after_override(engine) == []
        with unit_of_work(engine, write=False) as session:
            check = verify_history(session, RECYCLING.quiet)
        assert check.violations == [], "the audit's own check agrees"
    finally:
        engine.dispose()


def _live(engine, ops) -> None:
    # Leap-year February and a month end: the calendar arithmetic's edges.
    now = at("2024-01-31T12:00:00Z")
    commands = _Commands()
    mapper = Mapper(engine, RECYCLING)
    recycler = Recycler(engine, RECYCLING, actor="property", runner=commands)
    sync(engine, RECYCLING, [pool("atlas", "atlas", 2, "/atlas")], now)
    for kind, a, b in ops:
        if kind == "wait":
            now += timedelta(days=a, seconds=b)
        elif kind == "until_due":
            end = _quiet_end(engine, ACCOUNTS[a], now, RECYCLING.quiet)
            now = max(now, end + timedelta(seconds=b))
        elif kind == "map":
            with contextlib.suppress(PoolExhaustedError):
                mapper.map(MapRequest(dn=PERSONS[a], fqans=("/atlas",)), now=now)
        elif kind == "touch":
            with (
                contextlib.suppress(NoLeaseError, NotFoundError),
                unit_of_work(engine) as session,
            ):
                touch_account(session, ACCOUNTS[a], now)
        elif kind == "recycle":
            commands.clean, commands.busy = a, b
            list(recycler.run(now=now))
        else:
            commands.clean, commands.busy = True, True
            with contextlib.suppress(PolicyError, NotFoundError):
                recycler.force(ACCOUNTS[a], "property", ignore_in_use=b, now=now)


def _quiet_end(engine, account: str, now, quiet):
    """Return when the quiet period after the account's last use ends."""
    with unit_of_work(engine, write=False) as session:
        last = session.scalar(
            select(func.max(Lease.last_used_at))
            .join(Account, Account.id == Lease.account_id)
            .where(Account.name == account)
        )
    return now if last is None else quiet.after(last)


def _early_recycles(engine) -> list[str]:
    """Return leases the periodic run ended before their quiet period was over."""
    return [
        f"lease {lease.id} ended {lease.ended_at} before its quiet period"
        for lease in all_leases(engine)
        if lease.end_reason == "quiet_period"
        and lease.ended_at < RECYCLING.quiet.after(lease.last_used_at)
    ]


def _returned_after_override(engine) -> list[str]:
    """Return overridden accounts given back to their holder inside the period."""
    problems = []
    leases = sorted(all_leases(engine), key=lambda lease: (lease.account_id, lease.id))
    for before, after in itertools.pairwise(leases):
        if (
            before.account_id == after.account_id
            and before.end_reason == "override"
            and before.identity_id == after.identity_id
            and after.started_at < RECYCLING.quiet.after(before.last_used_at)
        ):
            problems.append(f"lease {after.id} gave back lease {before.id}'s account")
    return problems
