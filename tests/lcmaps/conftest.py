"""Fixtures for driving the real LCMAPS library with the poolmgr plugin."""

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
from lcmaps_harness import (
    LcmapsBuild,
    StartServer,
    build,
    find_missing_tools,
    is_lcmaps_installed,
    make_short_dir,
    running_server,
)

REQUIRE_ENV = "POOLMGR_REQUIRE_LCMAPS"


@pytest.fixture(scope="session")
def lcmaps_build(tmp_path_factory: pytest.TempPathFactory) -> LcmapsBuild:
    """The plugin and driver, built once; skipped only if LCMAPS is absent."""
    hint = "run contrib/lcmaps-poolmgr/install-build-deps.sh"
    if not is_lcmaps_installed():
        reason = f"liblcmaps and its headers are not installed; {hint}"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but {reason}")
        pytest.skip(reason)
    missing = find_missing_tools()
    if missing:
        pytest.fail(f"LCMAPS is installed but {', '.join(missing)} is missing; {hint}")

    try:
        return build(tmp_path_factory.mktemp("lcmaps-build"))
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short-path directory for one test, removed afterwards."""
    path = make_short_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start a server command on a Unix socket; every server stops after the test.

    Call it as ``start_server(command, socket_path, env=None)``; it returns the
    socket path once the server accepts connections.
    """
    with ExitStack() as stack:

        def start(
            command: Sequence[str],
            socket_path: Path,
            env: Mapping[str, str] | None = None,
        ) -> Path:
            stack.enter_context(running_server(command, socket_path, env=env))
            return socket_path

        yield start
