"""a DN ban's entry is kept in the canonical slash form

A DN ban was stored as it was written (RFC 2253 order, OpenSSL 1.1 commas,
a proxy suffix) while every report shows DNs in the canonical slash form.
The entries of DN bans already stored are rewritten to that form; the key
they are compared by does not change, so no ban starts or stops matching.
An entry that no longer parses is left as it is. Downgrading keeps the
canonical entries: they are valid entries for the older code too.

Revision ID: d1d366c35ce8
Revises: 9c3e5b7a2d41
Create Date: 2026-12-05 01:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from poolmgr.bans import dn_entry
from poolmgr.errors import BadInputError

revision: str = "d1d366c35ce8"
down_revision: str | None = "9c3e5b7a2d41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_COMMENT = "as written on the list or CLI"
NEW_COMMENT = "a DN in the canonical slash form, other kinds as written"

bans = sa.table(
    "bans",
    sa.column("id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("entry", sa.Text),
)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(bans.c.id, bans.c.entry).where(bans.c.kind == "dn"))
    for ban_id, entry in rows.all():
        try:
            canonical = dn_entry(entry).entry
        except BadInputError:
            continue
        if canonical != entry:
            conn.execute(
                sa.update(bans).where(bans.c.id == ban_id).values(entry=canonical)
            )
    _comment(OLD_COMMENT, NEW_COMMENT)


def downgrade() -> None:
    _comment(NEW_COMMENT, OLD_COMMENT)


def _comment(old: str, new: str) -> None:
    # SQLite keeps no column comments.
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column(
            "bans",
            "entry",
            existing_type=sa.Text(),
            existing_nullable=False,
            existing_comment=old,
            comment=new,
        )
