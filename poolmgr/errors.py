"""The exceptions poolmgr raises for expected failures.

Each class carries the process exit code the CLI uses and the short error
code the mapping service sends on the wire, so that every interface reports
one failure the same way.
"""


class PoolmgrError(Exception):
    """An expected failure, reported to the user as one line."""

    exit_code = 1
    code = "ERROR"


class BadInputError(PoolmgrError):
    """A DN, FQAN, time or other argument could not be parsed."""

    exit_code = 2
    code = "BAD_INPUT"


class NoPoolMatchError(PoolmgrError):
    """No pool rule matches the primary FQAN of the request."""

    exit_code = 3
    code = "NO_POOL"


class PoolExhaustedError(PoolmgrError):
    """Every pool that could serve the request has no free account."""

    exit_code = 4
    code = "POOL_EXHAUSTED"

    def __init__(self, message: str, pools: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.pools = pools


class BannedError(PoolmgrError):
    """The person or the primary FQAN is banned at this site."""

    exit_code = 5
    code = "BANNED"


class BanListUnavailableError(PoolmgrError):
    """A configured ban list has never been read, so mapping fails closed."""

    exit_code = 6
    code = "BAN_LIST_UNAVAILABLE"


class NoLeaseError(PoolmgrError):
    """Verify mode found no open lease for the person in a matching pool."""

    exit_code = 7
    code = "NO_LEASE"


class DatabaseUnavailableError(PoolmgrError):
    """The database could not be reached or refused the connection."""

    exit_code = 8
    code = "DB_UNAVAILABLE"


class ContentionError(PoolmgrError):
    """A mapping lost every bounded retry against concurrent writers."""

    exit_code = 9
    code = "CONTENTION"


class RunLockedError(PoolmgrError):
    """Another process runs the same job on this database right now."""

    exit_code = 9


class ConfigError(PoolmgrError):
    """The site configuration file is missing a value or holds a bad one."""

    exit_code = 10
    code = "CONFIG"


class VoCardError(PoolmgrError):
    """A VO card is malformed; the message lists every problem found."""

    exit_code = 10
    code = "VOCARD"


class NotFoundError(PoolmgrError):
    """A named pool, account or person is not known."""

    exit_code = 11
    code = "NOT_FOUND"


class PolicyError(PoolmgrError):
    """The action is refused by policy (quiet period, hold, ban, in use)."""

    exit_code = 12
    code = "REFUSED"


class ConflictError(PoolmgrError):
    """Definitions disagree (a uid or gid used twice, a gid name mismatch)."""

    exit_code = 13
    code = "CONFLICT"


INTERNAL_ERROR_EXIT = 70
"""Exit code for an unexpected internal error (a bug); EX_SOFTWARE."""
