"""The site configuration: one YAML file, validated strictly.

The file is found through ``--config``, then ``POOLMGR_CONFIG``, then
/etc/poolmgr/poolmgr.yaml. Without any file every value has a default, so
the tool works out of the box on the embedded SQLite database.
"""

import os
import re
from logging.handlers import SysLogHandler
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from poolmgr.errors import ConfigError, PoolmgrError
from poolmgr.timeutil import Duration
from poolmgr.yamldoc import read_document

DEFAULT_CONFIG = Path("/etc/poolmgr/poolmgr.yaml")
SYSTEM_STATE_DIR = Path("/var/lib/poolmgr")
_NAME = r"^[a-z_][a-z0-9_.-]{0,31}$"
DATABASE_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb")


def default_state_dir() -> Path:
    """Return /var/lib/poolmgr for root, the user's state directory otherwise."""
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "poolmgr"


def default_database_url() -> str:
    """Return the URL of the embedded SQLite database in the state directory."""
    return f"sqlite:///{default_state_dir() / 'poolmgr.db'}"


# Query keys the drivers read as a password; messages show the query.
_PASSWORD_KEYS = frozenset({"password", "passwd", "pass"})


def database_url_problem(url: str) -> str | None:
    """Return why poolmgr cannot use the database URL, or None if it can.

    The URL must parse and name one of the backends poolmgr supports; a
    driver it names must be one SQLAlchemy knows. Messages show the URL
    with its password hidden, so a password may only stand where that
    hides it: a password query parameter, or an unencoded '@' that makes
    part of the password look like the host, is refused. The URL itself
    is never quoted here.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return (
            "the value is not a database URL (give sqlite:///PATH, "
            "postgresql://..., mysql://... or mariadb://...)"
        )
    if parsed.host is not None and "@" in parsed.host:
        return (
            "the URL has a second '@'; write an '@' inside the user name or "
            "password as %40"
        )
    if any(key.casefold() in _PASSWORD_KEYS for key in parsed.query):
        return (
            "the URL carries a password in its query; give it as "
            "user:password@host (characters such as '@' percent-encoded), "
            "where messages hide it"
        )
    backend = parsed.get_backend_name()
    if backend not in DATABASE_BACKENDS:
        return (
            f"database backend {backend[:40]!r} is not supported "
            f"(use {', '.join(DATABASE_BACKENDS)})"
        )
    try:
        parsed.get_dialect()
    except ArgumentError:
        return f"database driver {parsed.drivername[:60]!r} is not known"
    return None


def _positive_duration(value: str, what: str) -> str:
    """Return value if it parses as a duration longer than zero."""
    try:
        period = Duration.parse(value)
    except PoolmgrError as exc:
        raise ValueError(str(exc)) from None
    if not period.is_positive():
        raise ValueError(f"{what} must be longer than zero")
    return value


def _needs_unit(value: Any) -> Any:
    """Refuse a bare number where a duration is expected: which unit?"""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f"{value} has no unit; write a duration such as '6 months' or '183 days'"
        )
    return value


DurationText = Annotated[str, BeforeValidator(_needs_unit)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolSettings(_Strict):
    """Site overrides for one pool; anything left out comes from the VO card."""

    prefix: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,23}$")] | None = None
    digits: Annotated[int, Field(ge=1, le=9)] | None = None
    first_uid: Annotated[int, Field(ge=1, le=4_294_967_294)] | None = None
    group: Annotated[str, Field(pattern=_NAME)] | None = None
    gid: Annotated[int, Field(ge=1, le=4_294_967_294)] | None = None
    size: Annotated[int, Field(ge=0, le=1_000_000)] | None = None


class RecycleSettings(_Strict):
    """Commands run by ``poolmgr recycle``; each gets the account as argument.

    Each command is an argv list (never a shell string) whose first element
    is an absolute path, since cron and systemd run with a minimal PATH.
    ``cleanup_command`` wipes an account after its lease ended (exit 0 means
    clean); without one, an ended lease frees its account at once.
    ``in_use_command`` exits 0 when the account is still in use, 1 when it is
    not; anything else counts as in use and is reported. Both are killed
    after ``command_timeout`` seconds.
    """

    cleanup_command: list[str] | None = None
    in_use_command: list[str] | None = None
    command_timeout: Annotated[int, Field(ge=1, le=86_400)] = 600

    @field_validator("cleanup_command", "in_use_command")
    @classmethod
    def _check_command(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value or not value[0].startswith("/"):
            raise ValueError(
                "give the command as a list starting with an absolute path"
            )
        if any("\0" in part for part in value):
            raise ValueError("a command argument contains a NUL character")
        return value


def default_processes() -> int:
    """Return one service process per usable CPU, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


