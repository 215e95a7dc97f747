"""Migrations: one head, the models match, and the newest step reverses."""

from datetime import UTC, datetime

from alembic.script import ScriptDirectory
from sqlalchemy import insert, select

from poolmgr import migrate
from poolmgr.models import Ban


def test_there_is_a_single_head():
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1


def test_migrated_schema_matches_the_models(engine):
    assert migrate.status(engine).is_current
    assert migrate.drift(engine) == []


def test_newest_revision_downgrades_and_upgrades_again(sqlite_engine):
    script = ScriptDirectory.from_config(migrate.alembic_config())
    head = script.get_revision(script.get_current_head())
    migrate.downgrade(sqlite_engine, head.down_revision or "base")
    assert migrate.status(sqlite_engine).current == head.down_revision
    migrate.upgrade(sqlite_engine)
    assert migrate.status(sqlite_engine).is_current
    assert migrate.drift(sqlite_engine) == []


def test_stored_dn_bans_are_rewritten_to_the_canonical_form(engine):
    """Bans stored as written before d1d366c35ce8 are shown, after it, in
    the slash form every report uses; their key, and so what they match,
    stays the same, and FQAN bans are left as written."""
    migrate.downgrade(engine, "9c3e5b7a2d41")
    written = "CN=Kim Sample,O=Example,DC=org"
    with engine.begin() as conn:
        for kind, entry in (("dn", written), ("fqan", "/atlas/Role=pilot")):
            conn.execute(
                insert(Ban.__table__).values(
                    kind=kind,
                    entry=entry,
                    key="k",
                    key_hash=kind * 4,
                    origin="hand",
                    reason="r",
                    created_at=datetime.now(UTC),
                    created_by="sec",
                    active=1,
                )
            )
    migrate.upgrade(engine)
    with engine.begin() as conn:
        rows = conn.execute(select(Ban.kind, Ban.entry, Ban.key).order_by(Ban.kind))
        assert [tuple(row) for row in rows] == [
            ("dn", "/DC=org/O=Example/CN=Kim Sample", "k"),
            ("fqan", "/atlas/Role=pilot", "k"),
        ]
    assert migrate.drift(engine) == []
