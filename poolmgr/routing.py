"""Routing: which pools may serve a request, from the stored FQAN rules.

The first FQAN is the primary one and alone picks the pool; the pools whose
rules match it are tried in rule order, so a full pool falls through to the
next matching rule. In the site's optional any-FQAN mode every FQAN is
considered, and still the first matching rule in rule order wins.
"""

import logging
from dataclasses import dataclass

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from poolmgr.fqan import Fqan, FqanRule, parse_rule
from poolmgr.models import Pool, PoolRule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One rule of the routing table and the pool it leads to."""

    position: int
    pool_id: int
    pool: str
    gid: int
    rule: FqanRule


@dataclass(frozen=True)
class Choice:
    """The pools to try for one request, in order, and the FQAN that chose."""

    fqan: Fqan | None
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class Router:
    """The routing table as loaded from the database."""

    routes: tuple[Route, ...]

    @classmethod
    def load(cls, session: Session | Connection) -> "Router":
        """Read the rules of every live pool, in position order."""
        rows = session.execute(
            select(PoolRule.position, Pool.id, Pool.name, Pool.gid, PoolRule.rule)
            .join(Pool, Pool.id == PoolRule.pool_id)
            .where(Pool.retired_at.is_(None))
            .order_by(PoolRule.position)
        )
        return cls(
            tuple(
                Route(pos, pool_id, name, gid, parse_rule(rule))
                for pos, pool_id, name, gid, rule in rows
            )
        )

    def choose(self, fqans: tuple[Fqan, ...], any_fqan: bool = False) -> Choice:
        """Return the matching routes for the primary FQAN (or any FQAN)."""
        if not fqans:
            return Choice(None, ())
        if not any_fqan:
            primary = fqans[0]
            routes = tuple(r for r in self.routes if r.rule.matches(primary))
            return Choice(primary, _unique_pools(routes))
        for route in self.routes:
            for fqan in fqans:
                if route.rule.matches(fqan):
                    logger.debug(
                        "any-fqan mode chose rule=%s fqan=%s", route.rule.text, fqan
                    )
                    routes = tuple(r for r in self.routes if r.rule.matches(fqan))
                    return Choice(fqan, _unique_pools(routes))
        return Choice(fqans[0], ())

    def secondary_gids(
        self, fqans: tuple[Fqan, ...], primary: Fqan | None
    ) -> list[int]:
        """Return the gids of the pools the non-primary FQANs route to."""
        gids: list[int] = []
        for fqan in fqans:
            if fqan == primary:
                continue
            route = next((r for r in self.routes if r.rule.matches(fqan)), None)
            if route is not None and route.gid not in gids:
                gids.append(route.gid)
        return gids


def _unique_pools(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    seen: set[int] = set()
    kept = []
    for route in routes:
        if route.pool_id not in seen:
            seen.add(route.pool_id)
            kept.append(route)
    return tuple(kept)
