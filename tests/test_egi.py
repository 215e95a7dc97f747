"""EGI VO ID card import: both XML formats, proposals, sizes, skips, writing."""

import os
from pathlib import Path

import pytest

from poolmgr.egi import ImportReport, classify, import_egi, pool_stem
from poolmgr.errors import BadInputError, PoolmgrError
from poolmgr.vocards import PoolDecl, check_cards, load_card

DATA = Path(__file__).resolve().parent / "data" / "egi"
IDCARD = DATA / "idcard.xml"
LEGACY = DATA / "legacy.xml"
DUMP = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "egi-vo-id-cards-2011.xml"
)


def pools(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    return [(p.name, p.serves, p.accounts) for p in load_card(path).pools]


@pytest.mark.skipif(
    not DUMP.exists(), reason="the 2011 EGI dump is not beside the repo"
)
def test_whole_2011_dump_imports_and_passes_the_checker(tmp_path: Path) -> None:
    report = import_egi(DUMP, tmp_path)

    assert (report.vos_read, len(report.written), report.rejected) == (247, 247, [])
    assert report.input_format == "legacy CIC dump"
    assert check_cards(tmp_path) == []
    assert report.skipped["camont.gridpp.ac.uk"] == [
        "FQAN '/camont/Role=lcgadmin': it does not start with /camont.gridpp.ac.uk"
    ]
    assert pools(tmp_path / "atlas.yaml") == [
        ("atlasprd", ("/atlas/Role=production",), 0),
        ("atlassgm", ("/atlas/Role=software", "/atlas/Role=lcgadmin"), 0),
        ("atlasplt", ("/atlas/Role=pilot",), 0),
        ("atlas", ("/atlas", "/atlas/*"), 0),
    ]


class TestIdCardFormat:
    @pytest.fixture
    def report(self, tmp_path: Path) -> ImportReport:
        return import_egi(IDCARD, tmp_path)

    def test_writes_a_card_per_valid_vo(self, report: ImportReport, tmp_path: Path):
        assert report.input_format == "IDCard"
        assert report.vos_read == 3
        assert [p.name for p in report.written] == [
            "vo.example.org.yaml",
            "voexample.org.yaml",
        ]
        assert report.rejected == [("Bad VO!", "the name is not a valid VO name")]
        assert check_cards(tmp_path) == []

    def test_keeps_servers_and_canonical_fqans(self, report: ImportReport, tmp_path):
        card = load_card(tmp_path / "vo.example.org.yaml")

        assert card.description == "Example VO for poolmgr tests."
        assert [(s.host, s.port, s.dn) for s in card.voms_servers] == [
            (
                "voms1.example.org",
                15000,
                "/DC=org/DC=example/OU=Services/CN=voms1.example.org",
            )
        ]
        assert [(f.fqan, f.type) for f in card.fqans] == [
            ("/vo.example.org", "users"),
            ("/vo.example.org/Role=production", "production"),
            ("/vo.example.org/Role=lcgadmin", None),
            ("/vo.example.org/Role=pilot", "pilot"),
            ("/vo.example.org/Role=VO-Admin", None),
            ("/vo.example.org/lab", "users"),
            ("/vo.example.org/archive", None),
        ]

    def test_proposes_role_pools_before_the_users_pool(
        self, report: ImportReport, tmp_path: Path
    ) -> None:
        assert load_card(tmp_path / "vo.example.org.yaml").pools == (
            PoolDecl(
                "voexampleorgprd",
                "vo.example.org",
                ("/vo.example.org/Role=production",),
                0,
                "production",
            ),
            PoolDecl(
                "voexampleorgsgm",
                "vo.example.org",
                ("/vo.example.org/Role=lcgadmin",),
                0,
                "software",
            ),
            PoolDecl(
                "voexampleorgplt",
                "vo.example.org",
                ("/vo.example.org/Role=pilot",),
                0,
                "pilot",
            ),
            PoolDecl(
                "voexampleorg",
                "vo.example.org",
                ("/vo.example.org", "/vo.example.org/*"),
                0,
                "users",
            ),
        )

    def test_colliding_stem_gets_a_number(self, report: ImportReport, tmp_path):
        assert pools(tmp_path / "voexample.org.yaml") == [
            ("voexampleorg2sgm", ("/voexample.org/Role=SoftwareManager",), 0),
            ("voexampleorg2", ("/voexample.org", "/voexample.org/*"), 0),
        ]

    def test_reports_every_skipped_item(self, report: ImportReport) -> None:
        assert report.skipped == {
            "vo.example.org": [
                "group type 'Curator' of /vo.example.org/archive: it is not known",
                "FQAN '/vo.example.org/Role=': FQAN '/vo.example.org/Role=' has an "
                "empty or invalid Role value ''",
                "FQAN '/other.example.org/Role=production': it does not start with "
                "/vo.example.org",
                "FQAN '/vo.example.org/Role=NULL': it repeats /vo.example.org",
                "VOMS server (no host):15000: it has no host name",
                "VOMS server voms2.example.org:none: the port is not a number from "
                "1 to 65535",
                "VOMS server VOMS1.example.org:15000: it is listed twice",
                "membership service 'Perun': it is not a VOMS server",
            ]
        }

    def test_summary_names_counts_and_skips(self, report: ImportReport, tmp_path):
        lines = str(report).splitlines()

        assert lines[:3] == [
            f"Read 3 VO(s) from {IDCARD} (IDCard).",
            f"Wrote 2 VO card(s) to {tmp_path}.",
            "Rejected VO 'Bad VO!': the name is not a valid VO name.",
        ]
        assert lines[3] == (
            "vo.example.org: skipped group type 'Curator' of /vo.example.org/archive:"
            " it is not known."
        )
        assert len(lines) == 11


class TestLegacyFormat:
    def test_reads_iso_8859_1_and_reports_skips(self, tmp_path: Path) -> None:
        report = import_egi(LEGACY, tmp_path)

        card = load_card(tmp_path / "fisica.example.org.yaml")
        assert card.description == "Física de partículas (example)"
        assert [s.host for s in card.voms_servers] == ["voms.example.org"]
        assert report.rejected == [
            ("quiet.example.org", "it appears twice in the input; the first is kept")
        ]
        assert report.skipped == {
            "fisica.example.org": [
                "FQAN 'fisica.example.org/Role=lcgadmin': FQAN "
                "'fisica.example.org/Role=lcgadmin' must start with '/'",
                "VOMS server (no host):15010: it has no host name",
                "VOMS server voms3.example.org:15010: the DN "
                "'CN=voms3.example.org,DC=example,DC=org' is not in slash form",
                "VOMS server voms.example.org:15010: it is listed twice",
            ]
        }
        assert check_cards(tmp_path) == []

    def test_first_of_two_cards_with_one_name_is_kept(self, tmp_path: Path) -> None:
        import_egi(LEGACY, tmp_path)

        assert load_card(tmp_path / "quiet.example.org.yaml").description is None

    def test_name_starting_with_a_digit_gets_a_letter_stem(self, tmp_path: Path):
        import_egi(LEGACY, tmp_path)

        assert [name for name, _, _ in pools(tmp_path / "3d.example.org.yaml")] == [
            "vo3dexampleorgprd",
            "vo3dexampleorg",
        ]

    def test_user_roles_join_the_users_pool(self, tmp_path: Path) -> None:
        import_egi(LEGACY, tmp_path)

        assert pools(tmp_path / "fisica.example.org.yaml")[-1] == (
            "fisicaexampleorg",
            (
                "/fisica.example.org",
                "/fisica.example.org/*",
                "/fisica.example.org/Role=user",
            ),
            0,
        )


class TestSizes:
    def test_none_writes_zero_accounts_and_says_so(self, tmp_path: Path) -> None:
        import_egi(LEGACY, tmp_path)

        path = tmp_path / "fisica.example.org.yaml"
        assert {accounts for _, _, accounts in pools(path)} == {0}
        assert "# accounts: 0 means not sized yet" in path.read_text()

    def test_members_sizes_pools_from_the_member_count(self, tmp_path: Path) -> None:
        report = import_egi(LEGACY, tmp_path, sizes="members")

        sizes = [(n, a) for n, _, a in pools(tmp_path / "fisica.example.org.yaml")]
        assert sizes == [
            ("fisicaexampleorgprd", 10),
            ("fisicaexampleorgsgm", 2),
            ("fisicaexampleorgplt", 10),
            ("fisicaexampleorg", 150),
        ]
        assert [a for _, _, a in pools(tmp_path / "3d.example.org.yaml")] == [1, 1]
        assert report.skipped["quiet.example.org"] == [
            "account sizes: the card publishes no member count"
        ]

    def test_unknown_mode_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(BadInputError, match="'guess'"):
            import_egi(LEGACY, tmp_path, sizes="guess")


class TestWriting:
    def test_existing_file_is_kept_unless_overwrite(self, tmp_path: Path) -> None:
        target = tmp_path / "quiet.example.org.yaml"
        target.write_text("# the site's own card\n")

        report = import_egi(LEGACY, tmp_path)
        assert report.kept == [target]
        assert target.read_text() == "# the site's own card\n"

        report = import_egi(LEGACY, tmp_path, overwrite=True)
        assert target in report.written
        assert load_card(target).vo == "quiet.example.org"

    def test_leaves_no_temporary_file(self, tmp_path: Path) -> None:
        import_egi(IDCARD, tmp_path)
        import_egi(IDCARD, tmp_path, overwrite=True)

        assert sorted(os.listdir(tmp_path)) == [
            "vo.example.org.yaml",
            "voexample.org.yaml",
        ]

    def test_pool_names_of_other_cards_are_avoided(self, tmp_path: Path) -> None:
        (tmp_path / "site.yaml").write_text(
            "format: poolmgr-vocard/1\nvo: site\nextensions:\n  poolmgr:\n"
            "    pools:\n      - name: voexampleorg\n        serves: [/site]\n"
            "        accounts: 1\n"
        )

        import_egi(IDCARD, tmp_path)

        assert pools(tmp_path / "vo.example.org.yaml")[-1][0] == "voexampleorg2"
        assert pools(tmp_path / "voexample.org.yaml")[-1][0] == "voexampleorg3"
        assert check_cards(tmp_path) == []

    def test_vo_defined_by_a_card_of_another_name_is_rejected(self, tmp_path: Path):
        (tmp_path / "mine.yaml").write_text(
            "format: poolmgr-vocard/1\nvo: voexample.org\n"
        )

        report = import_egi(IDCARD, tmp_path)

        assert ("voexample.org", "mine.yaml already defines it") in report.rejected
        assert check_cards(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"<VOs><VO Name='a'>", "not well-formed XML"),
        (b"<root><nothing/></root>", "no <VO> or <IDCard> element"),
        (
            b'<?xml version="1.0"?><!DOCTYPE VOs [<!ENTITY a "aaaa">]>'
            b"<VOs><VO Name='&a;'/></VOs>",
            "refused unsafe XML",
        ),
    ],
    ids=["malformed", "no-vo", "entities"],
)
def test_bad_xml_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    source = tmp_path / "in.xml"
    source.write_bytes(content)

    with pytest.raises(BadInputError, match=match):
        import_egi(source, tmp_path / "out")


