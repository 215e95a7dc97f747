"""rested accounts in index order

The free-account query for accounts used before orders by (free_since,
number). With number in the index, every backend reads the pool's free
accounts in that order and stops at the batch limit, instead of sorting
every free account of the pool on each new lease.

Revision ID: 4d28b791709e
Revises: 7fef8bdb969c
Create Date: 2026-12-04 15:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "4d28b791709e"
down_revision: str | None = "7fef8bdb969c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_accounts_free_since", table_name="accounts")
    op.create_index(
        "ix_accounts_free_since",
        "accounts",
        ["pool_id", "state", "free_since", "number"],
    )


def downgrade() -> None:
    op.drop_index("ix_accounts_free_since", table_name="accounts")
    op.create_index(
        "ix_accounts_free_since", "accounts", ["pool_id", "state", "free_since"]
    )