class ServiceSettings(_Strict):
    """The mapping service on a Unix socket (``poolmgr serve``).

    Only root, the service's own user and members of ``group`` may connect.
    Beyond ``max_clients`` open connections new ones wait in the listen
    backlog; ``workers`` bounds the mappings that run at once in each of
    ``processes`` worker processes, forked by one supervisor when more than
    one (a single Python process uses about one core, so the default is one
    per CPU this process may run on, at most 8). A connection
    idle for ``idle_timeout`` seconds is closed, and a request line must
    arrive (and its reply be taken) within ``request_timeout`` seconds; a
    mapping that waits that long for a free worker (the database is slow or
    hung) is refused with DB_UNAVAILABLE.
    Routing rules changed by sync reach a running service within
    ``router_ttl`` seconds.
    """

    socket: Path = Path("/run/poolmgr/poolmgr.sock")
    group: Annotated[str, Field(pattern=_NAME)] | None = None
    max_clients: Annotated[int, Field(ge=1, le=10_000)] = 256
    workers: Annotated[int, Field(ge=1, le=256)] = 8
    processes: Annotated[int, Field(ge=1, le=64)] = Field(
        default_factory=default_processes
    )
    idle_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    request_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    router_ttl: Annotated[float, Field(ge=0, le=3600)] = 5.0
    shutdown_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0


class SyslogSettings(_Strict):
    """Where state changes and mapping decisions are logged.

    ``address`` is the path of a local syslog socket (datagram or stream),
    or ``host``, ``host:port`` or ``[ipv6]:port`` of a syslog server that
    takes UDP (port 514 when none is given).
    """

    enabled: bool = True
    facility: str = "authpriv"
    address: str = "/dev/log"

    @field_validator("facility")
    @classmethod
    def _check_facility(cls, value: str) -> str:
        if value.lower() not in SysLogHandler.facility_names:
            raise ValueError(f"unknown syslog facility {value[:40]!r}")
        return value.lower()

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        if value.startswith("/") and value.isprintable():
            return value
        if syslog_server(value) is None:
            raise ValueError(
                f"{value[:80]!r} is neither an absolute socket path nor "
                "host[:port] with a port from 1 to 65535"
            )
        return value

    def server(self) -> tuple[str, int] | None:
        """Return (host, port) of a remote syslog server, None for a socket."""
        return None if self.address.startswith("/") else syslog_server(self.address)


_SERVER = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+))"
    r"(?::(?P<port>\d{1,5}))?$"
)


def syslog_server(address: str) -> tuple[str, int] | None:
    """Return (host, port) for 'host', 'host:port' or '[v6]:port'; else None."""
    match = _SERVER.match(address)
    if match is None:
        return None
    port = int(match["port"] or 514)
    if not 1 <= port <= 65535:
        return None
    return match["v6"] or match["host"], port


class BanSourceSettings(_Strict):
    """A central ban list: a local file or an HTTP(S) URL on a trusted host.

    ``location`` is an absolute path or an http:// or https:// URL.
    ``format`` is ``ban-mapfile`` (the LCMAPS ban_dn/ban_fqan file: quoted
    DNs or FQANs, ``*`` wildcards) or ``dn-list`` (one literal DN a line).
    While a source has never been read successfully every mapping fails
    closed with BAN_LIST_UNAVAILABLE; once read, its last good list stays in
    force when later reads fail, and ``poolmgr check`` warns when the last
    good read is older than ``stale_after`` (a duration such as '1 day').
    ``ca_path`` verifies an https:// source against a CA certificate file or
    a directory of hashed CA certificates (grid hosts carry IGTF
    certificates, which the system trust store lacks, under
    /etc/grid-security/certificates); without it the system store is used.
    """

    name: Annotated[str, Field(pattern=_NAME)]
    location: str
    format: Annotated[str, Field(pattern=r"^(ban-mapfile|dn-list)$")] = "ban-mapfile"
    stale_after: DurationText = "1 day"
    ca_path: str | None = None

    @field_validator("location")
    @classmethod
    def _check_location(cls, value: str) -> str:
        if value.startswith(("http://", "https://", "/")) and value.isprintable():
            return value
        raise ValueError("give an absolute path or an http:// or https:// URL")

    @field_validator("stale_after")
    @classmethod
    def _check_stale_after(cls, value: str) -> str:
        return _positive_duration(value, "stale_after")

    @field_validator("ca_path")
    @classmethod
    def _check_ca_path(cls, value: str | None) -> str | None:
        if value is None or (value.startswith("/") and value.isprintable()):
            return value
        raise ValueError("give the absolute path of a CA file or directory")

    @property
    def stale(self) -> Duration:
        """Return how old the last good read may be before check warns."""
        return Duration.parse(self.stale_after)


