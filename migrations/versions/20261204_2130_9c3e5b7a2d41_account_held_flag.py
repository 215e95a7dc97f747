"""a hold is also marked on its account's row

Mappings lock a free account with SELECT ... FOR UPDATE SKIP LOCKED and
test for a hold in the same statement. A hold committed after that
statement's snapshot was taken, and before the lock, was invisible to a
test of the holds table; a flag on the locked row itself is tested again
on the row as it is when locked. Accounts under a standing hold get the
flag here. Downgrading drops the column; on SQLite that needs SQLite 3.35 or
newer.

Revision ID: 9c3e5b7a2d41
Revises: 4d28b791709e
Create Date: 2026-12-04 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9c3e5b7a2d41"
down_revision: str | None = "4d28b791709e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ALTER TABLE on every backend: a batch rebuild of accounts
    # would break the leases' foreign keys on SQLite (see c3d9a6e1f2b4).
    op.add_column(
        "accounts",
        sa.Column(
            "held",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="under a standing hold (holds.open_account_id)",
        ),
    )
    op.execute(
        "UPDATE accounts SET held = TRUE WHERE id IN"
        " (SELECT open_account_id FROM holds WHERE open_account_id IS NOT NULL)"
    )


def downgrade() -> None:
    op.drop_column("accounts", "held")
