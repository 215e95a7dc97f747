"""poolmgr's gridmapdirs against the stock LCMAPS pool-account plugins.

Export: the real ``lcmaps_poolaccount`` (DN only) and
``lcmaps_voms_poolaccount`` plugins must find every exported lease and map
the person to the account poolmgr gave them, creating no lease of their own.
Import: leases those plugins created must land on the same accounts, with
the link's mtime as last use.

Pool accounts must resolve through NSS for LCMAPS: each driver run happens
in a private mount namespace with passwd and group copies (holding poolmgr's
own ``poolmgr export passwd``/``group`` lines) bind-mounted over /etc.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from lcmaps_harness import (
    DEBIAN_MODULES,
    DUMMY_GOOD,
    DriverResult,
    LcmapsBuild,
    namespace_problem,
    open_lease_uses,
    run_driver,
    run_poolmgr,
    with_accounts,
    write_poolmgr_config,
)

pytestmark = pytest.mark.lcmaps

STOCK_MODULES = {
    "lcmaps_poolaccount.mod": "lcmaps-plugins-basic-poolaccount",
    "lcmaps_voms_localgroup.mod": "lcmaps-plugins-voms",
    "lcmaps_voms_poolaccount.mod": "lcmaps-plugins-voms",
}

CARDS = {
    "atlas": """\
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
        accounts: 3
      - name: atlas
        serves: [/atlas]
        accounts: 4
""",
    "dteam": """\
format: poolmgr-vocard/1
vo: dteam
voms_servers: []
fqans:
  - fqan: /dteam
extensions:
  poolmgr:
    pools:
      - name: dteam
        serves: [/dteam]
        accounts: 8
