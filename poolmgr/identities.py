"""Persons as stored: one Identity row per canonical DN (or token subject).

The identity model has a kind so that an OAuth/JWT identity (issuer and
subject) can be added beside X.509 DNs without a schema change: its key is
"issuer subject", hashed the same way.
"""

import hashlib
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from poolmgr.dn import DistinguishedName, parse_dn
from poolmgr.models import Identity

X509 = "x509"


def key_hash(kind: str, key: str) -> str:
    """Return the indexed SHA-256 of an identity's kind and canonical key."""
    return hashlib.sha256(f"{kind}\0{key}".encode()).hexdigest()


def find_identity(session: Session, dn: DistinguishedName) -> Identity | None:
    """Return the stored identity for dn, or None."""
    digest = key_hash(X509, dn.key)
    return session.scalars(select(Identity).where(Identity.key_hash == digest)).first()


def get_or_create_identity(
    session: Session, dn: DistinguishedName, *, lossy: bool = False
) -> Identity:
    """Return the identity for dn, creating it if new.

    The display form is the DN in canonical slash form as received (with its
    letter case). A display recovered from a lowercased gridmapdir lease is
    marked lossy and replaced by the first properly cased one seen later.
    """
    identity = find_identity(session, dn)
    display = dn.slash()
    if identity is not None:
        if identity.display_lossy and not lossy:
            identity.display = display
            identity.display_lossy = False
        return identity

    identity = Identity(
        kind=X509,
        key=dn.key,
        key_hash=key_hash(X509, dn.key),
        display=display,
        display_lossy=lossy,
    )
    try:
        with session.begin_nested():
            session.add(identity)
    except IntegrityError:
        # Another writer created the same person a moment ago; use theirs.
        existing = find_identity(session, dn)
        if existing is None:
            raise
        return existing
    return identity


def distinct_persons(dns: Iterable[str]) -> tuple[list[DistinguishedName], list[str]]:
    """Return the distinct persons in a member list, and a warning per duplicate.

    A VOMS server may list one member twice in different letter case or
    DN form; those count as one person (the first spelling is kept).
    """
    persons: dict[str, DistinguishedName] = {}
    warnings = []
    for text in dns:
        dn = parse_dn(text, strip_proxy=False)
        first = persons.setdefault(dn.key, dn)
        if first is not dn:
            warnings.append(f"duplicate member {text!r} is {first.slash()!r}")
    return list(persons.values()), warnings
