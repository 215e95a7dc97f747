"""pool flag and secondary groups

Pools adopted from a YAIM users.conf keep the account flag (sgm, prd, pilot
or empty) and the secondary groups their accounts belong to, so that the
exports write them back. Both columns are NULL for pools created by sync.

Adding nullable columns is instant on every backend and needs no table
rebuild on SQLite (ALTER TABLE ADD COLUMN); the downgrade drops them.

Revision ID: 5e8f2a7c41d3
Revises: c3d9a6e1f2b4
Create Date: 2026-12-04 12:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5e8f2a7c41d3"
down_revision: str | None = "c3d9a6e1f2b4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "pools",
        sa.Column(
            "flag",
            sa.String(length=16),
            nullable=True,
            comment="YAIM account flag (sgm, prd, pilot, '') if imported",
        ),
    )
    op.add_column(
        "pools",
        sa.Column(
            "secondary_groups",
            sa.String(length=1024),
            nullable=True,
            comment="further groups of every account: name:gid,...",
        ),
    )


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place; a batch rebuild would break the
    # foreign keys of accounts and leases that refer to pools.
    op.drop_column("pools", "secondary_groups")
    op.drop_column("pools", "flag")