""",
}

TEST_DC = "/DC=org/DC=poolmgr-test"
ANN = f"{TEST_DC}/CN=Ann Example"
ODD = f"{TEST_DC}/O=Grid-Site.example:8443/CN=ann.other@example.org"
JOSE_UTF8 = f"{TEST_DC}/CN=José Müller"
# The same DN as OpenSSL prints it from a certificate: how LCMAPS gets it.
JOSE_CERT_FORM = f"{TEST_DC}/CN=Jos\\xC3\\xA9 M\\xC3\\xBCller"
CAROL = f"{TEST_DC}/CN=Carol Production"
DAVE = f"{TEST_DC}/CN=Dave User"
# OpenSSL 3 prints the attributes of one multi-valued RDN joined by "+".
MULTI = f"{TEST_DC}/CN=Multi Valued+UID=mvalued"
PROD = ("/atlas/Role=production", "/atlas")
PLAIN = ("/atlas",)

# (DN poolmgr maps, DN LCMAPS is given, FQANs); no FQANs: the DN-only pool.
PEOPLE = {
    "ann": (ANN, ANN, ()),
    "punctuation": (ODD, ODD, ()),
    "jose-cert-form": (JOSE_UTF8, JOSE_CERT_FORM, ()),
    "multi-valued-rdn": (MULTI, MULTI, ()),
    "carol-prod": (CAROL, CAROL, PROD),
    "carol": (CAROL, CAROL, PLAIN),
    "dave": (DAVE, DAVE, PLAIN),
}

# The grid-mapfile is matched with fnmatch: the DN line covers every test
# DN (including the backslash escapes of the certificate form); the FQAN
# lines choose the pool for lcmaps_voms_poolaccount.
GRID_MAPFILE = f"""\
"/atlas/Role=production" .atlasprd
"/atlas" .atlas
"{TEST_DC}/*" .dteam
"""
GROUP_MAPFILE = """\
"/atlas/Role=production" atlasprd
"/atlas" atlas
"""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SYNCED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def stock_lcmaps(lcmaps_build: LcmapsBuild) -> LcmapsBuild:
    """The build, once the stock plugins and mount namespaces are available."""
    problems = [
        f"{DEBIAN_MODULES / name} ({package})"
        for name, package in STOCK_MODULES.items()
        if not (DEBIAN_MODULES / name).exists()
    ]
    problem = namespace_problem()
    if problem is not None:
        problems.append(problem)
    if problems:
        reason = f"missing for the gridmapdir tests: {'; '.join(problems)}"
        if os.environ.get("POOLMGR_REQUIRE_LCMAPS"):
            pytest.fail(reason)
        pytest.skip(reason)
    return lcmaps_build


@dataclass
class GridSite:
    """A poolmgr site, a gridmapdir, and LCMAPS configured with the stock plugins."""

    config: Path
    gridmapdir: Path
    db: Path
    lcmaps: LcmapsBuild
    poolmgr_answers: dict[tuple[str, tuple[str, ...]], dict] = field(
        default_factory=dict
    )

    def lcmaps_map(self, dn: str, fqans: Sequence[str]) -> DriverResult:
        """Map through lcmaps_voms_poolaccount with FQANs, else lcmaps_poolaccount."""
        policy = "voms_pool" if fqans else "dn_pool"
        return run_driver(self.lcmaps, self.db, ["-p", policy, dn, *fqans])

    def links(self) -> dict[str, str]:
        """Every lease name in the gridmapdir → the account file it is linked to."""
        accounts: dict[int, str] = {}
        leases: dict[str, int] = {}
        for entry in os.scandir(self.gridmapdir):
            inode = entry.inode()
            if entry.name.startswith("%"):
                leases[entry.name] = inode
            else:
                accounts[inode] = entry.name
        return {name: accounts[inode] for name, inode in leases.items()}


def write_stock_lcmaps_db(directory: Path, gridmapdir: Path) -> Path:
    """An lcmaps.db with a DN-only and a VOMS policy over one gridmapdir."""
    grid_mapfile = directory / "grid-mapfile"
    grid_mapfile.write_text(GRID_MAPFILE)
    group_mapfile = directory / "groupmapfile"
    group_mapfile.write_text(GROUP_MAPFILE)
    common = f"-gridmapfile {grid_mapfile} -gridmapdir {gridmapdir}"
    db = directory / "lcmaps.db"
    db.write_text(
        f"path = {DEBIAN_MODULES}\n\n"
        f'poolaccount = "lcmaps_poolaccount.mod" "{common}"\n'
        f'localgroup = "lcmaps_voms_localgroup.mod" "-groupmapfile {group_mapfile}"\n'
        # Export writes the primary group only, as this option reads it.
        f'vomspoolaccount = "lcmaps_voms_poolaccount.mod" '
        f'"{common} -do_not_use_secondary_gids"\n'
        f'good = "{DUMMY_GOOD.name}"\n\n'
        "dn_pool:\npoolaccount -> good\n\n"
        "voms_pool:\nlocalgroup -> vomspoolaccount\n"
    )
    return db


def make_grid_site(
    lcmaps_build: LcmapsBuild, directory: Path, gridmapdir: Path
) -> GridSite:
    """Sync the pools; give LCMAPS their accounts in NSS and the stock plugins."""
    config = write_poolmgr_config(directory, CARDS, "dn_only_pool: dteam\n")
    with freeze_time(SYNCED_AT):
        synced = run_poolmgr(config, "sync")
    assert synced.code == 0, f"poolmgr sync failed: {synced.err}"

    passwd = run_poolmgr(config, "export", "passwd")
    group = run_poolmgr(config, "export", "group")
    assert (passwd.code, group.code) == (0, 0), passwd.err + group.err
    lcmaps = with_accounts(lcmaps_build, directory, passwd.out, group.out)
    db = write_stock_lcmaps_db(directory, gridmapdir)
    return GridSite(config, gridmapdir, db, lcmaps)


def poolmgr_map(site: GridSite, dn: str, fqans: Sequence[str]) -> dict:
    """Map dn with fqans through ``poolmgr map --json`` and return its answer."""
    args = [arg for fqan in fqans for arg in ("--fqan", fqan)]
    return run_poolmgr(site.config, "map", "--json", dn, *args).json()


def as_ns(when: datetime) -> int:
    """An aware datetime as nanoseconds since the epoch, in integers only."""
    return (when - EPOCH) // timedelta(microseconds=1) * 1000


def last_use_of(index: int) -> datetime:
    """A distinct past time, with microseconds, for the index-th mapping."""
    return datetime(2025, 3, 1 + index, 10, 20, 30, 123456 + index, tzinfo=UTC)


@dataclass(frozen=True)
class Exported:
    """The export site and what the gridmapdir held right after the export."""

    site: GridSite
    links: dict[str, str]
    mtimes: dict[str, int]


@pytest.fixture(scope="module")
def exported(
    stock_lcmaps: LcmapsBuild, tmp_path_factory: pytest.TempPathFactory
) -> Exported:
    """Map PEOPLE at distinct past times, then ``poolmgr gridmapdir export``."""
    directory = tmp_path_factory.mktemp("export")
    site = make_grid_site(stock_lcmaps, directory, directory / "gridmapdir")
    for index, (dn, _, fqans) in enumerate(PEOPLE.values()):
        with freeze_time(last_use_of(index)):
            site.poolmgr_answers[dn, fqans] = poolmgr_map(site, dn, fqans)

    done = run_poolmgr(site.config, "gridmapdir", "export", str(site.gridmapdir))

    assert done.code == 0, f"export failed: {done.err}"
    mtimes = {
        entry.name: entry.stat().st_mtime_ns for entry in os.scandir(site.gridmapdir)
    }
    return Exported(site, site.links(), mtimes)


def test_export_links_each_lease_to_its_account_with_mtime_of_last_use(
    exported: Exported,
) -> None:
    expected = {}
    for index, (dn, _, fqans) in enumerate(PEOPLE.values()):
        account = exported.site.poolmgr_answers[dn, fqans]["account"]
        expected[account] = as_ns(last_use_of(index))

    got = {account: exported.mtimes[name] for name, account in exported.links.items()}

    assert got == expected


@pytest.mark.parametrize(
    ("dn", "lcmaps_dn", "fqans"), list(PEOPLE.values()), ids=list(PEOPLE)
)
def test_stock_plugin_maps_an_exported_lease_to_poolmgrs_account(
    exported: Exported, dn: str, lcmaps_dn: str, fqans: tuple[str, ...]
) -> None:
    site = exported.site
    answer = site.poolmgr_answers[dn, fqans]
    before = site.links()

    result = site.lcmaps_map(lcmaps_dn, fqans)

    assert result.returncode == 0, f"LCMAPS failed: {result.data}\n{result.log}"
    assert (result.data["uid"], result.data["pgids"]) == (
        answer["uid"],
        [answer["gid"]],
    )
    # The plugin returns the name of the lease it used: it is the exported
    # one, byte for byte, and the plugin made no lease of its own.
    assert exported.links.get(result.data["poolindex"]) == answer["account"]
    assert site.links() == before


def test_export_writes_non_ascii_as_openssl_escapes_which_raw_utf8_misses(
    exported: Exported,
) -> None:
    site = exported.site
    jose = site.poolmgr_answers[JOSE_UTF8, ()]
    exported_name = next(n for n, a in exported.links.items() if a == jose["account"])
    before = site.links()

    result = site.lcmaps_map(JOSE_UTF8, ())

    # poolmgr writes the certificate form: each UTF-8 byte as "\xHH", encoded.
    assert exported_name.endswith("%2fcn%3djos%5cxc3%5cxa9%20m%5cxc3%5cxbcller")
    # LCMAPS 1.6.6 prints bytes >= 0x80 sign-extended ("%ffffffc3") but moves
    # on by three characters, so a raw UTF-8 DN gets a garbled name
    # ("jos%ff%ff%20m%ff%ffllerbc") that matches no lease: the plugin takes
    # another free account. Real certificates reach LCMAPS in the escaped
    # form (test above), so only callers passing raw UTF-8 meet this.
    assert result.returncode == 0, result.log
    created = set(site.links()) - set(before)
    assert [name.endswith("%ff%ff%20m%ff%ffllerbc") for name in created] == [True]
    assert result.data["uid"] != jose["uid"]


@pytest.fixture
def imported_site(stock_lcmaps: LcmapsBuild, tmp_path: Path) -> GridSite:
    """A synced site with a fresh gridmapdir holding one file per account."""
    gridmapdir = tmp_path / "gridmapdir"
    gridmapdir.mkdir()
    site = make_grid_site(stock_lcmaps, tmp_path, gridmapdir)
    passwd = run_poolmgr(site.config, "export", "passwd").out
    for line in passwd.splitlines():
        (gridmapdir / line.split(":")[0]).touch()
    return site


def import_gridmapdir(site: GridSite) -> dict:
    """Run ``poolmgr gridmapdir import --json`` on the site's gridmapdir."""
    args = ["gridmapdir", "import", "--json", str(site.gridmapdir)]
    return run_poolmgr(site.config, *args).json()


