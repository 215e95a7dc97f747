"""The tables: pools, accounts, identities, leases and the event log.

Invariants live in the schema so that every backend enforces them, whatever
process writes: a lease row carries ``open_account_id`` and ``open_marker``
only while it is open, and unique constraints on them allow at most one open
lease per account and per (identity, pool). NULLs never collide in a unique
constraint on SQLite, PostgreSQL or MariaDB, which makes this portable where
partial indexes are not. Long texts (DNs) are never indexed directly: a
SHA-256 of the canonical key is, so no backend compares only a prefix.
"""

from datetime import datetime
from typing import Annotated

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from poolmgr.db import Base, UTCDateTime
from poolmgr.timeutil import utcnow

intpk = Annotated[int, mapped_column(primary_key=True)]
created = Annotated[datetime, mapped_column(UTCDateTime(), default=utcnow)]
when = Annotated[datetime | None, mapped_column(UTCDateTime())]


class Pool(Base):
    """A named set of accounts serving some FQANs of one VO."""

    __tablename__ = "pools"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(32), unique=True)
    vo: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(24))
    digits: Mapped[int]
    first_uid: Mapped[int] = mapped_column(
        BigInteger, comment="uid of account number 0"
    )
    group_name: Mapped[str] = mapped_column(String(32))
    gid: Mapped[int] = mapped_column(BigInteger)
    declared_size: Mapped[int] = mapped_column(comment="size in the VO card")
    size: Mapped[int] = mapped_column(comment="target size after site override")
    created_at: Mapped[created]
    retired_at: Mapped[when] = mapped_column(comment="no longer in any VO card")
    flag: Mapped[str | None] = mapped_column(
        String(16), comment="YAIM account flag (sgm, prd, pilot, '') if imported"
    )
    secondary_groups: Mapped[str | None] = mapped_column(
        String(1024), comment="further groups of every account: name:gid,..."
    )

    accounts: Mapped[list["Account"]] = relationship(back_populates="pool")

    __table_args__ = (
        CheckConstraint("digits BETWEEN 1 AND 9", name="digits"),
        CheckConstraint("size >= 0 AND declared_size >= 0", name="sizes"),
    )


class Account(Base):
    """One Unix pool account; never deleted, only retired."""

    __tablename__ = "accounts"

    id: Mapped[intpk]
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id"))
    name: Mapped[str] = mapped_column(String(32), unique=True)
    number: Mapped[int]
    uid: Mapped[int] = mapped_column(BigInteger, unique=True)
    state: Mapped[str] = mapped_column(
        String(8),
        default="free",
        comment="free, leased, cleaning (out of service until cleaned) or retired",
    )
    created_at: Mapped[created]
    retired_at: Mapped[when]
    last_used_at: Mapped[when] = mapped_column(
        comment="last use by anybody, copied from the lease when it ends"
    )
    free_since: Mapped[when] = mapped_column(comment="when the last lease ended")
    quiet_waived_at: Mapped[when] = mapped_column(
        comment="an override ended the quiet period at this time"
    )
    held: Mapped[bool] = mapped_column(
        default=False,
        server_default=false(),
        comment="under a standing hold (holds.open_account_id)",
    )

    pool: Mapped[Pool] = relationship(back_populates="accounts")

    __table_args__ = (
        UniqueConstraint("pool_id", "number"),
        CheckConstraint(
            "state IN ('free', 'leased', 'cleaning', 'retired')", name="state"
        ),
        Index("ix_accounts_free_order", "pool_id", "state", "last_used_at", "number"),
        Index("ix_accounts_free_since", "pool_id", "state", "free_since", "number"),
    )


class Identity(Base):
    """A person as poolmgr knows them: an X.509 DN, or later a token subject."""

    __tablename__ = "identities"

    id: Mapped[intpk]
    kind: Mapped[str] = mapped_column(String(16), comment="x509 or oidc")
    key: Mapped[str] = mapped_column(Text, comment="canonical comparison key")
    key_hash: Mapped[str] = mapped_column(
        String(64), unique=True, comment="sha256 of kind and key"
    )
    display: Mapped[str] = mapped_column(Text, comment="as received, for people")
    display_lossy: Mapped[bool] = mapped_column(
        default=False, comment="display was recovered from a lowercased lease name"
    )
    created_at: Mapped[created]


class Lease(Base):
    """The binding of one identity to one account of one pool, for a time."""

    __tablename__ = "leases"

    id: Mapped[intpk]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id"))
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id"))
    fqan: Mapped[str | None] = mapped_column(String(1024), comment="primary FQAN")
    started_at: Mapped[created]
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[when]
    end_reason: Mapped[str | None] = mapped_column(String(32))
    ended_by: Mapped[str | None] = mapped_column(String(128))
    end_note: Mapped[str | None] = mapped_column(Text)
    open_account_id: Mapped[int | None] = mapped_column(
        unique=True, comment="account_id while open, NULL once ended"
    )
    open_marker: Mapped[int | None] = mapped_column(
        SmallInteger, comment="1 while open, NULL once ended"
    )

    account: Mapped[Account] = relationship()
    identity: Mapped[Identity] = relationship()
    pool: Mapped[Pool] = relationship()

    __table_args__ = (
        UniqueConstraint("identity_id", "pool_id", "open_marker"),
        CheckConstraint(
            "(ended_at IS NULL AND COALESCE(open_marker, 0) = 1"
            " AND COALESCE(open_account_id, -1) = account_id)"
            " OR (ended_at IS NOT NULL AND open_marker IS NULL"
            " AND open_account_id IS NULL AND end_reason IS NOT NULL)",
            name="open_state",
        ),
        Index("ix_leases_identity_open", "identity_id", "open_marker"),
        Index("ix_leases_account_started", "account_id", "started_at"),
        Index("ix_leases_open_last_used", "open_marker", "last_used_at"),
    )


