"""Commands of the mapping service: serve, and query for admins and tests."""

from pathlib import Path
from typing import Annotated

import typer

from poolmgr import errors, protocol
from poolmgr.cli.state import state
from poolmgr.errors import INTERNAL_ERROR_EXIT, PoolmgrError
from poolmgr.service import send_request, serve

SERVE_EPILOG = """Runs in the foreground until SIGTERM or SIGINT, then exits 0.
Exit codes: 1 the socket cannot be created (its directory is missing or not
writable); 2 bad option; 8 database unavailable at start; 10 bad
configuration (unknown group); 12 the socket path is taken by a live service
or is not a socket."""

QUERY_EPILOG = """Prints the service's OK reply line. Exit codes as for map:
0 mapped; 1 service unreachable or other failure; 2 bad input or request; 3
no pool matches; 4 pool exhausted; 5 banned; 6 ban list unavailable; 7 no
lease (--verify); 8 database unavailable; 9 contention; 12 this user may
not use the service (REFUSED); 70 internal error in the service."""

SocketOption = Annotated[
    Path | None,
    typer.Option("--socket", help="Socket path (default: service.socket)."),
]


def register(app: typer.Typer) -> None:
    """Add the service commands to app."""
    app.command("serve", epilog=SERVE_EPILOG)(serve_command)
    app.command("query", epilog=QUERY_EPILOG)(query_command)


def serve_command(
    socket_path: SocketOption = None,
    group: Annotated[
        str | None,
        typer.Option(help="Group whose members may connect (default: service.group)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="Mappings run at once (service.workers)."),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Worker processes (service.processes)."),
    ] = None,
) -> None:
    """Run the mapping service on a Unix socket (the LCMAPS plugin's peer)."""
    settings = state.settings()
    overrides = {
        key: value
        for key, value in (
            ("socket", socket_path),
            ("group", group),
            ("workers", workers),
            ("processes", processes),
        )
        if value is not None
    }
    options = settings.service.model_validate(
        {**settings.service.model_dump(), **overrides}
    )
    settings = settings.model_copy(update={"service": options})
    serve(settings, state.engine())


def query_command(
    dn: Annotated[
        str | None, typer.Argument(help="Subject DN (omit with --ping).")
    ] = None,
    fqan: Annotated[
        list[str] | None,
        typer.Option("--fqan", "-f", help="FQAN, repeatable; the first is primary."),
    ] = None,
    socket_path: SocketOption = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Only confirm an existing lease.")
    ] = False,
    ping: Annotated[
        bool, typer.Option("--ping", help="Send PING instead of a mapping.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds to wait for the reply.")
    ] = 10.0,
) -> None:
    """Send one request to the mapping service and print its reply."""
    if ping:
        request = protocol.encode_request("PING")
    elif dn:
        verb = "VERIFY" if verify else "MAP"
        request = protocol.encode_request(verb, dn, tuple(fqan or ()))
    else:
        raise protocol.BadRequestError("Give a DN, or --ping.")

    path = socket_path or state.settings().service.socket
    reply = protocol.parse_reply(send_request(path, request, timeout))
    if not reply.ok:
        raise _refusal(reply.fields[0], reply.fields[1])
    typer.echo("\t".join(reply.fields))


def _refusal(code: str, message: str) -> PoolmgrError:
    """Return the error whose wire code is code, so exit codes match map."""
    if code == "INTERNAL":
        error = PoolmgrError(f"{code}: {message}")
        error.exit_code = INTERNAL_ERROR_EXIT
        return error
    for cls in _error_classes():
        if cls.code == code:
            return cls(f"{code}: {message}")
    return PoolmgrError(f"{code}: {message}")


def _error_classes() -> list[type[PoolmgrError]]:
    classes: list[type[PoolmgrError]] = [protocol.BadRequestError]
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, PoolmgrError):
            classes.append(value)
    return classes
