"""The README's quick-start transcript matches what the script prints."""

import os
import re
import subprocess
import sys
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
