"""CLI fixtures: run ``poolmgr`` in-process with a site config in tmp_path."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from poolmgr.cli import main

CARD = """\
format: poolmgr-vocard/1
vo: atlas
voms_servers: []
fqans:
  - fqan: /atlas
  - fqan: /atlas/Role=production
extensions:
  poolmgr:
    pools:
      - name: atlasprd
        serves: [/atlas/Role=production]
        accounts: 2
      - name: atlas
        serves: [/atlas]
        accounts: 3
"""


@dataclass
class Result:
    """What one CLI run printed and returned."""

    code: int
    out: str
    err: str


def write_site(tmp_path: Path, extra: str = "syslog:\n  enabled: false\n") -> Path:
    """Write the VO card and a site configuration ending in extra; return it."""
    cards = tmp_path / "vocards"
    cards.mkdir()
    (cards / "atlas.yaml").write_text(CARD)
    config = tmp_path / "poolmgr.yaml"
    config.write_text(
        f"database: sqlite:///{tmp_path / 'cli.db'}\n"
        f"vocards: {cards}\n"
        "check_nss: false\n"
        "last_use_resolution: 0\n" + extra
    )
    return config


def edit_site(tmp_path: Path, old: str, new: str) -> None:
    """Replace old by new in the site configuration write_site wrote."""
    config = tmp_path / "poolmgr.yaml"
    text = config.read_text()
    assert old in text, f"the test configuration lacks {old!r}"
    config.write_text(text.replace(old, new))


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run poolmgr with a fresh SQLite database and VO card directory."""
    config = write_site(tmp_path)

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
