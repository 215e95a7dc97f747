"""Import EGI VO ID cards (XML) as poolmgr VO cards, one YAML file per VO.

Two inputs are understood: the legacy CIC portal dump (``<VOs><VO Name=...>``
with ``VOMSServers/VOMSServer`` and ``GroupsAndRoles/GroupAndRole``) and the
Operations Portal's current ``IDCard`` format (``gLiteConf/FQANs/FQAN`` and
``gLiteConf/VOMSServers/VOMS_Server``; its ``Perun`` and ``Comanage``
entries are membership services, not VOMS servers, and are reported as
skipped). The XML is untrusted and is parsed with defusedxml, which refuses
entity expansion and external references.

Each card keeps the VO name, its VOMS servers and its published FQANs (in
canonical form, so ``/cms/Role=NULL`` becomes ``/cms``), and proposes pools:

- ``<stem>prd`` for production roles (role name containing "prod"),
- ``<stem>sgm`` for software manager roles (lcgadmin, *sgm*, *soft*, swadmin),
- ``<stem>plt`` for pilot roles,
- ``<stem>`` for ordinary members: ``/<vo>``, every role-less subgroup
  through ``/<vo>/*``, and roles named like "user".

A role that matches none of these falls back to the published group type
(Production Manager, Software Manager, Pilot, Standard User); anything else
(VO-Admin, root, ...) is kept in ``fqans`` but gets no pool.

Sizes: with ``sizes="none"`` every pool is written with ``accounts: 0``, the
value the site replaces with its own size. With ``sizes="members"`` the
users pool gets the published member count (at most 100000), production and
pilot pools min(10, members), software pools min(2, members); a VO that
publishes no count keeps 0 everywhere.
"""

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET
from pydantic import ValidationError

from poolmgr.errors import BadInputError, PoolmgrError, VoCardError
from poolmgr.files import write_atomically
from poolmgr.fqan import parse_fqan
from poolmgr.vocards import (
    CARD_SUFFIXES,
    FORMAT,
    MAX_ACCOUNTS,
    VoCard,
    is_dn,
    is_host_name,
    is_vo_name,
    load_card,
)

SIZES = ("none", "members")
LEGACY = "legacy CIC dump"
IDCARD = "IDCard"

_GROUP_TYPES = {
    "standard user": "users",
    "production manager": "production",
    "software manager": "software",
    "pilot": "pilot",
    "other": "other",
}
_SUFFIXES = {"production": "prd", "software": "sgm", "pilot": "plt", "users": ""}
_POOL_ORDER = ("production", "software", "pilot", "users")
_SGM_ROLE = re.compile(r"lcgadmin|sgm|soft|sw[-_]?(admin|manager)")
_NAME_LIMIT = 32


@dataclass
class _Source:
    """One VO as read from the XML, before any checking."""

    name: str
    description: str
    members: int | None
    servers: list[tuple[str, str, str]] = field(default_factory=list)
    fqans: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """What an import wrote, kept, rejected and skipped."""

    source: Path
    input_format: str
    output_dir: Path
    vos_read: int = 0
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"Read {self.vos_read} VO(s) from {self.source} ({self.input_format}).",
            f"Wrote {len(self.written)} VO card(s) to {self.output_dir}.",
        ]
        if self.kept:
            names = ", ".join(path.name for path in self.kept)
            lines.append(
                f"Kept {len(self.kept)} existing card(s), not overwritten: {names}."
            )
        lines += [f"Rejected VO {_short(name)}: {why}." for name, why in self.rejected]
        for vo, items in self.skipped.items():
            lines += [f"{vo}: skipped {item}." for item in items]
        return "\n".join(lines)


