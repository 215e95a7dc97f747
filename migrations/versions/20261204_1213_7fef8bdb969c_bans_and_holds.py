"""bans, ban list syncs, ban state and incident holds

Four new tables; nothing existing changes, so the upgrade takes no lock on
leases or accounts. ``ban_state`` gets its single row here: its random
version changes in every transaction that changes bans, and mappers compare
it on every request to know when their cached ban list is stale.

The downgrade drops the tables and with them every ban, sync record and
hold; it is meant for a schema that was just upgraded by mistake.

Revision ID: 7fef8bdb969c
Revises: 5e8f2a7c41d3
Create Date: 2026-12-04 12:13:02
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import poolmgr.db

revision: str = "7fef8bdb969c"
down_revision: str | None = "5e8f2a7c41d3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BAN_ACTIVE = (
    "(lifted_at IS NULL AND COALESCE(active, 0) = 1)"
    " OR (lifted_at IS NOT NULL AND active IS NULL)"
)
HOLD_OPEN = (
    "(released_at IS NULL AND COALESCE(open_account_id, -1) = account_id)"
    " OR (released_at IS NOT NULL AND open_account_id IS NULL"
    " AND release_reason IS NOT NULL)"
)


def upgrade() -> None:
    state = _create_ban_state()
    _create_ban_syncs()
    _create_bans()
    _create_holds()
    op.bulk_insert(
        state,
        [{"id": 1, "version": uuid.uuid4().hex, "changed_at": datetime.now(UTC)}],
    )


def downgrade() -> None:
    op.drop_index("ix_holds_account_started", table_name="holds")
    op.drop_table("holds")
    op.drop_index("ix_bans_key_hash_active", table_name="bans")
    op.drop_index("ix_bans_active_kind", table_name="bans")
    op.drop_table("bans")
    op.drop_index("ix_ban_syncs_source_status_at", table_name="ban_syncs")
    op.drop_table("ban_syncs")
    op.drop_table("ban_state")


def _create_ban_state() -> sa.Table:
    return op.create_table(
        "ban_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("changed_at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_ban_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ban_state")),
    )


def _create_ban_syncs() -> None:
    op.create_table(
        "ban_syncs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column(
            "status",
            sa.String(length=12),
            nullable=False,
            comment="accepted, rejected (bad content) or unreadable",
        ),
        sa.Column(
            "entries",
            sa.Integer(),
            nullable=True,
            comment="entries in an accepted list",
        ),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('accepted', 'rejected', 'unreadable')",
            name=op.f("ck_ban_syncs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ban_syncs")),
    )
    op.create_index(
        "ix_ban_syncs_source_status_at", "ban_syncs", ["source", "status", "at"]
    )


def _create_bans() -> None:
    op.create_table(
        "bans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.String(length=12),
            nullable=False,
            comment="dn, dn-pattern, fqan or fqan-pattern",
        ),
        sa.Column(
            "entry", sa.Text(), nullable=False, comment="as written on the list or CLI"
        ),
        sa.Column(
            "key", sa.Text(), nullable=False, comment="canonical form that is compared"
        ),
        sa.Column(
            "key_hash",
            sa.String(length=64),
            nullable=False,
            comment="sha256 of kind and key; for dn equal to identities'",
        ),
        sa.Column(
            "origin",
            sa.String(length=40),
            nullable=False,
            comment="hand or source:<name>",
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("added_sync_id", sa.Integer(), nullable=True),
        sa.Column("lifted_at", poolmgr.db.UTCDateTime(), nullable=True),
        sa.Column("lifted_by", sa.String(length=128), nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
        sa.Column("removed_sync_id", sa.Integer(), nullable=True),
        sa.Column(
            "active",
            sa.SmallInteger(),
            nullable=True,
            comment="1 while in force, NULL once lifted",
        ),
        sa.CheckConstraint(
            "kind IN ('dn', 'dn-pattern', 'fqan', 'fqan-pattern')",
            name=op.f("ck_bans_kind"),
        ),
        sa.CheckConstraint(BAN_ACTIVE, name=op.f("ck_bans_active_state")),
        sa.ForeignKeyConstraint(
            ["added_sync_id"],
            ["ban_syncs.id"],
            name=op.f("fk_bans_added_sync_id_ban_syncs"),
        ),
        sa.ForeignKeyConstraint(
            ["removed_sync_id"],
            ["ban_syncs.id"],
            name=op.f("fk_bans_removed_sync_id_ban_syncs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bans")),
        sa.UniqueConstraint(
            "origin", "key_hash", "active", name=op.f("uq_bans_origin_key_hash_active")
        ),
    )
    op.create_index("ix_bans_active_kind", "bans", ["active", "kind"])
    op.create_index("ix_bans_key_hash_active", "bans", ["key_hash", "active"])


def _create_holds() -> None:
    op.create_table(
        "holds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("started_at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.Column("started_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("released_at", poolmgr.db.UTCDateTime(), nullable=True),
        sa.Column("released_by", sa.String(length=128), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=True),
        sa.Column(
            "open_account_id",
            sa.Integer(),
            nullable=True,
            comment="account_id while the hold stands, NULL once released",
        ),
        sa.CheckConstraint(HOLD_OPEN, name=op.f("ck_holds_open_state")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_holds_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
        sa.UniqueConstraint("open_account_id", name=op.f("uq_holds_open_account_id")),
    )
    op.create_index("ix_holds_account_started", "holds", ["account_id", "started_at"])
