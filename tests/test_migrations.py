"""Migrations: one head, the models match, and the newest step reverses."""

from alembic.script import ScriptDirectory

from poolmgr import migrate


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