def import_egi(
    xml_path: Path,
    output_dir: Path,
    *,
    sizes: str = "none",
    overwrite: bool = False,
) -> ImportReport:
    """Write one VO card per VO of the EGI XML into output_dir; return a report.

    Raises BadInputError when the file cannot be read, is not well-formed or
    holds no VO, and PoolmgrError when output_dir cannot be written. A bad VO
    is reported and skipped; the others are written. Each file is written
    atomically; an existing file is kept unless overwrite is true.
    """
    if sizes not in SIZES:
        raise BadInputError(f"Sizes must be 'none' or 'members', not {sizes!r}.")
    input_format, sources = _read_sources(xml_path)
    report = ImportReport(xml_path, input_format, output_dir, vos_read=len(sources))
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PoolmgrError(
            f"{output_dir}: cannot create the directory: {exc.strerror}."
        ) from None

    existing = _existing_cards(output_dir)
    sources = _accepted(sources, output_dir, existing, report)
    targets = {s.name: output_dir / f"{s.name}.yaml" for s in sources}
    replaced = set(targets.values()) if overwrite else set()
    taken = {
        decl.name
        for path, card in existing
        if path not in replaced
        for decl in card.pools
    }

    for source in sources:
        target = targets[source.name]
        if target.exists() and not overwrite:
            report.kept.append(target)
        else:
            _import_one(source, target, sizes, taken, report, overwrite)
    return report


def _import_one(
    source: _Source,
    target: Path,
    sizes: str,
    taken: set[str],
    report: ImportReport,
    overwrite: bool,
) -> None:
    skipped: list[str] = []
    data = _card_data(source, sizes, taken, skipped)
    try:
        VoCard.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        why = f"the card would be invalid at {first['loc']}: {first['msg']}"
        report.rejected.append((source.name, why))
        return

    if skipped:
        report.skipped[source.name] = skipped
    text = _header(source, report.source, sizes) + _dump(data)
    if write_atomically(target, text, replace=overwrite):
        report.written.append(target)
    else:
        report.kept.append(target)


# ----------------------------------------------------------------- reading XML


def _read_sources(xml_path: Path) -> tuple[str, list[_Source]]:
    root = _parse(xml_path)
    if root.tag == "VOs":
        sources = [_legacy_source(vo) for vo in root.findall("VO")]
        input_format = LEGACY
    else:
        sources = [_idcard_source(card) for card in root.iter("IDCard")]
        input_format = IDCARD
    if not sources:
        raise BadInputError(
            f"{xml_path}: no <VO> or <IDCard> element found; "
            "is this an EGI VO ID card file?"
        )
    return input_format, sources


def _parse(xml_path: Path) -> ET.Element:
    try:
        return SafeET.parse(str(xml_path)).getroot()
    except OSError as exc:
        raise BadInputError(
            f"{xml_path}: cannot read the file: {exc.strerror}."
        ) from None
    except ET.ParseError as exc:
        raise BadInputError(f"{xml_path}: not well-formed XML: {exc}.") from None
    except DefusedXmlException as exc:
        raise BadInputError(
            f"{xml_path}: refused unsafe XML ({type(exc).__name__})."
        ) from None


def _text(element: ET.Element | None, path: str | None = None) -> str:
    if element is not None and path is not None:
        element = element.find(path)
    if element is None or element.text is None:
        return ""
    return " ".join(element.text.split())


def _legacy_source(vo: ET.Element) -> _Source:
    members = _text(vo, "NumberofRegisteredUsers")
    source = _Source(
        name=(vo.get("Name") or "").strip(),
        description=_text(vo, "GeneralInfos/Description"),
        members=int(members) if members.isdigit() else None,
    )
    for server in vo.iterfind("VOMSServers/VOMSServer"):
        source.servers.append(
            (_text(server, "HOSTNAME"), _text(server, "VOMS_PORT"), _text(server, "DN"))
        )
    for group in vo.iterfind("GroupsAndRoles/GroupAndRole"):
        source.fqans.append(
            (
                _text(group, "GROUP_ROLE"),
                _text(group, "GROUP_TYPE"),
                _text(group, "DESCRIPTION"),
            )
        )
    return source