def test_output_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")

    with pytest.raises(PoolmgrError, match="cannot create the directory"):
        import_egi(IDCARD, tmp_path / "out")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="cannot read the file"):
        import_egi(tmp_path / "absent.xml", tmp_path / "out")


@pytest.mark.parametrize(
    ("fqan", "group_type", "kind"),
    [
        ("/vo/Role=production", None, "production"),
        ("/vo/Role=ProductionManager", None, "production"),
        ("/vo/Role=cmsprod", None, "production"),
        ("/vo/Role=lcgadmin", None, "software"),
        ("/vo/Role=SoftwareManager", None, "software"),
        ("/vo/Role=swadmin", None, "software"),
        ("/vo/Role=SW-Manager", None, "software"),
        ("/vo/Role=lhcbsgm", None, "software"),
        ("/vo/Role=pilot", None, "pilot"),
        ("/vo/Role=user", None, "users"),
        ("/vo/Role=VO-Admin", None, None),
        ("/vo/Role=VO-Admin", "production", "production"),
        ("/vo/lab", None, None),
        ("/vo/integration", "pilot", "pilot"),
    ],
    ids=lambda value: str(value),
)
def test_classify_reads_the_role_then_the_group_type(
    fqan: str, group_type: str | None, kind: str | None
) -> None:
    assert classify(fqan, group_type) == kind


@pytest.mark.parametrize(
    ("vo", "stem"),
    [
        ("atlas", "atlas"),
        ("vo.example.org", "voexampleorg"),
        ("vo-cht.promes.cnrs.fr", "vo-chtpromescnrsfr"),
        ("3d.example.org", "vo3dexampleorg"),
        ("d4science.research-infrastructures.eu", "d4scienceresearch-infrastruct"),
    ],
    ids=["plain", "dotted", "hyphen", "digit-first", "truncated"],
)
def test_pool_stem_is_valid_and_leaves_room_for_a_suffix(vo: str, stem: str) -> None:
    assert pool_stem(vo) == stem
    assert len(stem + "prd") <= 32
