"""UTC time helpers and the quiet-period arithmetic.

Every stored time is timezone-aware UTC. The quiet period is a calendar
duration (months and days, as the WLCG recommendation speaks of six months),
so adding it to a time follows the calendar: 31 August plus six months is
the last day of February.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dateutil.relativedelta import relativedelta

from poolmgr.errors import BadInputError

_UNITS = {
    "year": "years",
    "month": "months",
    "week": "weeks",
    "day": "days",
    "hour": "hours",
    "minute": "minutes",
    "second": "seconds",
}
MAX_YEARS = 100
# Calendar durations are compared by adding them to one fixed instant.
_PROBE = datetime(2001, 1, 1, tzinfo=UTC)
_PART = re.compile(r"(\d{1,6})\s*([a-z]+?)s?\b")


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Return value as aware UTC; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time that carries a zone; return it in UTC."""
    cleaned = text.strip()
    if cleaned.endswith(("z", "Z")):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(cleaned)
    except ValueError:
        raise BadInputError(
            f"Time {text[:80]!r} is not ISO 8601 (e.g. 2025-03-01T14:00Z)."
        ) from None
    if value.tzinfo is None:
        raise BadInputError(
            f"Time {text[:80]!r} has no zone; add Z or an offset such as +02:00."
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise BadInputError(
            f"Time {text[:80]!r} is outside the years 1 to 9999 in UTC."
        ) from None


def format_time(value: datetime | None) -> str:
    """Render a stored time as ISO 8601 UTC with a Z, or '-' for none."""
    if value is None:
        return "-"
    # isoformat, unlike strftime's %Y, writes every year with four digits.
    return as_utc(value).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


@dataclass(frozen=True)
class Duration:
    """A calendar duration such as '6 months' or '183 days'."""

    text: str
    delta: relativedelta

    @classmethod
    def parse(cls, text: str) -> "Duration":
        """Parse 'N unit[ N unit...]'; units are years to seconds."""
        spec = text.strip().lower()
        parts = _PART.findall(spec)
        if not parts or _PART.sub("", spec).strip(" ,and"):
            raise BadInputError(
                f"Duration {text[:80]!r} is not understood; write e.g. "
                "'6 months', '183 days' or '1 year 2 weeks'."
            )
        fields: dict[str, int] = {}
        for amount, unit in parts:
            name = _UNITS.get(unit)
            if name is None:
                raise BadInputError(
                    f"Duration {text[:80]!r} has unknown unit {unit!r}."
                )
            fields[name] = fields.get(name, 0) + int(amount)
        duration = cls(text=text.strip(), delta=relativedelta(**fields).normalized())
        if not duration._within_a_century():
            raise BadInputError(
                f"Duration {text[:80]!r} is longer than {MAX_YEARS} years."
            )
        return duration

    def _within_a_century(self) -> bool:
        # Times run from year 1 to 9999; a duration of at most a century can
        # be added to or taken from any time poolmgr records.
        try:
            return _PROBE + self.delta <= _PROBE.replace(year=_PROBE.year + MAX_YEARS)
        except (OverflowError, ValueError):
            return False

    @classmethod
    def parse_positive(cls, text: str, what: str) -> "Duration":
        """Parse like parse; BadInputError also when it is not longer than zero."""
        duration = cls.parse(text)
        if not duration.is_positive():
            raise BadInputError(
                f"{what} must be longer than zero, not {duration.text[:80]!r}."
            )
        return duration

    def is_positive(self) -> bool:
        """Return whether the duration is longer than zero."""
        return _PROBE + self.delta > _PROBE

    def after(self, start: datetime) -> datetime:
        """Return the instant this duration after start, in calendar terms."""
        return as_utc(start) + self.delta

    def before(self, end: datetime) -> datetime:
        """Return the instant this duration before end, in calendar terms."""
        return as_utc(end) - self.delta

    def safe_cutoff(self, now: datetime) -> datetime:
        """Return a time no earlier than any start whose end is <= now.

        Month arithmetic clamps to the end of the month, so start + delta <=
        now may hold for starts up to three days after now - delta; queries
        use this looser bound and then check each row exactly with after().
        """
        return self.before(now) + timedelta(days=4)

    def __str__(self) -> str:
        return self.text
