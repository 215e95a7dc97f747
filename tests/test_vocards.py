"""VO cards: loading, line-precise problems, cross-card checks, shipped cards."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from poolmgr.errors import VoCardError
from poolmgr.fqan import parse_fqan
from poolmgr.vocards import (
    PoolDecl,
    VoCard,
    check_cards,
    load_card,
    load_cards,
    pool_rules,
)

SHIPPED = Path(__file__).resolve().parent.parent / "vocards"

# Line numbers matter: the tables below point at them.
VALID = """\
format: poolmgr-vocard/1
vo: atlas
voms_servers:
  - host: voms.cern.ch
    port: 15001
    dn: /DC=ch/DC=cern/OU=computers/CN=voms.cern.ch
fqans:
  - fqan: /atlas
  - fqan: /atlas/Role=production
    type: production
extensions:
  poolmgr:
    glexec: true
    pools:
      - name: atlasprd
        serves: [/atlas/Role=production]
        accounts: 20
        type: production
      - name: atlas
        serves: [/atlas, /atlas/*]
        accounts: 200
"""

POOLS = "extensions.poolmgr.pools"


def write(directory: Path, text: str, name: str = "atlas.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def card_text(vo: str, pool: str) -> str:
    return (
        f"format: poolmgr-vocard/1\nvo: {vo}\nextensions:\n  poolmgr:\n"
        f"    pools:\n      - name: {pool}\n        serves: [/{vo}]\n"
        "        accounts: 1\n"
    )


def test_valid_card_loads_with_pools_in_card_order(tmp_path: Path) -> None:
    card = load_card(write(tmp_path, VALID))

    assert card.vo == "atlas"
    assert card.glexec is True
    assert card.voms_servers[0].port == 15001
    assert card.pools == (
        PoolDecl("atlasprd", "atlas", ("/atlas/Role=production",), 20, "production"),
        PoolDecl("atlas", "atlas", ("/atlas", "/atlas/*"), 200, None),
    )
    assert check_cards(tmp_path) == []


def test_card_is_frozen(tmp_path: Path) -> None:
    card = load_card(write(tmp_path, VALID))

    with pytest.raises(ValidationError):
        card.vo = "cms"  # type: ignore[misc]


def test_optional_sections_default_to_empty(tmp_path: Path) -> None:
    card = load_card(write(tmp_path, "format: poolmgr-vocard/1\nvo: dteam\n"))

    assert (card.voms_servers, card.fqans, card.pools, card.glexec) == (
        (),
        (),
        (),
        False,
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "format: poolmgr-vocard/1",
            "format: poolmgr-vocard/2",
            "1: format: Input should be 'poolmgr-vocard/1' (got 'poolmgr-vocard/2')",
        ),
        (
            "vo: atlas",
            "vo: ATLAS",
            "2: vo: 'ATLAS' is not a valid VO name: use at most 64 lower-case "
            "letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
        ("vo: atlas\n", "", "1: vo: required key is missing"),
        ("vo: atlas\n", "vo: atlas\ncolour: red\n", "3: colour: unknown key"),
        (
            "port: 15001",
            "port: 70000",
            "5: voms_servers.0.port: Input should be less than or equal to 65535 "
            "(got 70000)",
        ),
        (
            "host: voms.cern.ch",
            "host: voms cern",
            "4: voms_servers.0.host: 'voms cern' is not a valid host name",
        ),
        (
            "dn: /DC=ch",
            "dn: DC=ch",
            "6: voms_servers.0.dn: 'DC=ch/DC=cern/OU=computers/CN=voms.cern.ch' "
            "is not a DN in slash form (/DC=.../CN=...)",
        ),
        (
            "fqan: /atlas\n",
            "fqan: atlas\n",
            "8: fqans.0.fqan: FQAN 'atlas' must start with '/'",
        ),
        (
            "fqan: /atlas\n",
            "fqan: /cms\n",
            "8: fqans.0.fqan: '/cms' does not belong to VO 'atlas'; "
            "it must start with /atlas",
        ),
        (
            "fqan: /atlas\n",
            "fqan: /atlas/Role=production/Capability=NULL\n",
            "9: fqans.1.fqan: '/atlas/Role=production' repeats fqans.0.fqan",
        ),
        (
            "type: production\n",
            "type: prod\n",
            "10: fqans.1.type: Input should be 'users', 'production', 'software', "
            "'pilot' or 'other' (got 'prod')",
        ),
        (
            "glexec: true",
            "glexec: maybe",
            "13: extensions.poolmgr.glexec: should be true or false (got 'maybe')",
        ),
        ("  poolmgr:", "  poolmrg:", "12: extensions.poolmrg: unknown key"),
        (
            "name: atlasprd",
            "name: 9prd",
            f"15: {POOLS}.0.name: '9prd' is not a valid pool name: use at most 32 "
            "lower-case letters, digits, '_' or '-', starting with a letter",
        ),
        (
            "name: atlas\n",
            "name: atlasprd\n",
            f"19: {POOLS}.1.name: pool name 'atlasprd' repeats {POOLS}.0.name",
        ),
        (
            "[/atlas/Role=production]",
            "[/atlas/Capability=x]",
            f"16: {POOLS}.0.serves.0: FQAN rule '/atlas/Capability=x' names a "
            "capability, which is never matched",
        ),
        (
            "[/atlas, /atlas/*]",
            "[/atlas, /cms/*]",
            f"20: {POOLS}.1.serves.1: '/cms/*' does not belong to VO 'atlas'; "
            "it must start with /atlas",
        ),
        (
            "[/atlas, /atlas/*]",
            "[/atlas, /atlas/Role=NULL]",
            f"20: {POOLS}.1.serves.1: rule '/atlas/Role=NULL' repeats serves.0 "
            "of this pool",
        ),
        (
            "[/atlas, /atlas/*]",
            "[]",
            f"20: {POOLS}.1.serves: a pool must serve at least one FQAN rule",
        ),
        (
            "accounts: 20",
            "accounts: -1",
            f"17: {POOLS}.0.accounts: Input should be greater than or equal to 0 "
            "(got -1)",
        ),
        (
            "accounts: 20",
            "accounts: 100001",
            f"17: {POOLS}.0.accounts: Input should be less than or equal to 100000 "
            "(got 100001)",
        ),
        (
            "accounts: 20",
            "accounts: '20'",
            f"17: {POOLS}.0.accounts: should be a whole number (got '20')",
        ),
        (
            "  - fqan: /atlas\n",
            "  - /atlas\n",
            "8: fqans.0: should be a mapping of keys (got '/atlas')",
        ),
        (
            "vo: atlas\n",
            "vo: atlas\nvo: cms\n",
            "3: vo: duplicate key 'vo' (first at line 2)",
        ),
        (
            "vo: atlas",
            "vo: !!python/object/apply:os.system [ls]",
            "2: vo: the tag 'tag:yaml.org,2002:python/object/apply:os.system' "
            "is not allowed",
        ),
        (
            "vo: atlas",
            "vo: !!python/name:os.system atlas",
            "2: vo: the value cannot be read: could not determine a constructor "
            "for the tag 'tag:yaml.org,2002:python/name:os.system'",
        ),
        (
            "extensions:",
            "extensions: !custom",
            "11: extensions: the tag '!custom' is not allowed",
        ),
        ("vo: atlas\n", "vo: atlas\n1: one\n", "3: the key 1 is not plain text"),
        (
            "vo: atlas\n",
            "vo: atlas\n<<: {description: x}\n",
            "3: merge keys (<<) are not supported",
        ),
        (
            "vo: atlas",
            "vo: [atlas",
            "3: column 13: YAML syntax error: while parsing a flow sequence, "
            "expected ',' or ']', but got ':'",
        ),
        (
            "vo: atlas\n",
            "vo: atlas\n\tdescription: x\n",
            "3: column 1: YAML syntax error: while scanning for the next token, "
            "found character '\\t' that cannot start any token",
        ),
    ],
    ids=[
        "format-version",
        "vo-name",
        "vo-missing",
        "unknown-top-key",
        "port-range",
        "host-name",
        "dn-not-slash",
        "fqan-malformed",
        "fqan-other-vo",
        "fqan-repeated-after-normalising",
        "fqan-type",
        "glexec-not-bool",
        "extension-misspelt",
        "pool-name",
        "pool-name-twice-in-card",
        "rule-malformed",
        "rule-other-vo",
        "rule-twice-in-pool",
        "serves-empty",
        "accounts-negative",
        "accounts-too-many",
        "accounts-quoted",
        "item-not-mapping",
        "duplicate-key",
        "python-tag-on-sequence",
        "python-tag-on-scalar",
        "custom-tag-on-mapping",
        "non-text-key",
        "merge-key",
        "yaml-syntax",
        "yaml-tab",
    ],
)
def test_each_problem_is_reported_at_its_line(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))

    assert check_cards(path) == [f"{path}:{expected}."]


def test_misspelt_key_reports_the_missing_and_the_unknown_key_in_line_order(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, VALID.replace("accounts: 20", "acounts: 20", 1))

    assert check_cards(path) == [
        f"{path}:15: {POOLS}.0.accounts: required key is missing.",
        f"{path}:17: {POOLS}.0.acounts: unknown key.",
    ]


def test_voms_server_listed_twice_is_reported_at_the_second(tmp_path: Path) -> None:
    second = "  - host: VOMS.cern.ch\n    port: 15001\n    dn: /DC=ch/CN=x\nfqans:\n"
    path = write(tmp_path, VALID.replace("fqans:\n", second))

    assert check_cards(path) == [
        f"{path}:7: voms_servers.1.host: VOMS.cern.ch:15001 repeats voms_servers.0."
    ]


def test_several_problems_of_one_file_are_all_reported(tmp_path: Path) -> None:
    text = VALID.replace("port: 15001", "port: 0").replace(
        "accounts: 200", "accounts: x"
    )
    path = write(tmp_path, text)

    assert check_cards(path) == [
        f"{path}:5: voms_servers.0.port: Input should be greater than or equal to 1 "
        "(got 0).",
        f"{path}:21: {POOLS}.1.accounts: should be a whole number (got 'x').",
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "1: the file is empty; a VO card needs format and vo"),
        (
            b"# only a comment\n\n",
            "1: the file is empty; a VO card needs format and vo",
        ),
        (b"- atlas\n- cms\n", "1: the top level must be a mapping, not a list"),
        (b"\n\nhello\n", "3: the top level must be a mapping, not 'hello'"),
        (b"vo: atlas\n# caf\xe9\n", "2: the file is not UTF-8 text (byte 0xe9)"),
        (
            b"vo: a\n---\nvo: b\n",
            "2: column 1: YAML syntax error: expected a single document in the "
            "stream, but found another document",
        ),
        (
            b"[" * 600 + b"]" * 600,
            "1: the document nests or repeats aliases too deeply",
        ),
    ],
    ids=[
        "empty",
        "comments-only",
        "list",
        "scalar",
        "not-utf8",
        "two-documents",
        "deep",
    ],
)
def test_whole_file_problem_is_one_line(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "atlas.yaml"
    path.write_bytes(content)

    assert check_cards(path) == [f"{path}:{expected}."]


def test_file_over_one_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "atlas.yaml"
    path.write_bytes(b"#" * (1024 * 1024 + 1))

    assert check_cards(path) == [
        f"{path}: the file is larger than 1 MiB (1048577 bytes)."
    ]


def test_alias_expansion_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 7):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    path = write(tmp_path, "\n".join(lines) + "\n")

    assert check_cards(path) == [
        f"{path}:1: the document nests or repeats aliases too deeply."
    ]


def test_alias_to_itself_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path, "format: poolmgr-vocard/1\nvo: atlas\ndescription: &d [*d]\n"
    )

    assert check_cards(path) == [
        f"{path}:3: description.0: an alias refers to itself.",
        f"{path}:3: description: should be text (got [None]).",
    ]


def test_load_card_raises_with_every_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        VALID.replace("vo: atlas", "vo: ATLAS").replace("port: 15001", "port: x"),
    )

    with pytest.raises(VoCardError) as info:
        load_card(path)

    lines = str(info.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:2", f"{path}:5"]


def test_direct_validation_still_checks_the_vo_of_every_rule() -> None:
    data = {
        "format": "poolmgr-vocard/1",
        "vo": "atlas",
        "extensions": {
            "poolmgr": {"pools": [{"name": "x", "serves": ["/cms"], "accounts": 1}]}
        },
    }

    with pytest.raises(ValidationError, match=r"pools\.0\.serves\.0: '/cms' does not"):
        VoCard.model_validate(data)


class TestDirectories:
    def test_cards_load_in_file_name_order(self, tmp_path: Path) -> None:
        write(tmp_path, card_text("cms", "cms"), "b-cms.yaml")
        write(tmp_path, card_text("atlas", "atlas"), "a-atlas.yml")

        assert [card.vo for card in load_cards(tmp_path)] == ["atlas", "cms"]

    def test_other_files_and_hidden_files_are_ignored(self, tmp_path: Path) -> None:
        write(tmp_path, card_text("atlas", "atlas"))
        write(tmp_path, "not yaml: [", "README.txt")
        write(tmp_path, "not yaml: [", ".#atlas.yaml")

        assert check_cards(tmp_path) == []

    def test_problems_of_all_files_are_reported(self, tmp_path: Path) -> None:
        bad_a = write(tmp_path, card_text("atlas", "Atlas"), "atlas.yaml")
        bad_b = write(tmp_path, "", "cms.yaml")

        assert check_cards(tmp_path) == [
            f"{bad_a}:6: {POOLS}.0.name: 'Atlas' is not a valid pool name: use at "
            "most 32 lower-case letters, digits, '_' or '-', starting with a letter.",
            f"{bad_b}:1: the file is empty; a VO card needs format and vo.",
        ]

    def test_pool_name_in_two_cards_is_reported_at_the_second(
        self, tmp_path: Path
    ) -> None:
        first = write(tmp_path, card_text("atlas", "shared"), "atlas.yaml")
        second = write(tmp_path, card_text("cms", "shared"), "cms.yaml")

        assert check_cards(tmp_path) == [
            f"{second}:6: {POOLS}.0.name: pool name 'shared' is already declared "
            f"at {first}:6."
        ]

    def test_vo_in_two_cards_is_reported(self, tmp_path: Path) -> None:
        first = write(tmp_path, card_text("atlas", "atlas"), "atlas.yaml")
        second = write(tmp_path, card_text("atlas", "atlas2"), "atlas2.yaml")

        assert check_cards(tmp_path) == [
            f"{second}:2: vo: VO 'atlas' is already defined at {first}:2."
        ]

    def test_a_card_with_problems_still_counts_for_names_declared_twice(
        self, tmp_path: Path
    ) -> None:
        """The second atlas card has a bad account count: that, the VO it
        defines again and the pool name it reuses come out in one run."""
        first = write(tmp_path, card_text("atlas", "shared"), "atlas.yaml")
        broken = card_text("atlas", "shared").replace("accounts: 1", "accounts: -1")
        second = write(tmp_path, broken, "atlas2.yaml")

        problems = check_cards(tmp_path)
        assert len(problems) == 3, problems
        assert problems[0].startswith(f"{second}:8: {POOLS}.0.accounts: ")
        assert problems[1:] == [
            f"{second}:2: vo: VO 'atlas' is already defined at {first}:2.",
            f"{second}:6: {POOLS}.0.name: pool name 'shared' is already declared "
            f"at {first}:6.",
        ]

    def test_load_cards_raises_on_a_cross_card_problem(self, tmp_path: Path) -> None:
        write(tmp_path, card_text("atlas", "shared"), "atlas.yaml")
        write(tmp_path, card_text("cms", "shared"), "cms.yaml")

        with pytest.raises(VoCardError, match="is already declared"):
            load_cards(tmp_path)

    def test_empty_directory_is_a_problem(self, tmp_path: Path) -> None:
        assert check_cards(tmp_path) == [
            f"{tmp_path}: the directory holds no VO card (*.yaml, *.yml)."
        ]

    def test_missing_path_is_a_problem(self, tmp_path: Path) -> None:
        assert check_cards(tmp_path / "nope") == [
            f"{tmp_path / 'nope'}: no such file or directory."
        ]


def test_pool_rules_follow_file_then_pool_then_serves_order(tmp_path: Path) -> None:
    write(tmp_path, VALID, "a.yaml")
    write(tmp_path, card_text("cms", "cms"), "b.yaml")

    rules = pool_rules(load_cards(tmp_path))

    assert [(pool, rule.text) for pool, rule in rules] == [
        ("atlasprd", "/atlas/Role=production"),
        ("atlas", "/atlas"),
        ("atlas", "/atlas/*"),
        ("cms", "/cms"),
    ]


@pytest.fixture(scope="module")
def shipped() -> list[VoCard]:
    return load_cards(SHIPPED)


class TestShippedCards:
    def test_they_pass_the_checker(self) -> None:
        assert check_cards(SHIPPED) == []

    def test_they_cover_the_six_vos(self, shipped: list[VoCard]) -> None:
        vos = [card.vo for card in shipped]

        assert vos == ["alice", "atlas", "cms", "dteam", "lhcb", "ops"]

    def test_glexec_is_set_for_the_vos_that_run_it(self, shipped: list[VoCard]) -> None:
        glexec = {card.vo for card in shipped if card.glexec}

        assert glexec == {"atlas", "cms", "lhcb", "ops"}

    def test_every_pool_is_sized(self, shipped: list[VoCard]) -> None:
        empty = [p.name for c in shipped for p in c.pools if not p.accounts]

        assert empty == []

    @pytest.mark.parametrize(
        ("fqan", "pool"),
        [
            ("/atlas", "atlas"),
            ("/atlas/de", "atlas"),
            ("/atlas/Role=production", "atlasprd"),
            ("/atlas/Role=software", "atlassgm"),
            ("/atlas/Role=pilot", "atlasplt"),
            ("/cms/dcms", "cms"),
            ("/cms/Role=cmsprod", "cmsprd"),
            ("/cms/Role=cmssoft", "cmssgm"),
            ("/lhcb/Role=pilot", "lhcbplt"),
            ("/lhcb/Role=user", "lhcb"),
            ("/alice/Role=lcgadmin", "alicesgm"),
            ("/dteam/Role=production", "dteamprd"),
            ("/ops/Role=pilot", "opsplt"),
        ],
        ids=lambda value: value,
    )
    def test_first_matching_rule_picks_the_expected_pool(
        self, shipped: list[VoCard], fqan: str, pool: str
    ) -> None:
        parsed, _ = parse_fqan(fqan)

        first = next(name for name, rule in pool_rules(shipped) if rule.matches(parsed))

        assert first == pool

    def test_no_rule_is_shadowed_by_an_earlier_rule_of_another_pool(
        self, shipped: list[VoCard]
    ) -> None:
        rules = pool_rules(shipped)
        shadowed = []
        for index, (pool, rule) in enumerate(rules):
            if rule.subtree:
                continue
            fqan, _ = parse_fqan(rule.text)
            first = next(name for name, r in rules[: index + 1] if r.matches(fqan))
            if first != pool:
                shadowed.append((rule.text, pool, first))

        assert shadowed == []
