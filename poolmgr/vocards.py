"""VO cards: one YAML file per VO declaring its VOMS servers, FQANs and pools.

A card mirrors what the EGI VO ID card publishes (name, VOMS servers, groups
and roles) plus the poolmgr extension under ``extensions.poolmgr``, which
declares the pools that serve the VO's FQAN rules. Cards are checked strictly:
every problem of every file is reported as ``file:line: dotted.key: message``.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from poolmgr.errors import BadInputError, VoCardError
from poolmgr.fqan import FqanRule, parse_fqan, parse_rule
from poolmgr.yamldoc import Document, Loc, Problem, dotted, quote, read_document

FORMAT = "poolmgr-vocard/1"
MAX_ACCOUNTS = 100_000
CARD_SUFFIXES = (".yaml", ".yml")

_VO_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_POOL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")


FqanType = Literal["users", "production", "software", "pilot", "other"]


def is_vo_name(value: str) -> bool:
    """Return whether value is a valid VO name."""
    return _VO_NAME.fullmatch(value) is not None


def is_host_name(value: str) -> bool:
    """Return whether value is a syntactically valid DNS host name."""
    return len(value) <= 253 and _HOST_NAME.fullmatch(value) is not None


def is_dn(value: str) -> bool:
    """Return whether value looks like a DN in OpenSSL slash form."""
    return value.startswith("/") and "=" in value


def _check_vo_name(value: str) -> str:
    if not is_vo_name(value):
        raise ValueError(
            f"{quote(value)} is not a valid VO name: use at most 64 lower-case"
            " letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _check_pool_name(value: str) -> str:
    if not _POOL_NAME.fullmatch(value):
        raise ValueError(
            f"{quote(value)} is not a valid pool name: use at most 32 lower-case"
            " letters, digits, '_' or '-', starting with a letter"
        )
    return value


def _check_host(value: str) -> str:
    if not is_host_name(value):
        raise ValueError(f"{quote(value)} is not a valid host name")
    return value


def _check_dn(value: str) -> str:
    if not is_dn(value):
        raise ValueError(f"{quote(value)} is not a DN in slash form (/DC=.../CN=...)")
    return value


def _check_fqan(value: str) -> str:
    try:
        parse_fqan(value)
    except BadInputError as exc:
        raise ValueError(str(exc)) from None
    return value


def _check_rule(value: str) -> str:
    try:
        parse_rule(value)
    except BadInputError as exc:
        raise ValueError(str(exc)) from None
    return value


VoName = Annotated[str, AfterValidator(_check_vo_name)]
PoolName = Annotated[str, AfterValidator(_check_pool_name)]
HostName = Annotated[str, AfterValidator(_check_host)]
SlashDn = Annotated[str, AfterValidator(_check_dn)]
FqanText = Annotated[str, AfterValidator(_check_fqan)]
RuleText = Annotated[str, AfterValidator(_check_rule)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VomsServer(_Strict):
    """A VOMS server of the VO, as its VO ID card publishes it."""

    host: HostName
    port: StrictInt = Field(ge=1, le=65535)
    dn: SlashDn


class PublishedFqan(_Strict):
    """A group or role the VO publishes."""

    fqan: FqanText
    description: str | None = None
    type: FqanType | None = None


class PoolEntry(_Strict):
    """A pool as written in the card's poolmgr extension."""

    name: PoolName
    serves: tuple[RuleText, ...]
    accounts: StrictInt = Field(ge=0, le=MAX_ACCOUNTS)
    type: FqanType | None = None

    @field_validator("serves")
    @classmethod
    def _check_serves(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a pool must serve at least one FQAN rule")
        return value


class PoolmgrExtension(_Strict):
    """The poolmgr extension of the EGI VO ID card."""

    glexec: StrictBool = False
    pools: tuple[PoolEntry, ...] = ()


class Extensions(_Strict):
    """Extensions of the VO ID card; poolmgr knows only its own."""

    poolmgr: PoolmgrExtension = PoolmgrExtension()


@dataclass(frozen=True)
class PoolDecl:
    """A pool a card declares, with the VO it belongs to."""

    name: str
    vo: str
    serves: tuple[str, ...]
    accounts: int
    type: FqanType | None


class VoCard(_Strict):
    """One VO card file, validated."""

    format: Literal["poolmgr-vocard/1"]
    vo: VoName
    description: str | None = None
    voms_servers: tuple[VomsServer, ...] = ()
    fqans: tuple[PublishedFqan, ...] = ()
    extensions: Extensions = Extensions()

    @property
    def glexec(self) -> bool:
        """Return whether the VO's pilot jobs switch identity with gLExec."""
        return self.extensions.poolmgr.glexec

    @property
    def pools(self) -> tuple[PoolDecl, ...]:
        """Return the declared pools in card order."""
        return tuple(
            PoolDecl(entry.name, self.vo, entry.serves, entry.accounts, entry.type)
            for entry in self.extensions.poolmgr.pools
        )

    @model_validator(mode="after")
    def _check_consistency(self, info: ValidationInfo) -> "VoCard":
        # A loader passes a list in the context to get every problem with its
        # own key (and so its line); direct callers get one ValidationError.
        problems = card_problems(self)
        sink = (info.context or {}).get("problems")
        if sink is not None:
            sink.extend(problems)
        elif problems:
            raise ValueError("; ".join(f"{dotted(loc)}: {m}" for loc, m in problems))
        return self


def card_problems(card: VoCard) -> list[tuple[Loc, str]]:
    """Return the problems that span several fields of one card, with keys."""
    return [
        *_published_problems(card),
        *_server_problems(card),
        *_pool_problems(card),
    ]


def _published_problems(card: VoCard) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(card.fqans):
        loc: Loc = ("fqans", index, "fqan")
        fqan, _ = parse_fqan(entry.fqan)
        canonical = str(fqan)
        if fqan.vo != card.vo:
            problems.append((loc, _foreign(entry.fqan, card.vo)))
        elif canonical in seen:
            problems.append(
                (loc, f"{entry.fqan!r} repeats fqans.{seen[canonical]}.fqan")
            )
        seen.setdefault(canonical, index)
    return problems


def _server_problems(card: VoCard) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    seen: dict[tuple[str, int], int] = {}
    for index, server in enumerate(card.voms_servers):
        key = (server.host.lower(), server.port)
        if key in seen:
            problems.append(
                (
                    ("voms_servers", index, "host"),
                    f"{server.host}:{server.port} repeats voms_servers.{seen[key]}",
                )
            )
        seen.setdefault(key, index)
    return problems


def _pool_problems(card: VoCard) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    names: dict[str, int] = {}
    for index, entry in enumerate(card.extensions.poolmgr.pools):
        loc: Loc = ("extensions", "poolmgr", "pools", index)
        if entry.name in names:
            problems.append(
                (
                    (*loc, "name"),
                    f"pool name {entry.name!r} repeats "
                    f"extensions.poolmgr.pools.{names[entry.name]}.name",
                )
            )
        names.setdefault(entry.name, index)
        problems.extend(_rule_problems(card.vo, entry, loc))
    return problems


def _rule_problems(vo: str, entry: PoolEntry, loc: Loc) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    seen: dict[tuple[object, ...], int] = {}
    for index, text in enumerate(entry.serves):
        rule = parse_rule(text)
        canonical = (rule.components, rule.subtree, rule.role)
        if rule.components[0] != vo:
            problems.append(((*loc, "serves", index), _foreign(text, vo)))
        elif canonical in seen:
            problems.append(
                (
                    (*loc, "serves", index),
                    f"rule {text!r} repeats serves.{seen[canonical]} of this pool",
                )
            )
        seen.setdefault(canonical, index)
    return problems


def _foreign(text: str, vo: str) -> str:
    return f"{quote(text)} does not belong to VO {vo!r}; it must start with /{vo}"


# ---------------------------------------------------------------- YAML reading


def _read_document(path: Path) -> tuple[Document | None, list[Problem]]:
    """Parse path safely; return the card's document (if any) and the problems."""
    document, problems = read_document(path)
    if document is None:
        if not problems:
            problems = [(1, "the file is empty; a VO card needs format and vo")]
        return None, problems
    if not isinstance(document.data, dict):
        data = document.data
        kind = "a list" if isinstance(data, list) else quote(data, 60)
        top = (document.line, f"the top level must be a mapping, not {kind}")
        return None, [*problems, top]
    return document, problems


# ------------------------------------------------------------------ validation


@dataclass(frozen=True)
class _Loaded:
    """A card file that parsed, with where its keys are and what it declares.

    card is None when the card has problems of its own; vo and pool_names
    are still read from it, so that a VO or pool declared twice is reported
    together with those problems, not only once they are mended.
    """

    path: Path
    card: VoCard | None
    lines: dict[Loc, int]
    vo: str | None
    pool_names: tuple[str | None, ...]

    def line(self, loc: Loc) -> int:
        return _line_of(self.lines, loc)


def _line_of(lines: dict[Loc, int], loc: Loc) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _under(loc: Loc, bad: set[Loc]) -> bool:
    return any(loc[:end] in bad for end in range(len(loc) + 1))


def _validate(document: Document) -> tuple[VoCard | None, list[Problem]]:
    sink: list[tuple[Loc, str]] = []
    try:
        card = VoCard.model_validate(document.data, context={"problems": sink})
    except ValidationError as exc:
        return None, [
            (_line_of(document.lines, loc), f"{dotted(loc)}: {_message(error)}")
            for error in exc.errors()
            if not _under(loc := tuple(error["loc"]), document.bad)
        ]
    problems = [
        (_line_of(document.lines, loc), f"{dotted(loc)}: {message}")
        for loc, message in sink
    ]
    return (None if problems else card), problems


_MESSAGES = {
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
    "model_type": "should be a mapping of keys",
    "model_attributes_type": "should be a mapping of keys",
    "dict_type": "should be a mapping of keys",
    "tuple_type": "should be a list",
    "list_type": "should be a list",
    "string_type": "should be text",
    "int_type": "should be a whole number",
    "bool_type": "should be true or false",
}

# Errors whose input is absent or already quoted in the message.
_QUIET = ("missing", "extra_forbidden", "value_error")


def _message(error: Any) -> str:
    kind = error["type"]
    message = _MESSAGES.get(kind) or error["msg"].removeprefix("Value error, ")
    message = message.rstrip(".")
    if kind not in _QUIET:
        message += f" (got {quote(error['input'], 80)})"
    return message


def _load_one(path: Path) -> tuple[_Loaded | None, list[str]]:
    """Return the card in path if it has no problem, and its problems in order."""
    document, problems = _read_document(path)
    card = None
    if document is not None:
        card, more = _validate(document)
        problems = sorted([*problems, *more], key=lambda problem: problem[0])
    lines = [
        f"{path}:{line}: {message}." if line else f"{path}: {message}."
        for line, message in problems
    ]
    if document is None:
        return None, lines
    if card is None or problems:
        return _Loaded(path, None, document.lines, *_declared(document.data)), lines
    names = tuple(entry.name for entry in card.extensions.poolmgr.pools)
    return _Loaded(path, card, document.lines, card.vo, names), lines


def _declared(data: dict[str, Any]) -> tuple[str | None, tuple[str | None, ...]]:
    """Return the VO and pool names a card that failed its checks declares."""
    vo = data.get("vo")
    pools: Any = data.get("extensions")
    for key in ("poolmgr", "pools"):
        pools = pools.get(key) if isinstance(pools, dict) else None
    names = tuple(
        entry.get("name") if isinstance(entry, dict) else None
        for entry in (pools if isinstance(pools, list) else [])
    )
    return (
        vo if isinstance(vo, str) else None,
        tuple(name if isinstance(name, str) else None for name in names),
    )


def _card_files(path: Path) -> tuple[list[Path], list[str]]:
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.suffix in CARD_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            return [], [f"{path}: the directory holds no VO card (*.yaml, *.yml)."]
        return files, []
    if not path.exists():
        return [], [f"{path}: no such file or directory."]
    return [path], []


def _cross_card_problems(loaded: list[_Loaded]) -> list[str]:
    problems = []
    vos: dict[str, _Loaded] = {}
    pools: dict[str, tuple[_Loaded, Loc]] = {}
    for item in loaded:
        if item.vo is not None and item.vo in vos:
            first = vos[item.vo]
            problems.append(
                f"{item.path}:{item.line(('vo',))}: vo: VO {item.vo!r} is "
                f"already defined at {first.path}:{first.line(('vo',))}."
            )
        if item.vo is not None:
            vos.setdefault(item.vo, item)
        for index, name in enumerate(item.pool_names):
            if name is None:
                continue
            loc: Loc = ("extensions", "poolmgr", "pools", index, "name")
            if name in pools and pools[name][0] is not item:
                other, other_loc = pools[name]
                problems.append(
                    f"{item.path}:{item.line(loc)}: {dotted(loc)}: pool name "
                    f"{name!r} is already declared at "
                    f"{other.path}:{other.line(other_loc)}."
                )
            pools.setdefault(name, (item, loc))
    return problems


def _load_all(path: Path) -> tuple[list[_Loaded], list[str]]:
    files, problems = _card_files(path)
    loaded = []
    for file in files:
        item, more = _load_one(file)
        problems.extend(more)
        if item is not None:
            loaded.append(item)
    problems.extend(_cross_card_problems(loaded))
    return loaded, problems


def check_cards(path: Path) -> list[str]:
    """Return every problem of the card file or directory, one line each."""
    return _load_all(path)[1]


def load_card(path: Path) -> VoCard:
    """Return the card in path; raise VoCardError listing all its problems."""
    loaded, problems = _load_one(path)
    if loaded is None or loaded.card is None or problems:
        raise VoCardError("\n".join(problems))
    return loaded.card


def load_cards(path: Path) -> list[VoCard]:
    """Return the cards of a file or directory, sorted by file name.

    Raises VoCardError listing every problem of every file, including pool
    names or VOs declared by two cards.
    """
    loaded, problems = _load_all(path)
    if problems:
        raise VoCardError("\n".join(problems))
    return [item.card for item in loaded if item.card is not None]


def pool_rules(cards: Iterable[VoCard]) -> list[tuple[str, FqanRule]]:
    """Return (pool name, rule) in routing order.

    Cards come in the order given (file-name order from load_cards), pools in
    card order, rules in the order the pool serves them.
    """
    return [
        (decl.name, parse_rule(text))
        for card in cards
        for decl in card.pools
        for text in decl.serves
    ]
