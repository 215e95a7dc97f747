"""The README's transcripts match what poolmgr prints and answers."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _transcript() -> list[str]:
    text = (TOP / "README.md").read_text()
    start = text.index("```console\n$ poolmgr sync")
    block = text[start:].split("\n", 1)[1].split("```", 1)[0]
    return block.rstrip("\n").split("\n")


def test_quickstart_output_matches_the_readme(tmp_path):
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    result = subprocess.run(
        [str(TOP / "contrib/examples/quickstart.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    actual = [STAMP.sub("<time>", line) for line in result.stdout.split("\n")]
    position = 0
    for expected in _transcript():
        if expected == "  ...":
            continue
        wanted = STAMP.sub("<time>", expected)
        assert wanted in actual[position:], f"README line not printed: {expected!r}"
        position = actual.index(wanted, position) + 1


def test_the_readme_vo_card_example_passes_the_checker(tmp_path):
    from poolmgr.vocards import check_cards

    text = (TOP / "README.md").read_text()
    start = text.index("format: poolmgr-vocard/1")
    card = tmp_path / "atlas.yaml"
    card.write_text(text[start : text.index("```", start)])
    assert check_cards(card) == []


def _protocol_session() -> tuple[list[bytes], list[bytes]]:
    text = (TOP / "README.md").read_text()
    start = text.index("```text\n> MAP")
    block = text[start:].split("\n", 1)[1].split("```", 1)[0]
    lines = [line.replace("\\t", "\t").encode() + b"\n" for line in block.split("\n")]
    sent = [line[2:] for line in lines if line.startswith(b"> ")]
    received = [line[2:] for line in lines if line.startswith(b"< ")]
    return sent, received


def test_the_readme_protocol_session_is_what_the_service_answers(
    sqlite_engine, tmp_path
):
    from poolmgr.leases import Mapper
    from poolmgr.service import Handler
    from tests.conftest import make_settings
    from tests.factories import pool, sync
    from tests.test_service import exchange, running

    site = make_settings(
        pools={
            "atlas": {"first_uid": 20000, "gid": 2000, "group": "atlas"},
            "atlasprd": {"first_uid": 21000, "gid": 2100, "group": "atlasprd"},
        }
    )
    sync(
        sqlite_engine,
        site,
        [
            pool("atlasprd", "atlas", 2, "/atlas/Role=production"),
            pool("atlas", "atlas", 4, "/atlas"),
        ],
    )
    sent, received = _protocol_session()
    path = Path(tempfile.mkdtemp(prefix="pm-readme-", dir="/tmp")) / "s.sock"
    try:
        with running(Handler(Mapper(sqlite_engine, site), workers=2), path):
            replies = exchange(path, *sent)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    assert len(sent) == len(received) > 0
    assert replies == received, "the README's protocol session is out of date"
