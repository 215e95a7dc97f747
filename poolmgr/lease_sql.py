"""The statements that write a mapping: identity, lease, account state, event.

On SQLite and MariaDB a new lease is three statements in one transaction.
On PostgreSQL, data-modifying common table expressions write it as one
statement, saving round trips: each runs exactly once, and on any error
none of them takes effect.
"""

from typing import Any

from sqlalchemy import (
    Integer,
    Select,
    bindparam,
    case,
    false,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.sql import FromClause
from sqlalchemy.types import String, Text

from poolmgr.candidates import ONE, Candidates, lock_first, v_param
from poolmgr.db import UTCDateTime
from poolmgr.models import Account, Event, Identity, Lease

_IDENTITY_VALUES = {
    "kind": v_param("kind", String),
    "key": v_param("key", Text),
    "key_hash": v_param("key_hash", String),
    "display": v_param("display", Text),
    "display_lossy": false(),
    "created_at": v_param("now", UTCDateTime()),
}
INSERT_IDENTITY = insert(Identity).values(**_IDENTITY_VALUES)
RESTORE_DISPLAY = (
    update(Identity)
    .where(Identity.id == bindparam("identity_id"))
    .values(display=bindparam("display"), display_lossy=False)
)
_LEASE_VALUES = {
    "account_id": v_param("account_id", Integer),
    "pool_id": v_param("pool_id", Integer),
    "fqan": v_param("fqan", String),
    "started_at": v_param("now", UTCDateTime()),
    "last_used_at": v_param("now", UTCDateTime()),
    "open_account_id": v_param("account_id", Integer),
    "open_marker": literal_column("1", Integer),
}
INSERT_LEASE = insert(Lease).values(
    identity_id=v_param("identity_id", Integer), **_LEASE_VALUES
)
LEASE_ACCOUNT = (
    update(Account)
    .where(Account.id == v_param("account_id", Integer))
    .values(state=literal_column("'leased'", String))
)
# Last use never moves back; a lease that ended matches no row.
TOUCH_OPEN_LEASE = (
    update(Lease)
    .where(Lease.id == bindparam("lease_id"), Lease.open_marker == 1)
    .values(
        last_used_at=case(
            (Lease.last_used_at < bindparam("now"), bindparam("now")),
            else_=Lease.last_used_at,
        )
    )
)
_EVENT_VALUES = {
    "at": v_param("now", UTCDateTime()),
    "kind": literal_column("'lease_started'", String),
    "pool": v_param("pool", String),
    "account": v_param("account", String),
    "dn": v_param("dn", Text),
    "details": v_param("details", Text),
}
# A row to select from where a statement has no table of its own to drive it.
ONE_ROW = select(ONE.label("one")).subquery("one_row")


def _start_lease_statement() -> Select:
    """The PostgreSQL statement that opens a lease of a locked account."""
    values = {"identity_id": v_param("identity_id", Integer), **_LEASE_VALUES}
    new_lease = (
        insert(Lease)
        .from_select(list(values), select(*values.values()))
        .returning(Lease.id)
        .cte("new_lease")
    )
    leased = LEASE_ACCOUNT.cte("leased")
    logged = (
        insert(Event)
        .from_select(
            [*_EVENT_VALUES, "identity_id", "lease_id"],
            select(
                *_EVENT_VALUES.values(),
                v_param("identity_id", Integer),
                new_lease.c.id,
            ),
        )
        .cte("logged")
    )
    return select(new_lease.c.id).add_cte(leased, logged)


START_LEASE = _start_lease_statement()


class LeaseStatements:
    """The PostgreSQL statements built on a site's candidate queries, once each."""

    def __init__(self, candidates: Candidates) -> None:
        self.candidates = candidates
        self._lease: dict[bool, Select] = {}
        self._create_person: Select | None = None

    def lease(self, *, new_person: bool) -> Select:
        """The statement that leases the pool's best free account.

        The account is the one the general path would offer first: the
        first never-used one, else the rested one free longest, its quiet
        period checked exactly in SQL. For a new person the identity is
        inserted first and the account read depends on its id, so that
        concurrent first mappings of one person meet at the unique key
        before any of them locks an account; the identity is inserted only
        while the pool has such an account, and if none is left to lock by
        then, the lease's missing account fails the whole statement. For a
        known person the statement writes nothing when there is no account.
        Either way the lease, the account's state and the lease_started
        event are written together. Parameters: v_pool_id, cutoff, v_now,
        v_pool, v_fqan, v_dn, v_details, and v_identity_id or the new
        identity's v_kind, v_key, v_key_hash and v_display.
        """
        statement = self._lease.get(new_person)
        if statement is None:
            statement = self._lease[new_person] = self._build_lease(new_person)
        return statement

    def create_person(self) -> Select:
        """The statement that inserts a new person and locks a never-used account.

        The identity insert runs first (the candidate read depends on its
        id), so two first mappings of one person still meet at the unique
        key hash before either locks an account. One row: new_identity_id,
        and the first never-used account's columns (NULL if none).
        """
        if self._create_person is None:
            identity = INSERT_IDENTITY.returning(Identity.id).cte("new_identity")
            never_used = self.candidates.queries("postgresql", identity.c.id)[0]
            candidate = lock_first(never_used).lateral("free")
            self._create_person = (
                select(identity.c.id.label("new_identity_id"), candidate)
                .select_from(identity)
                .outerjoin(candidate, true())
            )
        return self._create_person

    def _build_lease(self, new_person: bool) -> Select:
        holder: Any
        driver: FromClause
        if new_person:
            # Each as the first row of its ordered query: read from the
            # index, never a scan of the pool's leased accounts.
            guard = or_(
                *(
                    query.with_only_columns(Account.id)
                    .limit(ONE)
                    .scalar_subquery()
                    .is_not(None)
                    for query in self.candidates.exact(null())
                )
            )
            identity = (
                insert(Identity)
                .from_select(
                    list(_IDENTITY_VALUES),
                    select(*_IDENTITY_VALUES.values()).where(guard),
                )
                .returning(Identity.id)
                .cte("new_identity")
            )
            holder, driver = identity.c.id, identity
        else:
            holder, driver = v_param("identity_id", Integer), ONE_ROW
        never_used, rested = self.candidates.exact(holder)
        first = lock_first(never_used).lateral("never_used")
        # Read only when there is no never-used account to take.
        second = lock_first(rested.where(first.c.id.is_(None))).lateral("rested")
        picked = select(
            holder.label("identity_id"),
            *(
                func.coalesce(first.c[name], second.c[name]).label(name)
                for name in ("id", "name", "uid", "free_since")
            ),
        ).select_from(driver.outerjoin(first, true()).outerjoin(second, true()))
        if not new_person:
            picked = picked.where(
                or_(first.c.id.is_not(None), second.c.id.is_not(None))
            )
        chosen = picked.cte("chosen")
        return _write_lease(chosen)


def _write_lease(chosen: Any) -> Select:
    """Lease the account in CTE chosen (identity_id, id, name, uid, free_since)
    and log it; the lease starts at v_now, or when the account became free if
    that is later (as _start_lease in leases.py)."""
    start = func.greatest(
        v_param("now", UTCDateTime()), chosen.c.free_since, type_=UTCDateTime()
    )
    lease = {
        **_LEASE_VALUES,
        "started_at": start,
        "last_used_at": start,
        "identity_id": chosen.c.identity_id,
        "account_id": chosen.c.id,
        "open_account_id": chosen.c.id,
    }
    new_lease = (
        insert(Lease)
        .from_select(list(lease), select(*lease.values()))
        .returning(Lease.id)
        .cte("new_lease")
    )
    leased = (
        update(Account)
        .where(Account.id == chosen.c.id)
        .values(state=literal_column("'leased'", String))
        .cte("leased")
    )
    event = {
        **_EVENT_VALUES,
        "at": start,
        "account": chosen.c.name,
        "identity_id": chosen.c.identity_id,
        "lease_id": new_lease.c.id,
    }
    logged = (
        insert(Event)
        .from_select(
            list(event),
            select(*event.values()).select_from(new_lease.join(chosen, true())),
        )
        .cte("logged")
    )
    return (
        select(
            new_lease.c.id.label("lease_id"),
            chosen.c.identity_id,
            chosen.c.name,
            chosen.c.uid,
            start.label("started_at"),
        )
        .select_from(new_lease.join(chosen, true()))
        .add_cte(leased, logged)
    )