def actions(report: dict) -> list[str]:
    """What the import did with each lease it found."""
    return [lease["action"] for lease in report["leases"]]


def test_import_takes_over_the_leases_the_stock_plugins_made(
    imported_site: GridSite,
) -> None:
    site = imported_site
    made = {}
    for _, lcmaps_dn, fqans in PEOPLE.values():
        result = site.lcmaps_map(lcmaps_dn, fqans)
        assert result.returncode == 0, f"LCMAPS failed: {result.data}\n{result.log}"
        made[lcmaps_dn, fqans] = result.data["poolindex"]
    garbled = site.lcmaps_map(JOSE_UTF8, ()).data["poolindex"]
    links = site.links()
    mtimes = {name: (site.gridmapdir / name).stat().st_mtime_ns for name in links}
    del links[garbled]

    first = import_gridmapdir(site)
    uses = open_lease_uses(site.config)
    second = import_gridmapdir(site)

    assert actions(first) == ["create"] * len(PEOPLE)
    # The raw UTF-8 DN's garbled name decodes to no DN: never a person.
    assert [(p["kind"], p["name"]) for p in first["problems"]] == [
        ("unresolvable", garbled)
    ]
    got = {account: as_ns(used) for account, (_, used) in uses.items()}
    assert got == {
        account: mtimes[name] // 1000 * 1000 for name, account in links.items()
    }, "each lease must land on its account with last use = the link's mtime"
    assert actions(second) == ["unchanged"] * len(PEOPLE)
    assert open_lease_uses(site.config) == uses, "a second import changes nothing"
    for dn, lcmaps_dn, fqans in PEOPLE.values():
        answer = poolmgr_map(site, dn, fqans)
        expected = (links[made[lcmaps_dn, fqans]], False)
        assert (answer["account"], answer["new"]) == expected, f"for {dn} {fqans}"
