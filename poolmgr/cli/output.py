"""Rendering for people (aligned tables) and scripts (JSON)."""

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import typer

from poolmgr.timeutil import format_time


def cell(value: Any) -> str:
    """Render one value for a table cell."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as an aligned text table with a header line."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    typer.echo(_line(headers, widths))
    for row in cells:
        typer.echo(_line(row, widths))


def _line(values: Sequence[str], widths: list[int]) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()


def emit_json(value: Any) -> None:
    """Print value as indented JSON; times become ISO 8601 UTC strings."""
    typer.echo(json.dumps(value, indent=2, default=_default, ensure_ascii=False))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
