"""Central ban lists: the two formats, and reading files and HTTP URLs."""

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from poolmgr import banlists
from poolmgr.banlists import BanListError, parse_ban_list, read_location, sync_source
from poolmgr.errors import BanListUnavailableError
from poolmgr.settings import BanSourceSettings
from tests.factories import at

NOW = at("2025-06-01T12:00:00Z")

MAPFILE_LINES = {
    "quoted DN": ('"/DC=org/CN=Sam Example"', "dn", "/DC=org/CN=sam example"),
    "unquoted DN": ("/DC=org/CN=sam", "dn", "/DC=org/CN=sam"),
    "mapping after": ('"/DC=org/CN=Sam X" .atlas', "dn", "/DC=org/CN=sam x"),
    "accounts after": ('"/DC=org/CN=Sam X" a001,a002', "dn", "/DC=org/CN=sam x"),
    "comment after": ('"/DC=org/CN=Sam X"  # why', "dn", "/DC=org/CN=sam x"),
    "escaped quote": ('"/DC=org/CN=Sam \\"Q\\" X"', "dn", '/DC=org/CN=sam "q" x'),
    "escaped slash kept": ('"/DC=org/CN=a\\/b"', "dn", "/DC=org/CN=a\\/b"),
    "leading blanks": ('  \t"/DC=org/CN=Sam"', "dn", "/DC=org/CN=sam"),
    "FQAN": ('"/atlas/Role=pilot"', "fqan", "/atlas/Role=pilot"),
    "FQAN with NULLs": (
        '"/atlas/Role=NULL/Capability=NULL"',
        "fqan",
        "/atlas",
    ),
    "wildcard DN": ('"/DC=org/DC=Bad/*"', "dn-pattern", "/dc=org/dc=bad/*"),
    "wildcard FQAN": ('"/dteam*"', "fqan-pattern", "/dteam*"),
}


@pytest.mark.parametrize(
    ("line", "kind", "key"), MAPFILE_LINES.values(), ids=MAPFILE_LINES.keys()
)
def test_ban_mapfile_lines(line, kind, key):
    (entry,) = parse_ban_list(f"# header\n\n{line}\r\n".encode(), "ban-mapfile")
    assert (entry.kind, entry.key) == (kind, key)


BAD_LINES = {
    "unterminated quote": ('"/DC=org/CN=Sam', "the quote is not closed"),
    "unknown entry type": ("ban name:sam", "neither a DN nor an FQAN"),
    "comma form": ('"CN=Sam,DC=org"', "neither a DN nor an FQAN"),
    "text glued to quote": ('"/DC=org/CN=Sam"x', "a blank must follow"),
    "junk after entry": ('"/DC=org/CN=Sam" "/DC=org/CN=Kim"', "unexpected text"),
    "empty value": ('"/DC=org/CN="', "DN '/DC=org/CN='"),
    "wildcard for everyone": ('"*"', "neither a DN nor an FQAN"),
    "wildcard DN without RDN": ('"/DC=*"', "complete RDN"),
    "wildcard FQAN for all VOs": ('"/*"', "VO name"),
    "long line": ('"/DC=org/CN=' + "x" * 9000 + '"', "longer than 8192"),
}


