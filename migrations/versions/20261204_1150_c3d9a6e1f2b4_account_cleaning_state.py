"""account state 'cleaning'

An account whose lease ended by recycling stays out of service, in state
'cleaning', until the site's cleanup command has succeeded; only then does
it become free. This widens the state check constraint.

On SQLite the accounts table is rebuilt from its own stored definition with
only the check text replaced. Leases refer to accounts and foreign keys stay
on, so the rows are copied aside, the table is dropped and created again,
and the rows are put back into it before commit; deferred foreign keys see
every lease's account present again by then. Only the accounts table is
copied (seconds for a million accounts); leases are not touched.

The downgrade refuses while any account is being cleaned, because turning
such an account into 'free' would hand out an account nobody cleaned.

Revision ID: c3d9a6e1f2b4
Revises: b7e1c2d4a9f0
Create Date: 2026-12-04 11:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3d9a6e1f2b4"
down_revision: str | None = "b7e1c2d4a9f0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_CHECK = "state IN ('free', 'leased', 'retired')"
NEW_CHECK = "state IN ('free', 'leased', 'cleaning', 'retired')"
OLD_COMMENT = "free, leased or retired"
NEW_COMMENT = "free, leased, cleaning (out of service until cleaned) or retired"


def upgrade() -> None:
    _replace((OLD_CHECK, NEW_CHECK), (OLD_COMMENT, NEW_COMMENT))


def downgrade() -> None:
    cleaning = op.get_bind().scalar(
        sa.text("SELECT COUNT(*) FROM accounts WHERE state = 'cleaning'")
    )
    if cleaning:
        raise RuntimeError(
            f"{cleaning} account(s) are waiting for cleanup; finish them with "
            "'poolmgr recycle' before downgrading."
        )
    _replace((NEW_CHECK, OLD_CHECK), (NEW_COMMENT, OLD_COMMENT))


def _replace(checks: tuple[str, str], comments: tuple[str, str]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(*checks)
        return
    op.drop_constraint(op.f("ck_accounts_state"), "accounts", type_="check")
    op.create_check_constraint(op.f("ck_accounts_state"), "accounts", checks[1])
    op.alter_column(
        "accounts",
        "state",
        existing_type=sa.String(length=8),
        existing_nullable=False,
        comment=comments[1],
        existing_comment=comments[0],
    )


def _rebuild_sqlite(old_check: str, new_check: str) -> None:
    # SQLite cannot alter a constraint, and alembic's batch rebuild drops the
    # table after filling its replacement, which leaves every lease's foreign
    # key pointing at deleted rows.
    bind = op.get_bind()
    table_sql = bind.scalar(
        sa.text(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'accounts'"
        )
    )
    if old_check not in table_sql:
        raise RuntimeError(f"accounts table lacks the check {old_check!r}")
    extras = bind.scalars(
        sa.text(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'accounts'"
            " AND type IN ('index', 'trigger') AND sql IS NOT NULL"
        )
    ).all()
    op.execute("PRAGMA defer_foreign_keys = ON")
    op.execute("CREATE TABLE _accounts_copy AS SELECT * FROM accounts")
    op.execute("DROP TABLE accounts")
    op.execute(table_sql.replace(old_check, new_check))
    op.execute("INSERT INTO accounts SELECT * FROM _accounts_copy")
    op.execute("DROP TABLE _accounts_copy")
    for statement in extras:
        op.execute(statement)
