"""VOMS FQANs, the pool rules that match them, and the primary FQAN.

An FQAN is `/vo[/group...][/Role=r][/Capability=c]`. Group names and role
values compare case-sensitively, as VOMS defines them; only the keywords
`Role` and `Capability` and the value `NULL` are case-insensitive. `Role=NULL`
means no role; Capability is deprecated in VOMS and never matched, so it is
kept out of equality and of the canonical form (F07).

parse_fqan returns its warnings (keyword case, a non-NULL capability) beside
the FQAN, so the caller decides where to log them; select_primary logs them.
Rules accept the keywords in any case without a warning: they come from site
and VO configuration, where `ROLE=` is found (F07 i).
"""

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from poolmgr.dn import is_valid_utf8, quote_input
from poolmgr.errors import BadInputError

logger = logging.getLogger(__name__)

MAX_LENGTH = 1024
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_UNPRINTABLE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_KEYWORDS = {"role": "Role", "capability": "Capability"}


@dataclass(frozen=True)
class Fqan:
    """A parsed FQAN; the capability is kept for display, never compared."""

    group: str
    role: str | None = None
    capability: str | None = field(default=None, compare=False)

    @property
    def vo(self) -> str:
        """Return the VO: the first component of the group."""
        return self.group.split("/", 2)[1]

    @property
    def components(self) -> tuple[str, ...]:
        """Return the group's components, VO first."""
        return tuple(self.group.split("/")[1:])

    def __str__(self) -> str:
        if self.role is None:
            return self.group
        return f"{self.group}/Role={self.role}"


@dataclass(frozen=True)
class FqanRule:
    """A pool rule: an exact FQAN, or a group subtree ending in `/*`."""

    text: str
    components: tuple[str, ...] = field(repr=False)
    subtree: bool = field(repr=False)
    role: str | None = field(repr=False)

    def matches(self, fqan: Fqan) -> bool:
        """Return whether fqan falls under this rule, component by component."""
        if fqan.role != self.role:
            return False
        groups = fqan.components
        if self.subtree:
            return groups[: len(self.components)] == self.components
        return groups == self.components


@dataclass
class _Parts:
    groups: list[str] = field(default_factory=list)
    role: str | None = None
    capability: str | None = None
    keywords: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def parse_fqan(text: str) -> tuple[Fqan, list[str]]:
    """Parse an FQAN; return it and the warnings an operator should see.

    Raises BadInputError, quoting the FQAN, for anything VOMS cannot issue.
    """
    parts = _parse(text, "FQAN")
    fqan = Fqan("/" + "/".join(parts.groups), parts.role, parts.capability)
    return fqan, parts.warnings


def parse_rule(text: str) -> FqanRule:
    """Parse a pool rule such as `/atlas/Role=production` or `/atlas/uk/*`.

    Raises BadInputError for a malformed rule, a `*` anywhere but as the last
    group component, a rule without a VO, or one that names a capability.
    """
    parts = _parse(text, "FQAN rule")
    groups = parts.groups
    subtree = groups[-1] == "*"
    if subtree:
        groups = groups[:-1]
    if "*" in groups:
        raise _bad("FQAN rule", text, "has '*' other than as its last group")
    if not groups:
        raise _bad("FQAN rule", text, "must name its VO before '*'")
    if parts.capability is not None:
        raise _bad("FQAN rule", text, "names a capability, which is never matched")
    return FqanRule(text, tuple(groups), subtree, parts.role)


def select_primary(fqans: Sequence[str]) -> Fqan | None:
    """Return the primary FQAN, the first one (F06), or None for no FQANs.

    Every FQAN is parsed first, so one malformed FQAN rejects the request.
    """
    parsed = []
    for text in fqans:
        fqan, warnings = parse_fqan(text)
        for warning in warnings:
            logger.info("fqan warning: %s", warning)
        parsed.append(fqan)
    return parsed[0] if parsed else None


def _parse(text: str, what: str) -> _Parts:
    _check_text(text, what)
    parts = _Parts()
    for component in text[1:].split("/"):
        if "=" in component:
            _read_keyword(component, text, what, parts)
        elif parts.keywords:
            raise _bad(what, text, f"has group {component!r} after a keyword")
        else:
            parts.groups.append(_group_name(component, text, what))
    return parts


def _check_text(text: str, what: str) -> None:
    if len(text) > MAX_LENGTH:
        raise _bad(what, text, f"is longer than {MAX_LENGTH} characters")
    if not text.startswith("/"):
        raise _bad(what, text, "must start with '/'")
    if not is_valid_utf8(text):
        raise _bad(what, text, "is not valid UTF-8")
    if _UNPRINTABLE.search(text):
        raise _bad(what, text, "contains whitespace or a control character")


def _group_name(component: str, text: str, what: str) -> str:
    if not component:
        raise _bad(what, text, "has an empty group component")
    if what == "FQAN rule" and component == "*":
        return component
    if not _NAME.fullmatch(component) or component in (".", ".."):
        raise _bad(what, text, f"has an invalid group name {component!r}")
    return component


def _read_keyword(component: str, text: str, what: str, parts: _Parts) -> None:
    word, _, value = component.partition("=")
    keyword = _KEYWORDS.get(word.lower())
    if keyword is None:
        raise _bad(what, text, f"has an unknown keyword {word!r}")
    if not parts.groups:
        raise _bad(what, text, f"has {keyword} before any group")
    if keyword in parts.keywords or (keyword == "Role" and parts.keywords):
        raise _bad(what, text, f"has {keyword} repeated or out of order")
    if not _NAME.fullmatch(value):
        raise _bad(what, text, f"has an empty or invalid {keyword} value {value!r}")

    parts.keywords[keyword] = value
    if word != keyword:
        parts.warnings.append(
            f"FQAN {quote_input(text)} writes the keyword {word!r}; "
            f"read as {keyword!r}."
        )
    if value.upper() != "NULL":
        _set_keyword(keyword, value, text, parts)


def _set_keyword(keyword: str, value: str, text: str, parts: _Parts) -> None:
    if keyword == "Role":
        parts.role = value
        return
    parts.capability = value
    parts.warnings.append(
        f"FQAN {quote_input(text)} carries Capability={value}, "
        "which is ignored for matching."
    )


def _bad(what: str, text: str, problem: str) -> BadInputError:
    return BadInputError(f"{what} {quote_input(text)} {problem}.")
