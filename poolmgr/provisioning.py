"""Provisioning exports: the accounts and groups for configuration management.

passwd and group lines, and YAIM's users.conf
(``UID:LOGIN:GID1,GID2:GROUP1,GROUP2:VO:FLAG:``) and groups.conf
(``"FQAN":GROUP:GID:FLAG:``), written sorted and deterministic so that
configuration management sees a change only when an account or rule does.
Retired accounts are kept by default: they still own files, and poolmgr
never gives their uids to anybody else.
"""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from poolmgr.dn import quote_input
from poolmgr.errors import BadInputError, ConflictError
from poolmgr.models import Account, Pool, PoolRule

EXPORT_KINDS = ("passwd", "group", "users.conf", "groups.conf")
# VO card pool types and the YAIM flags that select the same accounts.
TYPE_FLAGS = {"software": "sgm", "production": "prd", "pilot": "pilot"}


@dataclass(frozen=True)
class ExportOptions:
    """Choices for passwd lines and which accounts to write."""

    home_base: str = "/home"
    shell: str = "/bin/bash"
    include_retired: bool = True


# ------------------------------------------------------------------- shared


def parse_groups(pool: Pool) -> list[tuple[str, int]]:
    """Return the secondary (group, gid) pairs stored on a pool."""
    if not pool.secondary_groups:
        return []
    pairs = []
    for item in pool.secondary_groups.split(","):
        name, _, gid = item.partition(":")
        pairs.append((name, int(gid)))
    return pairs


# ------------------------------------------------------------------- exports


def export_text(
    session: Session,
    kind: str,
    options: ExportOptions,
    types: Mapping[str, str | None] | None = None,
) -> tuple[str, list[str]]:
    """Return the export of kind (see EXPORT_KINDS) and warnings about it.

    types maps pool names to their VO card type; it supplies the YAIM flag
    of pools that were not imported. Raises BadInputError for an unknown
    kind or a home base or shell that would break the passwd format.
    """
    pools = _export_pools(session, options)
    flags = {pool.name: _flag(pool, types or {}) for pool in pools}
    if kind == "passwd":
        lines = _passwd_lines(session, pools, options)
    elif kind == "group":
        lines = _group_lines(session, pools, options)
    elif kind == "users.conf":
        lines = _users_conf_lines(session, pools, flags, options)
    elif kind == "groups.conf":
        lines = _groups_conf_lines(session, pools, flags)
    else:
        raise BadInputError(
            f"Export {quote_input(kind)} is unknown; use one of "
            f"{', '.join(EXPORT_KINDS)}."
        )
    warnings = _flag_clashes(pools, flags) if kind.endswith(".conf") else []
    return "".join(line + "\n" for line in lines), warnings


def _export_pools(session: Session, options: ExportOptions) -> list[Pool]:
    query = select(Pool).order_by(Pool.name)
    if not options.include_retired:
        query = query.where(Pool.retired_at.is_(None))
    return list(session.scalars(query))


def _flag(pool: Pool, types: Mapping[str, str | None]) -> str:
    if pool.flag is not None:
        return pool.flag
    return TYPE_FLAGS.get(types.get(pool.name) or "", "")


def _accounts(
    session: Session, pools: list[Pool], options: ExportOptions
) -> list[tuple[Account, Pool]]:
    by_id = {pool.id: pool for pool in pools}
    query = select(Account).order_by(Account.uid)
    if not options.include_retired:
        query = query.where(Account.state != "retired")
    return [
        (account, by_id[account.pool_id])
        for account in session.scalars(query)
        if account.pool_id in by_id
    ]


def _passwd_lines(
    session: Session, pools: list[Pool], options: ExportOptions
) -> list[str]:
    for value, what in ((options.home_base, "home base"), (options.shell, "shell")):
        if ":" in value or not value.isprintable() or not value.startswith("/"):
            raise BadInputError(
                f"The {what} {quote_input(value)} must be an absolute path "
                "without ':' or control characters."
            )
    home = options.home_base.rstrip("/")
    return [
        f"{account.name}:x:{account.uid}:{pool.gid}:poolmgr pool {pool.name}:"
        f"{home}/{account.name}:{options.shell}"
        for account, pool in _accounts(session, pools, options)
    ]


def _group_lines(
    session: Session, pools: list[Pool], options: ExportOptions
) -> list[str]:
    groups: dict[int, str] = {}
    members: dict[int, list[str]] = defaultdict(list)
    for pool in pools:
        for name, gid in ((pool.group_name, pool.gid), *parse_groups(pool)):
            if groups.setdefault(gid, name) != name:
                raise ConflictError(
                    f"gid {gid} is both {groups[gid]} and {name} (pool "
                    f"{pool.name}); fix the pools before exporting groups."
                )
    for account, pool in _accounts(session, pools, options):
        for _, gid in parse_groups(pool):
            members[gid].append(account.name)
    return [f"{groups[gid]}:x:{gid}:{','.join(members[gid])}" for gid in sorted(groups)]


def _users_conf_lines(
    session: Session,
    pools: list[Pool],
    flags: Mapping[str, str],
    options: ExportOptions,
) -> list[str]:
    lines = []
    for account, pool in _accounts(session, pools, options):
        groups = [(pool.group_name, pool.gid), *parse_groups(pool)]
        gids = ",".join(str(gid) for _, gid in groups)
        names = ",".join(name for name, _ in groups)
        lines.append(
            f"{account.uid}:{account.name}:{gids}:{names}:{pool.vo}:{flags[pool.name]}:"
        )
    return lines


def _groups_conf_lines(
    session: Session, pools: list[Pool], flags: Mapping[str, str]
) -> list[str]:
    by_id = {pool.id: pool for pool in pools if pool.retired_at is None}
    lines: list[str] = []
    for pool_id, rule in session.execute(
        select(PoolRule.pool_id, PoolRule.rule).order_by(PoolRule.position)
    ):
        pool = by_id.get(pool_id)
        line = f'"{rule}":::{flags[pool.name]}:' if pool else None
        if line is not None and line not in lines:
            lines.append(line)
    return lines


def _flag_clashes(pools: list[Pool], flags: Mapping[str, str]) -> list[str]:
    shared: dict[tuple[str, str], list[str]] = defaultdict(list)
    for pool in pools:
        if pool.retired_at is None:
            shared[(pool.vo, flags[pool.name])].append(pool.name)
    return [
        f"pools {', '.join(names)} of VO {vo} share the flag {flag!r}; YAIM "
        "treats accounts with one VO and flag as one pool."
        for (vo, flag), names in sorted(shared.items())
        if len(names) > 1
    ]
