"""Identities: one row per person, display case recovered after import."""

from sqlalchemy import select

from poolmgr.db import unit_of_work
from poolmgr.dn import parse_dn
from poolmgr.identities import distinct_persons, get_or_create_identity
from poolmgr.models import Identity


def test_member_list_counts_a_case_duplicate_once_and_names_it():
    persons, warnings = distinct_persons(
        [
            "/DC=org/DC=example/CN=Kim Sample",
            "/DC=org/DC=example/CN=KIM SAMPLE",
            "CN=Kim Sample,DC=example,DC=org",
            "/DC=org/DC=example/CN=Lee Other",
        ]
    )
    assert [p.slash() for p in persons] == [
        "/DC=org/DC=example/CN=Kim Sample",
        "/DC=org/DC=example/CN=Lee Other",
    ]
    assert warnings[0] == (
        "duplicate member '/DC=org/DC=example/CN=KIM SAMPLE' is "
        "'/DC=org/DC=example/CN=Kim Sample'"
    )
    assert len(warnings) == 2


def test_lossy_display_is_replaced_by_the_first_cased_spelling(sqlite_engine):
    lowered = parse_dn("/dc=org/dc=example/o=example grid/cn=jane roe")
    cased = parse_dn("/DC=org/DC=example/O=Example Grid/CN=Jane Roe")
    with unit_of_work(sqlite_engine) as session:
        get_or_create_identity(session, lowered, lossy=True)
    with unit_of_work(sqlite_engine) as session:
        get_or_create_identity(session, cased)
    with unit_of_work(sqlite_engine) as session:
        shouted = parse_dn("/DC=ORG/DC=EXAMPLE/O=EXAMPLE GRID/CN=JANE ROE")
        get_or_create_identity(session, shouted)
        (identity,) = session.scalars(select(Identity)).all()
    assert identity.display == "/DC=org/DC=example/O=Example Grid/CN=Jane Roe"
    assert identity.display_lossy is False
