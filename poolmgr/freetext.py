"""The free text people give poolmgr: reasons, notes and actor names.

Every command that records a reason (--reason of ban, hold, release, recycle
--force, bans forget) or an actor (--by, the login behind sudo) checks it
here, so one rule holds everywhere: the text is stripped, not empty, bounded,
and printable. Printable leaves out control characters (a newline would
split a log or CSV line) and invisible format characters such as U+202E,
which reverses how the rest of a line is shown.
"""

from poolmgr.errors import BadInputError

MAX_REASON = 2000
MAX_ACTOR = 128


def check_reason(value: str | None, what: str = "reason") -> str:
    """Return a required reason stripped; BadInputError when empty or unusable."""
    text = (value or "").strip()
    if not text:
        raise BadInputError(f"A {what} is required (--reason TEXT).")
    if len(text) > MAX_REASON or not text.isprintable():
        raise BadInputError(
            f"The {what} must be printable (no control or invisible characters) "
            f"and at most {MAX_REASON} characters."
        )
    return text


def check_actor(actor: str) -> str:
    """Return the actor name stripped; BadInputError when empty or unusable."""
    name = actor.strip()
    if not name or len(name) > MAX_ACTOR or not name.isprintable():
        raise BadInputError(
            f"Actor {actor[:80]!r} is not a usable name: it must be printable "
            f"(no control or invisible characters) and at most {MAX_ACTOR} "
            "characters."
        )
    return name
