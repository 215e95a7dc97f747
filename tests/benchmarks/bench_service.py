"""Start and stop ``poolmgr serve`` for a benchmark database."""

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

SERVE = [sys.executable, "-c", "from poolmgr.cli import run; run()"]


def write_config(path: Path, url: str, **service: object) -> Path:
    """Write a site configuration for url: no NSS check, no syslog."""
    config = {
        "database": url,
        "check_nss": False,
        "syslog": {"enabled": False},
        "service": service,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def serving(config: Path, socket_path: Path, timeout: float = 30) -> Iterator[Path]:
    """Run ``poolmgr serve`` on socket_path until the block ends (then SIGTERM)."""
    log = socket_path.with_suffix(".log")
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*SERVE, "--config", str(config), "serve", "--socket", str(socket_path)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:
        _wait_listening(process, socket_path, log, timeout)
        yield socket_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(
    process: subprocess.Popen[bytes], path: Path, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"poolmgr serve did not listen on {path}: "
                f"{log.read_text(errors='replace')[-800:]}"
            )
        time.sleep(0.02)
