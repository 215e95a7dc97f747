"""The lease invariants, checked on the stored rows.

The schema enforces them: one open lease per account, one per (person,
pool), and an open lease's markers agree with its end. Reading them back
still pays: constraints can be dropped by hand or skipped by a restore, and
an account's state is kept beside its leases rather than derived from them.
``poolmgr check`` reports any of these as CRITICAL; the handover check of
the lease history is ``history.verify_history``.
"""

from sqlalchemy import false, func, select, true
from sqlalchemy.orm import Session

from poolmgr.models import Account, Hold, Lease, Pool

# Open leases are read through the index on open_marker, so each query
# costs in proportion to the leases open now, not to the whole history.
_OPEN = Lease.open_marker == 1


def find_broken_invariants(session: Session) -> list[str]:
    """Return one sentence per broken invariant; empty when all hold."""
    doubled_accounts = session.execute(
        select(Account.name, func.count())
        .join(Lease, Lease.account_id == Account.id)
        .where(_OPEN)
        .group_by(Account.name)
        .having(func.count() > 1)
        .order_by(Account.name)
    )
    doubled_persons = session.execute(
        select(Lease.identity_id, Pool.name, func.count())
        .join(Pool, Pool.id == Lease.pool_id)
        .where(_OPEN)
        .group_by(Lease.identity_id, Pool.name)
        .having(func.count() > 1)
        .order_by(Pool.name, Lease.identity_id)
    )
    problems = [f"account {a} has {n} open leases" for a, n in doubled_accounts]
    problems += [
        f"identity {i} has {n} open leases in pool {p}" for i, p, n in doubled_persons
    ]
    return problems + _state_mismatches(session) + _hold_mismatches(session)


def _state_mismatches(session: Session) -> list[str]:
    """Return the accounts whose state disagrees with their open leases."""
    open_counts = (
        select(Lease.account_id, func.count().label("open"))
        .where(_OPEN)
        .group_by(Lease.account_id)
        .subquery()
    )
    rows = session.execute(
        select(Account.name, Account.state, open_counts.c.open)
        .outerjoin(open_counts, open_counts.c.account_id == Account.id)
        .where(
            ((Account.state == "leased") & open_counts.c.open.is_(None))
            | ((Account.state != "leased") & open_counts.c.open.is_not(None))
        )
        .order_by(Account.name)
    )
    return [
        f"account {name} is leased but has no open lease"
        if count is None
        else f"account {name} is {state} but has an open lease"
        for name, state, count in rows
    ]


def _hold_mismatches(session: Session) -> list[str]:
    """Return the accounts whose held flag disagrees with the standing holds."""
    standing = select(Hold.open_account_id).where(Hold.open_account_id.is_not(None))
    rows = session.execute(
        select(Account.name, Account.held)
        .where(
            ((Account.held.is_(true())) & Account.id.not_in(standing))
            | ((Account.held.is_(false())) & Account.id.in_(standing))
        )
        .order_by(Account.name)
    )
    return [
        f"account {name} is marked held but has no standing hold "
        "(poolmgr release clears the flag)"
        if held
        else f"account {name} is under a hold but not marked held "
        "(poolmgr hold sets the flag again)"
        for name, held in rows
    ]
