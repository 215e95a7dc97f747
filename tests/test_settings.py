"""Site configuration: defaults, overrides and one-line errors."""

import pytest

from poolmgr import settings as settings_module
from poolmgr.errors import ConfigError
from poolmgr.settings import Settings, load_settings


def test_without_a_file_the_defaults_apply(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module.os, "geteuid", lambda: 1000)
    settings = load_settings()
    assert settings.source == "(defaults)"
    assert str(settings.quiet) == "6 months"
    assert settings.database_url() == (
        f"sqlite:///{tmp_path / 'state' / 'poolmgr' / 'poolmgr.db'}"
    )


def test_root_gets_the_system_state_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(settings_module.os, "geteuid", lambda: 0)
    assert load_settings().database_url() == (
        f"sqlite:///{tmp_path / 'var-lib' / 'poolmgr.db'}"
    )


def test_config_file_then_environment_then_option(tmp_path, monkeypatch):
    path = tmp_path / "site.yaml"
    path.write_text("database: sqlite:///from-file.db\nquiet_period: 200 days\n")
    monkeypatch.setenv("POOLMGR_CONFIG", str(path))
    assert load_settings().database == "sqlite:///from-file.db"
    monkeypatch.setenv("POOLMGR_DATABASE_URL", "sqlite:///from-env.db")
    assert load_settings().database == "sqlite:///from-env.db"
    assert load_settings(database="sqlite:///from-option.db").database == (
        "sqlite:///from-option.db"
    )
    assert load_settings().quiet_period == "200 days"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "quiet_period: 0 days\n",
            "quiet_period: the quiet period must be longer than zero",
        ),
        ("quiet_period: soon\n", "quiet_period: Duration 'soon' is not understood"),
        (
            "quiet_period: 2100 years\n",
            "quiet_period: Duration '2100 years' is longer than 100 years",
        ),
        (
            "quiet_period: 6\n",
            "quiet_period: 6 has no unit; write a duration such as '6 months'",
        ),
        (
            "ban_sources:\n  - {name: c, location: /a, stale_after: 1.5}\n",
            "ban_sources.0.stale_after: 1.5 has no unit",
        ),
        ("qiet_period: 6 months\n", "qiet_period: unknown key"),
        (
            "pools:\n  atlas:\n    digits: 12\n",
            "pools.atlas.digits: Input should be less",
        ),
        (
            "pools:\n  atlas:\n    prefix: 'bad prefix'\n",
            "pools.atlas.prefix: String should match",
        ),
        ("syslog:\n  facility: nowhere\n", "syslog.facility: unknown syslog facility"),
        ("- a list\n", "the configuration must be a mapping"),
        (
            "ban_sources:\n  - {name: c, location: /a}\n  - {name: c, location: /b}\n",
            "ban_sources: ban source name(s) used twice: c",
        ),
        ("key: [unclosed\n", "line 2: "),
        (
            "database: sqlite:///a.db\ndatabase: sqlite:///b.db\n",
            "line 2: database: duplicate key 'database' (first at line 1)",
        ),
        (
            "pools:\n  atlas:\n    size: 1\n    size: 2\n",
            "line 4: pools.atlas.size: duplicate key 'size' (first at line 3)",
        ),
        ("database: notaurl\n", "database: the value is not a database URL"),
        ("database: ''\n", "database: the value is not a database URL"),
        ("database: ftp://x/y\n", "database: database backend 'ftp' is not"),
        (
            "database: postgresql://u:SECRET@db:notaport/poolmgr\n",
            "database: the value is not a database URL",
        ),
        ("database: 'nothing here'\n", "database: the value is not a database URL"),
        (
            "syslog:\n  address: 'loghost:notaport'\n",
            "syslog.address: 'loghost:notaport' is neither an absolute socket path",
        ),
        ("syslog:\n  address: 'loghost:70000'\n", "syslog.address: 'loghost:70000'"),
        ("syslog:\n  address: 'dev/log'\n", "syslog.address: 'dev/log'"),
    ],
    ids=[
        "zero-quiet",
        "bad-duration",
        "quiet-over-a-century",
        "quiet-without-unit",
        "stale-after-without-unit",
        "typo-key",
        "digits",
        "prefix",
        "facility",
        "not-mapping",
        "double-source",
        "yaml-syntax",
        "duplicate-key",
        "duplicate-nested-key",
        "url-not-parsed",
        "url-empty",
        "url-foreign-backend",
        "database-port",
        "database-garbage",
        "syslog-port-word",
        "syslog-port-range",
        "syslog-relative",
    ],
)
def test_bad_configuration_names_file_key_and_problem(tmp_path, text, message):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert "SECRET" not in str(info.value), "a password is never repeated"


def test_a_bad_database_url_option_or_variable_is_named_as_such(monkeypatch):
    with pytest.raises(ConfigError) as info:
        load_settings(database="mysql://root:SECRET@db:port/poolmgr")
    assert str(info.value).startswith("--database: the value is not a database URL")
    monkeypatch.setenv("POOLMGR_DATABASE_URL", "postgresql://u:SECRET@db:port/db")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(
        "POOLMGR_DATABASE_URL: the value is not a database URL"
    )
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("address", "server"),
    [
        ("/dev/log", None),
        ("loghost.example.org", ("loghost.example.org", 514)),
        ("127.0.0.1:5514", ("127.0.0.1", 5514)),
        ("[::1]:5514", ("::1", 5514)),
    ],
    ids=["socket", "host", "host-port", "ipv6"],
)
def test_syslog_address_is_a_socket_or_a_server(address, server):
    settings = Settings.model_validate({"syslog": {"address": address}})
    assert settings.syslog.server() == server


def test_an_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_settings(tmp_path / "missing.yaml")


def test_a_binary_file_is_rejected(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/poolmgr/poolmgr.db",
        "postgresql://poolmgr@db.example.org/poolmgr",
        "postgresql+psycopg://poolmgr@db.example.org/poolmgr",
        "mysql://poolmgr@db.example.org/poolmgr",
        "mariadb://poolmgr@db.example.org/poolmgr",
    ],
    ids=["sqlite", "postgresql", "postgresql-driver", "mysql", "mariadb"],
)
def test_the_supported_database_urls_are_accepted(tmp_path, url):
    path = tmp_path / "site.yaml"
    path.write_text(f"database: {url}\n")
    assert load_settings(path).database == url


@pytest.mark.parametrize(
    ("option", "env", "origin"),
    [("notaurl", None, "--database"), (None, "ftp://x/y", "POOLMGR_DATABASE_URL")],
    ids=["option", "environment"],
)
def test_a_bad_database_url_outside_the_file_names_its_source(
    tmp_path, monkeypatch, option, env, origin
):
    path = tmp_path / "site.yaml"
    path.write_text("database: sqlite:///fine.db\n")
    if env is not None:
        monkeypatch.setenv("POOLMGR_DATABASE_URL", env)
    with pytest.raises(ConfigError) as info:
        load_settings(path, option)
    assert str(info.value).startswith(f"{origin}: ")


def test_a_database_given_outside_any_file_leaves_the_source_as_defaults():
    settings = load_settings(database="sqlite:///elsewhere.db")
    assert settings.database == "sqlite:///elsewhere.db"
    assert settings.source == "(defaults)", "no file was read, so none is the source"