def _idcard_source(card: ET.Element) -> _Source:
    name = card.get("Name") or _text(card, "Name") or _text(card, "name")
    source = _Source(name.strip(), _text(card, "Description"), None)
    for server in card.iterfind("gLiteConf/VOMSServers/*"):
        if server.tag != "VOMS_Server":
            # Perun and Comanage (EGI Check-in) list members but issue no
            # VOMS attributes, so nothing maps through them.
            source.skipped.append(
                f"membership service {_short(server.tag)}: it is not a VOMS server"
            )
            continue
        port = (server.get("VomsesPort") or "").strip()
        source.servers.append(
            (_text(server, "hostname"), port, _text(server, "X509Cert/DN"))
        )
    for fqan in card.iterfind("gLiteConf/FQANs/FQAN"):
        group_type = " ".join((fqan.get("GroupType") or "").split())
        source.fqans.append(
            (_text(fqan, "FqanExpr"), group_type, _text(fqan, "Description"))
        )
    return source


def _accepted(
    sources: list[_Source],
    output_dir: Path,
    existing: list[tuple[Path, VoCard]],
    report: ImportReport,
) -> list[_Source]:
    """Return the sources with valid, new names, sorted; report the others."""
    accepted: dict[str, _Source] = {}
    defined = {card.vo: path for path, card in existing}
    for source in sorted(sources, key=lambda s: s.name):
        other = defined.get(source.name)
        if not is_vo_name(source.name):
            report.rejected.append((source.name, "the name is not a valid VO name"))
        elif source.name in accepted:
            report.rejected.append(
                (source.name, "it appears twice in the input; the first is kept")
            )
        elif other is not None and other != output_dir / f"{source.name}.yaml":
            report.rejected.append((source.name, f"{other.name} already defines it"))
        else:
            accepted[source.name] = source
    return list(accepted.values())


# ---------------------------------------------------------------- building cards


def _card_data(
    source: _Source, sizes: str, taken: set[str], skipped: list[str]
) -> dict[str, Any]:
    fqans = _published(source, skipped)
    data: dict[str, Any] = {"format": FORMAT, "vo": source.name}
    if source.description:
        data["description"] = source.description
    data["voms_servers"] = _servers(source, skipped)
    skipped += source.skipped
    data["fqans"] = fqans
    pools = _propose_pools(source.name, fqans, taken)
    if sizes == "members" and source.members is None:
        skipped.append("account sizes: the card publishes no member count")
    _size_pools(pools, source.members if sizes == "members" else None)
    data["extensions"] = {"poolmgr": {"pools": pools}}
    return data


def _servers(source: _Source, skipped: list[str]) -> list[dict[str, Any]]:
    servers: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for host, port_text, dn in source.servers:
        port = int(port_text) if port_text.isdigit() else 0
        what = f"VOMS server {host or '(no host)'}:{port_text or '(no port)'}"
        if not host:
            skipped.append(f"{what}: it has no host name")
        elif not is_host_name(host):
            skipped.append(f"{what}: {host!r} is not a valid host name")
        elif not 1 <= port <= 65535:
            skipped.append(f"{what}: the port is not a number from 1 to 65535")
        elif not is_dn(dn):
            skipped.append(f"{what}: the DN {dn!r} is not in slash form")
        elif (host.lower(), port) in seen:
            skipped.append(f"{what}: it is listed twice")
        else:
            seen.add((host.lower(), port))
            servers.append({"host": host, "port": port, "dn": dn})
    return servers


def _published(source: _Source, skipped: list[str]) -> list[dict[str, Any]]:
    published: list[dict[str, Any]] = []
    seen: set[str] = set()
    for text, group_type, description in source.fqans:
        try:
            fqan, _ = parse_fqan(text)
        except BadInputError as exc:
            skipped.append(f"FQAN {_short(text)}: {str(exc).rstrip('.')}")
            continue
        canonical = str(fqan)
        if fqan.vo != source.name:
            skipped.append(
                f"FQAN {_short(text)}: it does not start with /{source.name}"
            )
        elif canonical in seen:
            skipped.append(f"FQAN {_short(text)}: it repeats {canonical}")
        else:
            seen.add(canonical)
            published.append(_entry(canonical, group_type, description, skipped))
    return published