class Event(Base):
    """One line of the append-only event log; rows are never changed."""

    __tablename__ = "events"

    id: Mapped[intpk]
    at: Mapped[created]
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(128))
    pool: Mapped[str | None] = mapped_column(String(32))
    account: Mapped[str | None] = mapped_column(String(32))
    identity_id: Mapped[int | None] = mapped_column(ForeignKey("identities.id"))
    dn: Mapped[str | None] = mapped_column(Text)
    lease_id: Mapped[int | None] = mapped_column(ForeignKey("leases.id"))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[str | None] = mapped_column(Text, comment="JSON object")

    __table_args__ = (
        Index("ix_events_at", "at"),
        Index("ix_events_kind_at", "kind", "at"),
        Index("ix_events_account_at", "account", "at"),
        Index("ix_events_identity", "identity_id"),
    )


class PoolRule(Base):
    """One FQAN rule of the routing table, in global evaluation order.

    Rules come from the VO cards at sync time and are replaced as a whole;
    every front-end routes from this table, never from files.
    """

    __tablename__ = "pool_rules"

    id: Mapped[intpk]
    position: Mapped[int] = mapped_column(unique=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id"))
    rule: Mapped[str] = mapped_column(String(1024))

    pool: Mapped[Pool] = relationship()


class BanSync(Base):
    """One attempt to read a central ban list, whatever its outcome.

    The bans a sync added and lifted point back at it (added_sync_id,
    removed_sync_id), so what each sync changed stays answerable.
    """

    __tablename__ = "ban_syncs"

    id: Mapped[intpk]
    source: Mapped[str] = mapped_column(String(32))
    location: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    at: Mapped[created]
    actor: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(
        String(12), comment="accepted, rejected (bad content) or unreadable"
    )
    entries: Mapped[int | None] = mapped_column(comment="entries in an accepted list")
    added: Mapped[int] = mapped_column(default=0)
    removed: Mapped[int] = mapped_column(default=0)
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(
            "status IN ('accepted', 'rejected', 'unreadable')", name="status"
        ),
        Index("ix_ban_syncs_source_status_at", "source", "status", "at"),
    )


class Ban(Base):
    """One ban entry: a person's DN, a DN pattern, an FQAN or an FQAN pattern.

    Hand bans have origin 'hand'; bans read from a central list have origin
    'source:<name>' and only that source's syncs add or lift them. A lifted
    ban keeps its row (lifted_at set, active NULL), so who was banned when
    stays on record; at most one ban per origin and key is in force.
    """

    __tablename__ = "bans"

    id: Mapped[intpk]
    kind: Mapped[str] = mapped_column(
        String(12), comment="dn, dn-pattern, fqan or fqan-pattern"
    )
    entry: Mapped[str] = mapped_column(
        Text, comment="a DN in the canonical slash form, other kinds as written"
    )
    key: Mapped[str] = mapped_column(Text, comment="canonical form that is compared")
    key_hash: Mapped[str] = mapped_column(
        String(64), comment="sha256 of kind and key; for dn equal to identities'"
    )
    origin: Mapped[str] = mapped_column(String(40), comment="hand or source:<name>")
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[created]
    created_by: Mapped[str] = mapped_column(String(128))
    added_sync_id: Mapped[int | None] = mapped_column(ForeignKey("ban_syncs.id"))
    lifted_at: Mapped[when]
    lifted_by: Mapped[str | None] = mapped_column(String(128))
    lift_reason: Mapped[str | None] = mapped_column(Text)
    removed_sync_id: Mapped[int | None] = mapped_column(ForeignKey("ban_syncs.id"))
    active: Mapped[int | None] = mapped_column(
        SmallInteger, comment="1 while in force, NULL once lifted"
    )

    __table_args__ = (
        UniqueConstraint("origin", "key_hash", "active"),
        CheckConstraint(
            "kind IN ('dn', 'dn-pattern', 'fqan', 'fqan-pattern')", name="kind"
        ),
        CheckConstraint(
            "(lifted_at IS NULL AND COALESCE(active, 0) = 1)"
            " OR (lifted_at IS NOT NULL AND active IS NULL)",
            name="active_state",
        ),
        Index("ix_bans_key_hash_active", "key_hash", "active"),
        Index("ix_bans_active_kind", "active", "kind"),
    )


class BanState(Base):
    """A single row whose version changes in every transaction that changes bans.

    Mappers cache the ban list and compare this version on every request,
    so a change reaches running services at their very next mapping. The
    version is random, not a counter, so a restored backup can never bring
    back a version a running mapper has cached with other contents.
    """

    __tablename__ = "ban_state"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    version: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[created]

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class Hold(Base):
    """An incident hold: the account stays out of circulation and recycling."""

    __tablename__ = "holds"

    id: Mapped[intpk]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    started_at: Mapped[created]
    started_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    released_at: Mapped[when]
    released_by: Mapped[str | None] = mapped_column(String(128))
    release_reason: Mapped[str | None] = mapped_column(Text)
    open_account_id: Mapped[int | None] = mapped_column(
        unique=True, comment="account_id while the hold stands, NULL once released"
    )

    __table_args__ = (
        CheckConstraint(
            "(released_at IS NULL AND COALESCE(open_account_id, -1) = account_id)"
            " OR (released_at IS NOT NULL AND open_account_id IS NULL"
            " AND release_reason IS NOT NULL)",
            name="open_state",
        ),
        Index("ix_holds_account_started", "account_id", "started_at"),
    )
