"""append-only guards on leases and events

The event log is never changed or deleted, and a lease is never deleted;
once ended it is never changed again, and its account, identity, pool and
start never change. Triggers enforce this for every writer, not only for
poolmgr's own code.

Revision ID: b7e1c2d4a9f0
Revises:
Create Date: 2026-12-04 11:35:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "b7e1c2d4a9f0"
down_revision: str | None = "0a64d79d300e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEASE_FROZEN = (
    "OLD.ended_at IS NOT NULL OR NEW.account_id <> OLD.account_id"
    " OR NEW.identity_id <> OLD.identity_id OR NEW.pool_id <> OLD.pool_id"
    " OR NEW.started_at <> OLD.started_at"
)
GUARDS = {
    "events_no_update": ("UPDATE", "events", "true", "events are append-only"),
    "events_no_delete": ("DELETE", "events", "true", "events are append-only"),
    "leases_no_delete": ("DELETE", "leases", "true", "leases end, never deleted"),
    "leases_ended_frozen": ("UPDATE", "leases", LEASE_FROZEN, "lease is frozen"),
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, (action, table, condition, message) in GUARDS.items():
        for statement in _create(dialect, name, action, table, condition, message):
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, (_, table, _, _) in GUARDS.items():
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {name}_fn()")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")


def _create(dialect, name, action, table, condition, message):
    if dialect == "sqlite":
        when = "" if condition == "true" else f" WHEN {condition}"
        yield (
            f"CREATE TRIGGER {name} BEFORE {action} ON {table}"
            f" FOR EACH ROW{when} BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )
    elif dialect == "postgresql":
        yield (
            f"CREATE FUNCTION {name}_fn() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN IF {condition} THEN RAISE EXCEPTION '{message}'; END IF;"
            f" RETURN {'OLD' if action == 'DELETE' else 'NEW'}; END $$"
        )
        yield (
            f"CREATE TRIGGER {name} BEFORE {action} ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION {name}_fn()"
        )
    else:
        yield (
            f"CREATE TRIGGER {name} BEFORE {action} ON {table} FOR EACH ROW"
            f" BEGIN IF {condition} THEN SIGNAL SQLSTATE '45000'"
            f" SET MESSAGE_TEXT = '{message}'; END IF; END"
        )