def _entry(
    fqan: str, group_type: str, description: str, skipped: list[str]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"fqan": fqan}
    if description:
        entry["description"] = description
    kind = _GROUP_TYPES.get(group_type.lower())
    if kind:
        entry["type"] = kind
    elif group_type:
        skipped.append(f"group type {_short(group_type)} of {fqan}: it is not known")
    return entry


def _short(text: str) -> str:
    quoted = repr(text)
    return quoted if len(quoted) <= 120 else quoted[:117] + "..."


def classify(fqan: str, group_type: str | None) -> str | None:
    """Return the pool kind for a canonical FQAN of a VO, or None for no pool."""
    role = fqan.partition("/Role=")[2].split("/")[0].lower()
    if "pilot" in role:
        return "pilot"
    if "prod" in role:
        return "production"
    if _SGM_ROLE.search(role):
        return "software"
    if role.endswith(("user", "users")):
        return "users"
    if group_type in ("users", "production", "software", "pilot"):
        return group_type
    return None


def _propose_pools(
    vo: str, fqans: list[dict[str, Any]], taken: set[str]
) -> list[dict[str, Any]]:
    rules: dict[str, list[str]] = {"users": [f"/{vo}", f"/{vo}/*"]}
    for entry in fqans:
        kind = classify(entry["fqan"], entry.get("type"))
        # The root group and role-less subgroups are the users pool's already.
        if entry["fqan"] == f"/{vo}" or kind is None:
            continue
        if kind == "users" and "/Role=" not in entry["fqan"]:
            continue
        rules.setdefault(kind, []).append(entry["fqan"])

    kinds = [kind for kind in _POOL_ORDER if kind in rules]
    stem = _free_stem(vo, kinds, taken)
    pools = []
    for kind in kinds:
        name = stem + _SUFFIXES[kind]
        taken.add(name)
        pools.append({"name": name, "serves": rules[kind], "accounts": 0, "type": kind})
    return pools


def pool_stem(vo: str) -> str:
    """Return the pool name stem for a VO name: letters, digits, '_' and '-'."""
    stem = re.sub(r"[^a-z0-9_-]", "", vo.lower())
    if not stem[:1].isalpha():
        stem = "vo" + stem
    return stem[: _NAME_LIMIT - 3]


def _free_stem(vo: str, kinds: Iterable[str], taken: set[str]) -> str:
    """Return the first stem, plain then numbered 2, 3 ..., free for all kinds."""
    base = pool_stem(vo)
    stem, number = base, 1
    while any(stem + _SUFFIXES[kind] in taken for kind in kinds):
        number += 1
        stem = base[: _NAME_LIMIT - 3 - len(str(number))] + str(number)
    return stem


def _size_pools(pools: list[dict[str, Any]], members: int | None) -> None:
    if members is None:
        return
    for pool in pools:
        pool["accounts"] = {
            "users": min(members, MAX_ACCOUNTS),
            "production": min(10, members),
            "pilot": min(10, members),
            "software": min(2, members),
        }[pool["type"]]


# ------------------------------------------------------------- existing cards


def _existing_cards(output_dir: Path) -> list[tuple[Path, VoCard]]:
    cards = []
    for path in sorted(output_dir.iterdir()):
        if path.suffix not in CARD_SUFFIXES or path.name.startswith("."):
            continue
        if not path.is_file():
            continue
        try:
            cards.append((path, load_card(path)))
        except VoCardError:
            continue
    return cards


class _Dumper(yaml.SafeDumper):
    """Indents list items under their key, as the shipped cards are written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _dump(data: dict[str, Any]) -> str:
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=72
    )


def _header(source: _Source, xml_path: Path, sizes: str) -> str:
    lines = [
        f"# VO card for {source.name}, imported from EGI VO ID card data",
        f"# ({xml_path.name}). The pools are a proposal made from the published",
        "# groups and roles: review them before use.",
    ]
    if sizes == "members" and source.members is not None:
        lines.append(
            "# The account numbers were proposed from the published member count,"
            f" {source.members}."
        )
    else:
        lines.append("# accounts: 0 means not sized yet: set the size of each pool.")
    return "\n".join(lines) + "\n"
