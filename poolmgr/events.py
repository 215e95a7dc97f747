"""The event log: one row per state change, and one syslog line after commit.

Rows are written in the caller's transaction, so an event exists exactly
when the change it describes does. Syslog lines are queued on the session
and emitted only after the commit, so a rolled-back change never appears in
syslog either.
"""

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import insert
from sqlalchemy.orm import Session

from poolmgr.models import Event
from poolmgr.timeutil import utcnow

audit_logger = logging.getLogger("poolmgr.audit")
_PENDING = "poolmgr_pending_log"
_COLUMNS = ("actor", "pool", "account", "identity_id", "dn", "lease_id", "reason")
INSERT = insert(Event)
# Syslog priority by kind: what an operator should look at goes at warning
# (an override of the quiet period, an account a cleanup left out of
# service); every other state change at info.
_LEVELS = {"override": logging.WARNING, "cleanup_failed": logging.WARNING}


def record(
    session: Session, kind: str, *, at: datetime | None = None, **fields: Any
) -> None:
    """Insert an event row of kind with the given fields; log it after commit.

    Fields named like Event columns fill those columns; any others go into
    the JSON details. The row is inserted at once on the session's
    connection, so it needs no ORM flush.
    """
    row, logged = prepare(kind, at=at, **fields)
    session.connection().execute(INSERT, row)
    queue_log(session, _LEVELS.get(kind, logging.INFO), kind, **logged)


def prepare(
    kind: str, *, at: datetime | None = None, **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the event row of kind with fields, and the fields of its log line.

    For a caller that inserts the row itself, in a statement of its own,
    and then queues the log line with queue_log.
    """
    columns = {key: fields.pop(key) for key in _COLUMNS if key in fields}
    details = {k: v for k, v in fields.items() if v is not None}
    row = dict.fromkeys(_COLUMNS) | columns
    row.update(
        at=at or utcnow(),
        kind=kind,
        details=json.dumps(details, default=str) if details else None,
    )
    return row, columns | details


def queue_log(session: Session, level: int, kind: str, **fields: Any) -> None:
    """Queue one key=value log line to be emitted when the session commits."""
    session.info.setdefault(_PENDING, []).append((level, kind, fields))


def format_fields(kind: str, fields: dict[str, Any]) -> str:
    """Render an event as 'event=kind key=value ...' with safe quoting."""
    parts = [f"event={kind}"]
    for key, value in fields.items():
        if value is None or key == "identity_id":
            continue
        parts.append(f"{key}={_quote(str(value))}")
    return " ".join(parts)


def _quote(value: str) -> str:
    cleaned = value.replace("\\", "\\\\").replace('"', '\\"')
    cleaned = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in cleaned)
    if cleaned and not any(ch in cleaned for ch in ' ="\\'):
        return cleaned
    return f'"{cleaned}"'


def emit(level: int, kind: str, fields: dict[str, Any]) -> None:
    """Emit one event's log line now: for a change already committed."""
    audit_logger.log(level, "%s", format_fields(kind, fields))


@sa_event.listens_for(Session, "after_commit")
def _emit_after_commit(session: Session) -> None:
    for level, kind, fields in session.info.pop(_PENDING, []):
        emit(level, kind, fields)


@sa_event.listens_for(Session, "after_soft_rollback")
def _drop_after_rollback(session: Session, previous_transaction: Any) -> None:
    if not session.in_transaction():
        session.info.pop(_PENDING, None)