class Settings(_Strict):
    """The whole site configuration."""

    database: str | None = None
    vocards: Path = Path("/etc/poolmgr/vocards")
    quiet_period: DurationText = "6 months"
    last_use_resolution: Annotated[int, Field(ge=0, le=3600)] = 60
    any_fqan: bool = False
    check_nss: bool = True
    dn_only_pool: str | None = None
    first_uid: Annotated[int, Field(ge=1000, le=4_000_000_000)] = 100_000
    first_gid: Annotated[int, Field(ge=1000, le=4_000_000_000)] = 100_000
    pools: dict[str, PoolSettings] = Field(default_factory=dict)
    recycle: RecycleSettings = Field(default_factory=RecycleSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    syslog: SyslogSettings = Field(default_factory=SyslogSettings)
    ban_sources: list[BanSourceSettings] = Field(default_factory=list)
    source: str = Field(default="(defaults)", exclude=True)

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str | None) -> str | None:
        problem = None if value is None else database_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("quiet_period")
    @classmethod
    def _check_quiet_period(cls, value: str) -> str:
        return _positive_duration(value, "the quiet period")

    @field_validator("ban_sources")
    @classmethod
    def _check_source_names(
        cls, value: list[BanSourceSettings]
    ) -> list[BanSourceSettings]:
        names = [source.name for source in value]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"ban source name(s) used twice: {', '.join(doubled)}")
        return value

    @field_validator("pools")
    @classmethod
    def _check_pool_names(cls, value: dict[str, PoolSettings]) -> dict:
        for name in value:
            if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", name):
                raise ValueError(f"pool name {name[:40]!r} is not valid")
        return value

    @property
    def quiet(self) -> Duration:
        """Return the quiet period as a calendar duration."""
        return Duration.parse(self.quiet_period)

    def database_url(self) -> str:
        """Return the configured database URL or the embedded default."""
        return self.database or default_database_url()


def load_settings(config: Path | None = None, database: str | None = None) -> Settings:
    """Read the site configuration; raise ConfigError naming file and key."""
    path, explicit = _config_path(config)
    read = explicit or path.exists()
    data = _read_yaml(path) if read else {}
    url, origin = _database_override(database)
    if url is not None:
        problem = database_url_problem(url)
        if problem is not None:
            raise ConfigError(f"{origin}: {problem}.")
        data["database"] = url
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from None
    return settings.model_copy(update={"source": str(path) if read else "(defaults)"})


def _database_override(database: str | None) -> tuple[str | None, str]:
    """Return the URL given outside the file, and where it came from."""
    if database:
        return database, "--database"
    if os.environ.get("POOLMGR_DATABASE_URL"):
        return os.environ["POOLMGR_DATABASE_URL"], "POOLMGR_DATABASE_URL"
    return None, ""


def _config_path(config: Path | None) -> tuple[Path, bool]:
    if config is not None:
        return config, True
    if os.environ.get("POOLMGR_CONFIG"):
        return Path(os.environ["POOLMGR_CONFIG"]), True
    return DEFAULT_CONFIG, False


def _read_yaml(path: Path) -> dict[str, Any]:
    document, problems = read_document(path, "configuration")
    if problems:
        raise ConfigError(
            f"{path}: "
            + "; ".join(
                f"line {line}: {message}" if line else message
                for line, message in problems
            )
            + "."
        )
    if document is None:
        return {}
    if not isinstance(document.data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of keys.")
    return document.data


def _describe(path: Path, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{key}: {message}")
    return f"{path}: " + "; ".join(problems)