@pytest.mark.parametrize(("line", "problem"), BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_line_rejects_the_list_naming_the_line(line, problem):
    data = f'"/DC=org/CN=Good"\n# fine\n{line}\n"/DC=org/CN=Later"\n'.encode()
    with pytest.raises(BanListError, match=f"^line 3: .*{problem}"):
        parse_ban_list(data, "ban-mapfile")


def test_a_list_that_is_not_utf8_names_the_line():
    data = b'"/DC=org/CN=Good"\n"/DC=org/CN=Jos\xe9"\n'
    with pytest.raises(BanListError, match="line 2: the text is not UTF-8"):
        parse_ban_list(data, "ban-mapfile")


def test_a_byte_order_mark_is_ignored():
    (entry,) = parse_ban_list(b'\xef\xbb\xbf"/DC=org/CN=Sam"\n', "ban-mapfile")
    assert entry.key == "/DC=org/CN=sam"


DN_LIST_LINES = {
    "slash": ("/DC=org/CN=Sam", "/DC=org/CN=sam"),
    "rfc2253": ("CN=Sam,DC=org", "/DC=org/CN=sam"),
    "quoted": ('"/DC=org/CN=Sam Example"', "/DC=org/CN=sam example"),
    "star is literal": ("/DC=org/CN=Sam*", "/DC=org/CN=sam*"),
}


@pytest.mark.parametrize(
    ("line", "key"), DN_LIST_LINES.values(), ids=DN_LIST_LINES.keys()
)
def test_dn_list_lines_are_literal_dns_in_any_form(line, key):
    (entry,) = parse_ban_list(f"# list\n{line}\n".encode(), "dn-list")
    assert (entry.kind, entry.key) == ("dn", key)


def test_a_dn_list_rejects_an_unreadable_dn_with_its_line():
    with pytest.raises(BanListError, match="line 2: DN 'not a dn'"):
        parse_ban_list(b"/DC=org/CN=Sam\nnot a dn\n", "dn-list")


# Reading sources.


def test_a_file_is_read(tmp_path):
    path = tmp_path / "ban-mapfile"
    path.write_bytes(b'"/DC=org/CN=Sam"\n')
    assert read_location(str(path)) == b'"/DC=org/CN=Sam"\n'


def test_a_missing_file_is_unavailable(tmp_path):
    with pytest.raises(BanListUnavailableError, match="No such file"):
        read_location(str(tmp_path / "absent"))


def test_a_list_larger_than_the_limit_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(banlists, "MAX_BYTES", 10)
    path = tmp_path / "big"
    path.write_bytes(b"x" * 11)
    with pytest.raises(BanListError, match="larger than"):
        read_location(str(path))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Serve tmp_path over HTTP on 127.0.0.1; yield the base URL."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def handler(*args: object) -> _Quiet:
        return _Quiet(*args, directory=str(tmp_path))  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_list_is_fetched_over_http(served, tmp_path):
    (tmp_path / "ban.txt").write_bytes(b'"/DC=org/CN=Sam"\n')
    assert read_location(f"{served}/ban.txt") == b'"/DC=org/CN=Sam"\n'


def test_an_http_error_is_unavailable(served):
    with pytest.raises(BanListUnavailableError, match="HTTP 404"):
        read_location(f"{served}/absent.txt")


def test_a_refused_connection_is_unavailable(served):
    port = int(served.rsplit(":", 1)[1])
    with pytest.raises(BanListUnavailableError, match="cannot fetch"):
        read_location(f"http://127.0.0.1:{port + 1 if port < 65535 else 1}/x")


def test_sync_over_http_applies_the_list(served, tmp_path, sqlite_engine):
    (tmp_path / "ban.txt").write_bytes(b'"/DC=org/CN=Sam"\n"/atlas/Role=pilot"\n')
    source = BanSourceSettings(name="egi", location=f"{served}/ban.txt")
    result = sync_source(sqlite_engine, source, actor="cron", now=NOW)
    assert result.added == ["/DC=org/CN=Sam", "/atlas/Role=pilot"]


@pytest.mark.parametrize(
    "location", ["ban.txt", "file:///etc/ban", "ftp://example.org/x"]
)
def test_a_source_location_is_an_absolute_path_or_http_url(location):
    with pytest.raises(ValueError, match="absolute path"):
        BanSourceSettings(name="egi", location=location)


# HTTPS, verified against the site's CA certificates.


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """Return (certificate, key) of a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def served_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """Serve tmp_path/www over HTTPS on 127.0.0.1; yield (base URL, CA file)."""
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    cert, key = _self_signed(tmp_path)
    www = tmp_path / "www"
    www.mkdir()

    def handler(*args: object) -> _Quiet:
        return _Quiet(*args, directory=str(www))  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_https_list_is_verified_against_the_configured_ca(served_tls, tmp_path):
    url, ca = served_tls
    (tmp_path / "www" / "ban.txt").write_bytes(b'"/DC=org/CN=Sam"\n')
    assert read_location(f"{url}/ban.txt", str(ca)) == b'"/DC=org/CN=Sam"\n'

    hashed = tmp_path / "certificates"
    hashed.mkdir()
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(ca)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    shutil.copy(ca, hashed / f"{subject_hash}.0")
    assert read_location(f"{url}/ban.txt", str(hashed)) == b'"/DC=org/CN=Sam"\n'


def test_an_https_server_the_ca_does_not_vouch_for_is_unavailable(served_tls):
    url, _ = served_tls
    with pytest.raises(BanListUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        read_location(f"{url}/ban.txt")


def test_a_missing_ca_path_is_unavailable_and_names_it(served_tls, tmp_path):
    url, _ = served_tls
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(
        BanListUnavailableError, match=f"cannot use the CA certificates '{missing}'"
    ):
        read_location(f"{url}/ban.txt", str(missing))


def test_sync_uses_the_sources_ca_path(served_tls, tmp_path, sqlite_engine):
    url, ca = served_tls
    (tmp_path / "www" / "ban.txt").write_bytes(b'"/DC=org/CN=Sam"\n')
    source = BanSourceSettings(name="egi", location=f"{url}/ban.txt", ca_path=str(ca))
    result = sync_source(sqlite_engine, source, actor="cron", now=NOW)
    assert result.added == ["/DC=org/CN=Sam"]


def test_a_ca_path_is_absolute():
    with pytest.raises(ValueError, match="absolute path of a CA file"):
        BanSourceSettings(name="egi", location="https://x.example/", ca_path="ca.pem")
