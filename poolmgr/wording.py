"""Small helpers that keep counts and lists readable in messages."""

from collections.abc import Sequence


def counted(count: float, singular: str, plural: str | None = None) -> str:
    """Return '1 person', '2 persons', '0.5 persons': a count with its noun."""
    noun = singular if count == 1 else (plural or singular + "s")
    return f"{count:g} {noun}"


def sample(items: Sequence[str], limit: int = 10) -> str:
    """Return items joined by commas, or the first limit and how many more."""
    shown = ", ".join(items[:limit])
    if len(items) <= limit:
        return shown
    return f"{shown} and {len(items) - limit} more"
