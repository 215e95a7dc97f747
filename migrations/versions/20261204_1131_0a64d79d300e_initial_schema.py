"""initial schema

Revision ID: 0a64d79d300e
Revises:
Create Date: 2026-12-04 11:31:16.954149

Before committing: is this reversible? How long does it lock the leases
table on a site with a million historical leases? Data backfills go in a
revision of their own.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import poolmgr.db

revision: str = "0a64d79d300e"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="x509 or oidc"),
        sa.Column("key", sa.Text(), nullable=False, comment="canonical comparison key"),
        sa.Column(
            "key_hash",
            sa.String(length=64),
            nullable=False,
            comment="sha256 of kind and key",
        ),
        sa.Column(
            "display", sa.Text(), nullable=False, comment="as received, for people"
        ),
        sa.Column(
            "display_lossy",
            sa.Boolean(),
            nullable=False,
            comment="display was recovered from a lowercased lease name",
        ),
        sa.Column("created_at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_identities_key_hash")),
    )
    op.create_table(
        "pools",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("vo", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=24), nullable=False),
        sa.Column("digits", sa.Integer(), nullable=False),
        sa.Column(
            "first_uid",
            sa.BigInteger(),
            nullable=False,
            comment="uid of account number 0",
        ),
        sa.Column("group_name", sa.String(length=32), nullable=False),
        sa.Column("gid", sa.BigInteger(), nullable=False),
        sa.Column(
            "declared_size", sa.Integer(), nullable=False, comment="size in the VO card"
        ),
        sa.Column(
            "size",
            sa.Integer(),
            nullable=False,
            comment="target size after site override",
        ),
        sa.Column("created_at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.Column(
            "retired_at",
            poolmgr.db.UTCDateTime(),
            nullable=True,
            comment="no longer in any VO card",
        ),
        sa.CheckConstraint("digits BETWEEN 1 AND 9", name=op.f("ck_pools_digits")),
        sa.CheckConstraint(
            "size >= 0 AND declared_size >= 0", name=op.f("ck_pools_sizes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pools")),
        sa.UniqueConstraint("name", name=op.f("uq_pools_name")),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column(
            "state",
            sa.String(length=8),
            nullable=False,
            comment="free, leased or retired",
        ),
        sa.Column("created_at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.Column("retired_at", poolmgr.db.UTCDateTime(), nullable=True),
        sa.Column(
            "last_used_at",
            poolmgr.db.UTCDateTime(),
            nullable=True,
            comment="last use by anybody, copied from the lease when it ends",
        ),
        sa.Column(
            "free_since",
            poolmgr.db.UTCDateTime(),
            nullable=True,
            comment="when the last lease ended",
        ),
        sa.Column(
            "quiet_waived_at",
            poolmgr.db.UTCDateTime(),
            nullable=True,
            comment="an override ended the quiet period at this time",
        ),
        sa.CheckConstraint(
            "state IN ('free', 'leased', 'retired')", name=op.f("ck_accounts_state")
        ),
        sa.ForeignKeyConstraint(
            ["pool_id"], ["pools.id"], name=op.f("fk_accounts_pool_id_pools")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
        sa.UniqueConstraint(
            "pool_id", "number", name=op.f("uq_accounts_pool_id_number")
        ),
        sa.UniqueConstraint("uid", name=op.f("uq_accounts_uid")),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_accounts_free_order",
            ["pool_id", "state", "last_used_at", "number"],
            unique=False,
        )
        batch_op.create_index(
            "ix_accounts_free_since", ["pool_id", "state", "free_since"], unique=False
        )

    op.create_table(
        "pool_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=1024), nullable=False),
        sa.ForeignKeyConstraint(
            ["pool_id"], ["pools.id"], name=op.f("fk_pool_rules_pool_id_pools")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_rules")),
        sa.UniqueConstraint("position", name=op.f("uq_pool_rules_position")),
    )
    op.create_table(
        "leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("identity_id", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column(
            "fqan", sa.String(length=1024), nullable=True, comment="primary FQAN"
        ),
        sa.Column("started_at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.Column("ended_at", poolmgr.db.UTCDateTime(), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.Column("ended_by", sa.String(length=128), nullable=True),
        sa.Column("end_note", sa.Text(), nullable=True),
        sa.Column(
            "open_account_id",
            sa.Integer(),
            nullable=True,
            comment="account_id while open, NULL once ended",
        ),
        sa.Column(
            "open_marker",
            sa.SmallInteger(),
            nullable=True,
            comment="1 while open, NULL once ended",
        ),
        sa.CheckConstraint(
            "(ended_at IS NULL AND COALESCE(open_marker, 0) = 1"
            " AND COALESCE(open_account_id, -1) = account_id)"
            " OR (ended_at IS NOT NULL AND open_marker IS NULL"
            " AND open_account_id IS NULL AND end_reason IS NOT NULL)",
            name=op.f("ck_leases_open_state"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_leases_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_leases_identity_id_identities"),
        ),
        sa.ForeignKeyConstraint(
            ["pool_id"], ["pools.id"], name=op.f("fk_leases_pool_id_pools")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leases")),
        sa.UniqueConstraint(
            "identity_id",
            "pool_id",
            "open_marker",
            name=op.f("uq_leases_identity_id_pool_id_open_marker"),
        ),
        sa.UniqueConstraint("open_account_id", name=op.f("uq_leases_open_account_id")),
    )
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.create_index(
            "ix_leases_account_started", ["account_id", "started_at"], unique=False
        )
        batch_op.create_index(
            "ix_leases_identity_open", ["identity_id", "open_marker"], unique=False
        )
        batch_op.create_index(
            "ix_leases_open_last_used", ["open_marker", "last_used_at"], unique=False
        )

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", poolmgr.db.UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=True),
        sa.Column("pool", sa.String(length=32), nullable=True),
        sa.Column("account", sa.String(length=32), nullable=True),
        sa.Column("identity_id", sa.Integer(), nullable=True),
        sa.Column("dn", sa.Text(), nullable=True),
        sa.Column("lease_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=True, comment="JSON object"),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_events_identity_id_identities"),
        ),
        sa.ForeignKeyConstraint(
            ["lease_id"], ["leases.id"], name=op.f("fk_events_lease_id_leases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_account_at", ["account", "at"], unique=False)
        batch_op.create_index("ix_events_at", ["at"], unique=False)
        batch_op.create_index("ix_events_identity", ["identity_id"], unique=False)
        batch_op.create_index("ix_events_kind_at", ["kind", "at"], unique=False)


def downgrade() -> None:
    # Dropping a table drops its indexes; MariaDB refuses to drop an index a
    # foreign key still needs, so drop whole tables, dependents first.
    for table in ("events", "pool_rules", "leases", "accounts", "identities", "pools"):
        op.drop_table(table)
