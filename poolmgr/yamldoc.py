"""Reading poolmgr's YAML files: the site configuration and the VO cards.

One safe reader for every YAML file poolmgr reads. Besides what
``yaml.safe_load`` refuses, it refuses what safe_load quietly accepts: a
key given twice in one mapping (safe_load keeps the last), merge keys,
keys that are not text, tags other than the plain ones, and aliases that
expand a small file into a huge document. It keeps the line of every key
and item, so callers can say where a bad value is.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1024 * 1024

Loc = tuple[str | int, ...]
Problem = tuple[int, str]
"""A problem of one file: its line (0 for the whole file) and message."""


def quote(value: object, limit: int = 200) -> str:
    """Return repr(value), cut to limit characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dotted(loc: Loc) -> str:
    """Return loc as a dotted key path, '(top)' for the document itself."""
    return ".".join(str(part) for part in loc) or "(top)"


@dataclass
class Document:
    """A parsed YAML file: plain data and the line of every key and item.

    ``bad`` holds the places whose value could not be read (they are None in
    data and already reported); ``line`` is where the document starts.
    """

    data: Any
    lines: dict[Loc, int]
    bad: set[Loc]
    line: int


class _NodeBudgetError(Exception):
    """Aliases expand the document past the node budget."""


class _Converter:
    """Turns a composed YAML node tree into data, recording line numbers."""

    max_nodes = 100_000

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self.bad: set[Loc] = set()
        self.visited = 0
        self.active: set[int] = set()

    def convert(self, node: yaml.Node, loc: Loc) -> Any:
        self.visited += 1
        if self.visited > self.max_nodes:
            raise _NodeBudgetError
        line = node.start_mark.line + 1
        self.lines.setdefault(loc, line)
        if id(node) in self.active:
            return self._problem(loc, line, "an alias refers to itself")
        self.active.add(id(node))
        try:
            return self._convert(node, loc, line)
        finally:
            self.active.discard(id(node))

    def _convert(self, node: yaml.Node, loc: Loc, line: int) -> Any:
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            kind = "map" if isinstance(node, yaml.MappingNode) else "seq"
            if node.tag != f"tag:yaml.org,2002:{kind}":
                return self._problem(
                    loc, line, f"the tag {quote(node.tag)} is not allowed"
                )
            if kind == "map":
                return self._mapping(node, loc)
            return [self.convert(item, (*loc, i)) for i, item in enumerate(node.value)]
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            return self._problem(loc, line, _yaml_problem(exc))

    def _note(self, loc: Loc, line: int, message: str) -> None:
        self.problems.append((line, f"{dotted(loc)}: {message}" if loc else message))

    def _problem(self, loc: Loc, line: int, message: str) -> None:
        """Record a problem; the value at loc becomes None and is not judged."""
        self._note(loc, line, message)
        self.bad.add(loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = self._key(key_node, loc, line)
            if key is None:
                continue
            if key in first:
                message = f"duplicate key {key!r} (first at line {first[key]})"
                self._note((*loc, key), line, message)
                continue
            first[key] = line
            self.lines[(*loc, key)] = line
            result[key] = self.convert(value_node, (*loc, key))
        return result

    def _key(self, node: yaml.Node, loc: Loc, line: int) -> str | None:
        if node.tag == "tag:yaml.org,2002:merge":
            self._note(loc, line, "merge keys (<<) are not supported")
            return None
        try:
            key = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._note(loc, line, _yaml_problem(exc))
            return None
        if not isinstance(key, str):
            self._note(loc, line, f"the key {quote(key, 60)} is not plain text")
            return None
        return key


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else problem
    if isinstance(exc, yaml.constructor.ConstructorError):
        return f"the value cannot be read: {text}"
    return f"YAML syntax error: {text}"


def read_document(
    path: Path, what: str = "file"
) -> tuple[Document | None, list[Problem]]:
    """Parse path safely; return the document (None if empty) and the problems.

    what names the file in messages about the file as a whole ("cannot
    read the configuration"). A document with problems is still returned
    when it could be composed, so callers can report its other faults too.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [(0, f"cannot read the {what}: {exc.strerror}")]
    if len(raw) > MAX_BYTES:
        return None, [(0, f"the {what} is larger than 1 MiB ({len(raw)} bytes)")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, [
            (line, f"the {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x})")
        ]
    return compose(text)


def compose(text: str) -> tuple[Document | None, list[Problem]]:
    """Parse YAML text; return the document (None if empty) and the problems."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        converter = _Converter(loader)
        data = converter.convert(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is None:
            return None, [(1, _yaml_problem(exc))]
        return None, [
            (mark.line + 1, f"column {mark.column + 1}: {_yaml_problem(exc)}")
        ]
    except yaml.YAMLError as exc:
        return None, [(1, _yaml_problem(exc))]
    except (_NodeBudgetError, RecursionError):
        return None, [(1, "the document nests or repeats aliases too deeply")]
    finally:
        loader.dispose()
    document = Document(data, converter.lines, converter.bad, node.start_mark.line + 1)
    return document, converter.problems
