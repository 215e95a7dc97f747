"""Routing for an adopted site: VO cards written from a YAIM groups.conf.

Each groups.conf line routes an FQAN to the accounts of its VO that carry
its flag; here it becomes a rule of the imported pools with that VO and
flag, and every VO gets one card whose pools declare the size they have
now. ``poolmgr sync`` then installs the rules and, the sizes being equal,
leaves the accounts alone. Cards, unlike a direct write of the routing
table, stay the one source of rules that sync replaces the table from.
"""

from collections import defaultdict
from pathlib import Path

import yaml
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from poolmgr.adoption import ImportReport, refuse
from poolmgr.errors import VoCardError
from poolmgr.files import write_atomically
from poolmgr.models import Pool
from poolmgr.vocards import FORMAT, VoCard, load_card
from poolmgr.yaim import GroupLine, parse_groups_conf, read_text

# YAIM flags and the VO card pool types that mean the same accounts.
FLAG_TYPES = {"sgm": "software", "prd": "production", "pilot": "pilot", "": "users"}


def import_groups_conf(
    session: Session,
    path: Path,
    out_dir: Path,
    *,
    overwrite: bool = False,
    dry_run: bool = False,
) -> ImportReport:
    """Write one VO card per VO into out_dir from a groups.conf; return them.

    Each FQAN line routes to the imported pools of its VO with its flag, in
    the order of the file. Raises BadInputError or ConflictError listing
    every problem, writing no card: a line whose VO and flag match no
    imported pool, an imported pool no line routes to (sync would retire
    it), a card file that exists (without overwrite) or another card that
    declares the same VO or pool names.
    """
    lines, syntax = parse_groups_conf(read_text(path), str(path))
    pools = list(
        session.scalars(
            select(Pool)
            .where(Pool.flag.is_not(None), Pool.retired_at.is_(None))
            .order_by(Pool.name)
        )
    )
    serves, problems, warnings = _route_lines(lines, pools)
    problems += [
        f"pool {pool.name} (VO {pool.vo}, flag {pool.flag!r}) has no groups.conf "
        "line; add one, or sync would retire the pool."
        for pool in pools
        if pool.name not in {name for vo in serves.values() for name in vo}
    ]
    cards = {vo: _card_data(vo, rules, pools) for vo, rules in serves.items()}
    problems += _card_problems(cards, out_dir, overwrite)
    refuse(f"Import of {path}", syntax, problems)

    report = ImportReport(warnings=warnings + _order_warnings(lines, serves))
    report.cards = [out_dir / f"{vo}.yaml" for vo in sorted(cards)]
    if not dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
        for target in report.cards:
            write_atomically(target, _card_text(cards[target.stem]))
    return report


def _route_lines(
    lines: list[GroupLine], pools: list[Pool]
) -> tuple[dict[str, dict[str, list[str]]], list[str], list[str]]:
    by_key: dict[tuple[str, str], list[Pool]] = defaultdict(list)
    for pool in pools:
        by_key[(pool.vo, pool.flag or "")].append(pool)
    serves: dict[str, dict[str, list[str]]] = {}
    problems, warnings = [], []
    for line in lines:
        targets = by_key.get((line.vo, line.flag), [])
        if not targets and line.group:
            warnings.append(
                f"{line.where}: {line.rule} only names group {line.group}; "
                "poolmgr gives secondary groups through pools, line skipped"
            )
        elif not targets:
            problems.append(
                f"{line.where}: no imported pool of VO {line.vo} has flag "
                f"{line.flag!r}; import its users.conf first or drop the line."
            )
        for pool in targets:
            if line.group and line.group != pool.group_name:
                warnings.append(
                    f"{line.where}: group {line.group} differs from pool "
                    f"{pool.name}'s group {pool.group_name}; the pool's is used"
                )
            rules = serves.setdefault(line.vo, {}).setdefault(pool.name, [])
            if line.rule not in rules:
                rules.append(line.rule)
    return serves, problems, warnings


def _card_data(vo: str, serves: dict[str, list[str]], pools: list[Pool]) -> dict:
    by_name = {pool.name: pool for pool in pools}
    return {
        "format": FORMAT,
        "vo": vo,
        "extensions": {
            "poolmgr": {
                "pools": [
                    {
                        "name": name,
                        "serves": rules,
                        "accounts": by_name[name].size,
                        "type": FLAG_TYPES.get(by_name[name].flag or "", "other"),
                    }
                    for name, rules in serves.items()
                ]
            }
        },
    }


def _card_problems(cards: dict[str, dict], out_dir: Path, overwrite: bool) -> list[str]:
    problems = []
    for vo, data in sorted(cards.items()):
        target = out_dir / f"{vo}.yaml"
        if target.exists() and not overwrite:
            problems.append(f"{target}: the VO card exists; use --overwrite.")
        try:
            VoCard.model_validate(data)
        except ValidationError as exc:
            problems.append(f"{target}: {exc.errors()[0]['msg']}.")
    pools = {p["name"]: vo for vo, d in cards.items() for p in _card_pools(d)}
    for other in _other_cards(out_dir, {f"{vo}.yaml" for vo in cards}):
        if other[1].vo in cards:
            problems.append(f"{other[0]}: it already defines VO {other[1].vo}.")
        problems += [
            f"{other[0]}: it already declares pool {decl.name}."
            for decl in other[1].pools
            if decl.name in pools
        ]
    return problems


def _card_pools(data: dict) -> list[dict]:
    return data["extensions"]["poolmgr"]["pools"]


def _other_cards(out_dir: Path, ours: set[str]) -> list[tuple[Path, VoCard]]:
    if not out_dir.is_dir():
        return []
    found = []
    for path in sorted(out_dir.iterdir()):
        if path.suffix not in (".yaml", ".yml") or path.name in ours:
            continue
        try:
            found.append((path, load_card(path)))
        except VoCardError:
            continue  # sync reports a broken card itself, with its lines
    return found


def _order_warnings(
    lines: list[GroupLine], serves: dict[str, dict[str, list[str]]]
) -> list[str]:
    warnings = []
    for vo, pools in sorted(serves.items()):
        written = list(dict.fromkeys(r for rules in pools.values() for r in rules))
        in_file = list(dict.fromkeys(line.rule for line in lines if line.vo == vo))
        if [rule for rule in in_file if rule in written] != written:
            warnings.append(
                f"VO {vo}: rules are grouped by pool in the card, so they are "
                f"tried in the order {', '.join(written)}"
            )
    return warnings


def _card_text(data: dict) -> str:
    header = (
        "# VO card written by 'poolmgr import groups.conf' for an adopted site:\n"
        "# the pools keep the accounts imported from users.conf. Add the VO's\n"
        "# VOMS servers and published FQANs when you maintain it by hand.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
