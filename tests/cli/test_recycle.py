"""poolmgr recycle and touch at the command line."""

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from poolmgr import db
from poolmgr.runlock import exclusive
from poolmgr.site_commands import run_command
from tests.factories import at
from tests.test_recycle import BOUNDARIES
from tests.test_site_commands import survivors, wait_for

JANE = "/DC=org/DC=example/CN=Jane Roe"
DREW = "/DC=org/DC=example/CN=Drew Past"
REASON = "home dir 2 TB, user left VO"
TRUE, FALSE = shutil.which("true"), shutil.which("false")


@pytest.fixture
def configure(tmp_path):
    """Append lines to the site configuration the cli fixture wrote."""

    def add(text: str) -> None:
        with (tmp_path / "poolmgr.yaml").open("a") as config:
            config.write(text)

    return add


def lease_of(cli, account: str) -> dict:
    rows = json.loads(cli("leases", "--all", "--account", account, "--json").out)
    return rows[0]


def old_lease(cli, dn: str = JANE) -> None:
    cli("sync")
    with freeze_time("2024-01-01T00:00:00Z"):
        assert cli("map", dn, "--fqan", "/atlas").out == "atlas001\n"


def test_recycle_with_nothing_due_says_so(cli):
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    result = cli("recycle")
    assert (result.code, result.out, result.err) == (0, "Nothing to recycle.\n", "")


def test_dry_run_prints_the_plan_then_recycle_does_it(cli, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "cron")
    old_lease(cli)
    plan = cli("recycle", "--dry-run")
    assert plan.code == 0
    assert plan.out.startswith("would_recycle account=atlas001 pool=atlas lease=1 ")
    assert lease_of(cli, "atlas001")["ended_at"] is None

    done = cli("recycle")
    assert (done.code, done.err) == (0, "")
    assert done.out.startswith("recycled account=atlas001 pool=atlas lease=1 ")
    ended = lease_of(cli, "atlas001")
    assert (ended["end_reason"], ended["ended_by"]) == ("quiet_period", "cron")


def test_failed_cleanup_exits_1_and_is_retried(cli, configure):
    configure(f"recycle:\n  cleanup_command: [{FALSE}]\n")
    old_lease(cli)
    failed = cli("recycle")
    assert failed.code == 1
    assert failed.out.startswith("cleanup_failed account=atlas001 ")
    assert 'note="cleanup failed: exit status 1"' in failed.out

    again = cli("recycle")
    assert again.code == 1
    assert again.out.startswith("cleanup_failed account=atlas001 ")
    assert "lease=1 " in again.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--force", "atlas001"],
            "poolmgr: A reason is required (--reason TEXT).\n",
        ),
        (
            ["--force", "atlas001", "--reason", "  "],
            "poolmgr: A reason is required (--reason TEXT).\n",
        ),
        (
            ["--reason", REASON],
            "poolmgr: --reason, --by and --ignore-in-use only go with --force.\n",
        ),
        (
            ["--ignore-in-use"],
            "poolmgr: --reason, --by and --ignore-in-use only go with --force.\n",
        ),
    ],
    ids=["no-reason", "blank-reason", "reason-alone", "ignore-alone"],
)
def test_override_options_are_checked_before_anything_changes(cli, args, message):
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    result = cli("recycle", *args)
    assert (result.code, result.out, result.err) == (2, "", message)
    assert lease_of(cli, "atlas001")["ended_at"] is None


def test_override_records_reason_and_the_login_behind_sudo(cli, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "admin1")
    cli("sync")
    cli("map", DREW, "--fqan", "/atlas")
    result = cli("recycle", "--force", "atlas001", "--reason", REASON)
    assert result.code == 0
    assert [line.split(" ")[0] for line in result.out.splitlines()] == [
        "override",
        "recycled",
    ]
    lease = lease_of(cli, "atlas001")
    assert (lease["end_reason"], lease["ended_by"], lease["end_note"]) == (
        "override",
        "admin1",
        REASON,
    )


def test_by_names_the_actor_of_an_override(cli):
    cli("sync")
    cli("map", DREW, "--fqan", "/atlas")
    result = cli("recycle", "--force", "atlas001", "--reason", REASON, "--by", "sec1")
    assert result.code == 0
    assert lease_of(cli, "atlas001")["ended_by"] == "sec1"


def test_in_use_refuses_an_override_unless_ignored(cli, configure):
    configure(f"recycle:\n  in_use_command: [{TRUE}]\n")
    cli("sync")
    cli("map", DREW, "--fqan", "/atlas")
    refused = cli("recycle", "--force", "atlas001", "--reason", REASON)
    assert refused.code == 12
    assert refused.err == (
        "poolmgr: Account 'atlas001' counts as in use (the in-use check says so); "
        "add --ignore-in-use to recycle it anyway.\n"
    )
    assert lease_of(cli, "atlas001")["ended_at"] is None

    forced = cli(
        "recycle", "--force", "atlas001", "--reason", REASON, "--ignore-in-use"
    )
    assert forced.code == 0
    assert lease_of(cli, "atlas001")["end_reason"] == "override"


def test_a_failing_in_use_check_refuses_an_override_and_says_why(cli, configure):
    sh = shutil.which("sh")
    configure(f"recycle:\n  in_use_command: [{sh}, -c, 'echo no ps; exit 3']\n")
    cli("sync")
    cli("map", DREW, "--fqan", "/atlas")
    failed = cli("recycle", "--force", "atlas001", "--reason", REASON)
    assert (failed.code, failed.out) == (12, "")
    assert failed.err == (
        "poolmgr: Account 'atlas001' counts as in use (in-use check failed: exit "
        "status 3: no ps); add --ignore-in-use to recycle it anyway.\n"
    )
    assert lease_of(cli, "atlas001")["ended_at"] is None


def test_periodic_recycle_postpones_accounts_in_use(cli, configure):
    configure(f"recycle:\n  in_use_command: [{TRUE}]\n")
    old_lease(cli)
    result = cli("recycle")
    assert result.code == 0
    assert result.out.startswith("postponed account=atlas001 ")
    assert lease_of(cli, "atlas001")["ended_at"] is None


@pytest.mark.parametrize(
    ("account", "code", "message"),
    [
        ("atlas404", 11, "poolmgr: No pool account named 'atlas404'.\n"),
        ("atlas002", 12, "poolmgr: Account 'atlas002' has no open lease; "),
    ],
    ids=["unknown", "free"],
)
def test_force_on_an_account_without_lease_is_refused(cli, account, code, message):
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    result = cli("recycle", "--force", account, "--reason", REASON)
    assert result.code == code
    assert result.err.startswith(message)


def test_touch_records_a_use(cli):
    cli("sync")
    with freeze_time("2025-01-01T00:00:00Z"):
        cli("map", JANE, "--fqan", "/atlas")
    with freeze_time("2025-02-01T12:00:00Z"):
        result = cli("touch", "atlas001")
    assert (result.code, result.out) == (0, "atlas001 last use 2025-02-01T12:00:00Z\n")
    assert lease_of(cli, "atlas001")["last_used_at"] == "2025-02-01T12:00:00Z"


@pytest.mark.parametrize(
    ("account", "code", "message"),
    [
        (
            "atlas002",
            7,
            "poolmgr: Account 'atlas002' has no open lease to record a use on.\n",
        ),
        ("atlas404", 11, "poolmgr: No pool account named 'atlas404'.\n"),
    ],
    ids=["no-lease", "unknown"],
)
def test_touch_without_an_open_lease_fails(cli, account, code, message):
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    result = cli("touch", account)
    assert (result.code, result.out, result.err) == (code, "", message)


def test_recycle_help_documents_exit_codes(cli):
    result = cli("recycle", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    assert "1 a cleanup or in-use check failed" in text
    assert "--ignore-in-use" in text


def test_systemd_and_cron_units_say_what_when_and_who():
    contrib = Path(__file__).resolve().parents[2] / "contrib"
    service = (contrib / "systemd/poolmgr-recycle.service").read_text()
    timer = (contrib / "systemd/poolmgr-recycle.timer").read_text()
    cron = (contrib / "cron/poolmgr-recycle").read_text()
    assert "ExecStart=/usr/bin/poolmgr recycle" in service
    assert "User=root" in service
    assert "OnCalendar=daily" in timer
    assert (
        " root flock -n /run/lock/poolmgr-recycle /usr/bin/poolmgr recycle\n" in cron
    ), "runs never overlap"
    for text in (service, timer, cron):
        comments = " ".join(line for line in text.splitlines() if line.startswith("#"))
        assert "daily" in comments and "root" in comments


def test_audit_units_and_cron_write_the_monthly_html_report(tmp_path):
    contrib = Path(__file__).resolve().parents[2] / "contrib"
    service = (contrib / "systemd/poolmgr-audit.service").read_text()
    timer = (contrib / "systemd/poolmgr-audit.timer").read_text()
    cron = (contrib / "cron/poolmgr-audit").read_text()
    assert "User=root" in service and "StateDirectory=poolmgr/audit" in service
    assert "OnCalendar=monthly" in timer
    for text in (service, timer, cron):
        comments = " ".join(line for line in text.splitlines() if line.startswith("#"))
        assert "monthly" in comments and "root" in comments
        assert "poolmgr audit" in comments

    # The cron line, run by sh with a stand-in poolmgr and audit directory.
    stub = tmp_path / "poolmgr"
    stub.write_text('#!/bin/sh\necho "$*"\n')
    stub.chmod(0o755)
    [line] = [line for line in cron.splitlines() if line.startswith("23 6 1 * * root ")]
    command = (
        line.removeprefix("23 6 1 * * root ")
        .replace("\\%", "%")
        .replace("/usr/bin/poolmgr", str(stub))
        .replace("/var/lib/poolmgr/audit", str(tmp_path / "audit"))
    )
    ran = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    html, text = ran.stdout.splitlines()
    assert re.fullmatch(
        rf"audit --format html --output {tmp_path}/audit/audit-\d{{4}}-\d\d-\d\d\.html",
        html,
    ), "the file name carries the day of the run"
    assert text == "audit --format text", "cron mails the text report"
    assert (tmp_path / "audit").stat().st_mode & 0o777 == 0o750


EXAMPLE = Path(__file__).resolve().parents[2] / "contrib/examples/cleanup-account.sh"


@pytest.mark.parametrize(
    ("account", "uid", "message"),
    [
        ("nosuchuser123", "1234", "unknown account 'nosuchuser123'"),
        ("root", "0", "refusing to clean system account root"),
        ("root", "4321", "uid 0 of root is not POOLMGR_UID"),
        ("../etc", "1234", "bad account name '../etc'"),
    ],
    ids=["unknown", "system", "uid-mismatch", "bad-name"],
)
def test_example_cleanup_refuses_anything_doubtful(account, uid, message):
    env = {"PATH": "/usr/bin:/bin", "POOLMGR_UID": uid, "CLEANUP_DRY_RUN": "1"}
    result = subprocess.run(
        [str(EXAMPLE), account], env=env, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"cleanup-account: {message}\n"


@pytest.mark.parametrize(
    ("areas", "message"),
    [
        (["/"], "refusing scratch area '/'"),
        (["scratch"], "scratch area 'scratch' is not an absolute path"),
        (["/scratch-typo"], "scratch area '/scratch-typo' is not a directory"),
    ],
    ids=["root", "relative", "missing"],
)
def test_example_cleanup_refuses_doubtful_scratch_areas(areas, message):
    env = {"PATH": "/usr/bin:/bin", "POOLMGR_UID": "0", "CLEANUP_DRY_RUN": "1"}
    result = subprocess.run(
        [str(EXAMPLE), *areas, "root"], env=env, capture_output=True, text=True
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"cleanup-account: {message}\n"


@pytest.mark.parametrize(
    ("areas", "searched"),
    [([], ["/tmp", "/var/tmp"]), (["/tmp", "/dev/shm"], ["/tmp", "/dev/shm"])],
    ids=["default-areas", "areas-from-the-arguments"],
)
def test_example_cleanup_dry_run_under_poolmgr_prints_its_plan(areas, searched):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account on this host")
    if Path(nobody.pw_dir).is_dir():
        pytest.skip("'nobody' has a real home here; the plan would include it")
    # As poolmgr runs it: a clean environment, the areas before the account.
    variables = {
        "POOLMGR_UID": str(nobody.pw_uid),
        "POOLMGR_LEASE_ID": "7",
        "CLEANUP_DRY_RUN": "1",
    }
    result = run_command([str(EXAMPLE), *areas, "nobody"], variables, 30)
    assert result.status == 0, result.output
    uid = nobody.pw_uid
    if not all(Path(area).is_dir() for area in searched):
        pytest.skip(f"one of {searched} is not a directory on this host")
    finds = [
        f"would run: find {area} -xdev -depth -user {uid} -delete" for area in searched
    ]
    assert result.output == " ".join(
        [
            f"would run: pkill -KILL -U {uid}",
            *finds,
            f"cleanup-account: nobody (uid {uid}, lease 7) would be cleaned (dry run)",
        ]
    )


@pytest.mark.parametrize(("quiet", "last_use", "due"), BOUNDARIES)
def test_the_nightly_run_recycles_exactly_at_the_boundary(
    cli, configure, quiet, last_use, due
):
    configure(f"quiet_period: {quiet}\n")
    cli("sync")
    with freeze_time(last_use):
        assert cli("map", JANE, "--fqan", "/atlas").out == "atlas001\n"
    with freeze_time(at(due) - timedelta(seconds=1)):
        for args in (["recycle", "--dry-run"], ["recycle"]):
            result = cli(*args)
            assert (result.code, result.out) == (0, "Nothing to recycle.\n"), args
    with freeze_time(due):
        plan = cli("recycle", "--dry-run")
        assert plan.out.startswith("would_recycle account=atlas001 pool=atlas lease=1")
        assert plan.out.endswith(f'note="due {due}"\n')
        done = cli("recycle")
        assert (done.code, done.err) == (0, "")
        assert done.out.startswith("recycled account=atlas001 pool=atlas lease=1 ")
    ended = lease_of(cli, "atlas001")
    assert (ended["ended_at"], ended["last_used_at"]) == (due, last_use)


def test_a_last_use_from_a_fast_clock_is_never_old(cli, configure):
    configure("quiet_period: 1 hour\n")
    cli("sync")
    with freeze_time("2025-03-03T00:00:00Z"):
        cli("map", JANE, "--fqan", "/atlas")
    with freeze_time("2025-03-01T00:00:00Z"):
        assert cli("recycle").out == "Nothing to recycle.\n"
        assert cli("recycle", "--dry-run").out == "Nothing to recycle.\n"
    with freeze_time("2025-03-03T00:59:59Z"):
        assert cli("recycle").out == "Nothing to recycle.\n"
    with freeze_time("2025-03-03T01:00:00Z"):
        assert cli("recycle").out.startswith("recycled account=atlas001 ")


def test_ctrl_c_during_an_override_cleanup_reports_and_stops_it(
    cli, configure, tmp_path
):
    script = tmp_path / "slow-cleanup"
    script.write_text(SLOW_CLEANUP)
    script.chmod(0o755)
    pids = tmp_path / "cleanup.pids"
    configure(f"recycle:\n  cleanup_command: [{script}, {pids}]\n")
    cli("sync")
    cli("map", DREW, "--fqan", "/atlas")

    proc = subprocess.Popen(
        [sys.executable, "-c", "from poolmgr.cli import run; run()"]
        + ["--config", str(tmp_path / "poolmgr.yaml")]
        + ["recycle", "--force", "atlas001", "--reason", REASON],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test run started in the background inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    started = wait_for(pids)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 130
    assert out.startswith("override account=atlas001 "), out
    assert err == (
        "poolmgr: interrupted; the override of atlas001 is recorded; the account "
        "stays out of service (cleaning) until a cleanup succeeds, and the next "
        "'poolmgr recycle' retries it.\n"
    )
    still = survivors(started)
    assert still == [], f"cleanup processes {still} outlived poolmgr"
    assert json.loads(cli("show", "atlas001", "--json").out)["state"] == "cleaning"


SLOW_CLEANUP = """#!/bin/sh
sleep 300 &
echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"
sleep 300
"""


@pytest.mark.parametrize(
    "args",
    [["--by", "bob"], ["--reason", REASON], ["--ignore-in-use"]],
    ids=["by", "reason", "ignore-in-use"],
)
def test_override_options_without_force_are_refused(cli, args):
    cli("sync")
    result = cli("recycle", *args)
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "poolmgr: --reason, --by and --ignore-in-use only go with --force.\n"
    )


IN_USE = Path(__file__).resolve().parents[2] / "contrib/examples/account-in-use.sh"


def run_in_use_check(account, tmp_path, squeue=None):
    """Run the example in-use check, with a fake Slurm client if given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if squeue is not None:
        (bin_dir / "squeue").write_text(f"#!/bin/sh\n{squeue}\n")
        (bin_dir / "squeue").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(
        [str(IN_USE), account], env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture
def idle_account():
    """An account with no processes here (nobody), or skip."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account on this host")
    if subprocess.run(["pgrep", "-U", str(nobody.pw_uid)], check=False).returncode == 0:
        pytest.skip("'nobody' runs processes on this host")
    return "nobody"


@pytest.mark.parametrize(
    ("squeue", "code", "out", "err"),
    [
        (None, 1, "", ""),
        ("exit 0", 1, "", ""),
        ("echo 4242", 0, "account-in-use: nobody is in use: Slurm jobs\n", ""),
        ("echo down >&2; exit 1", 2, "", "account-in-use: Slurm query failed: down\n"),
    ],
    ids=["no-batch-system", "no-jobs", "queued-job", "slurm-down"],
)
def test_example_in_use_check_looks_at_batch_jobs(
    idle_account, tmp_path, squeue, code, out, err
):
    result = run_in_use_check(idle_account, tmp_path, squeue)
    assert (result.returncode, result.stdout, result.stderr) == (code, out, err)


def test_example_in_use_check_sees_processes_and_refuses_unknown_accounts(tmp_path):
    busy = run_in_use_check(pwd.getpwuid(os.getuid()).pw_name, tmp_path)
    assert busy.returncode == 0
    assert busy.stdout.endswith("is in use: processes on " + os.uname().nodename + "\n")
    unknown = run_in_use_check("nosuchuser123", tmp_path)
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "account-in-use: unknown account 'nosuchuser123'\n",
    )


def test_state_directory_mode_agrees_between_unit_readme_and_nagios_notes():
    top = Path(__file__).resolve().parents[2]
    unit = (top / "contrib/systemd/poolmgr.service").read_text()
    readme = (top / "README.md").read_text()
    nagios = (top / "contrib/nagios/README.md").read_text()
    assert "StateDirectoryMode=0750\n" in unit
    assert "install -d -m 0750 /etc/poolmgr /etc/poolmgr/vocards /var/lib/poolmgr" in (
        readme
    )
    assert "setfacl -m u:nagios:rx /var/lib/poolmgr" in nagios


def test_readme_install_creates_every_directory_it_copies_into():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    steps = [line[2:] for line in readme.splitlines() if line.startswith("# ")]
    made = {"/etc/systemd/system"}  # exists wherever the units are used
    for step in steps:
        words = step.split("#")[0].split()
        if words[:2] == ["install", "-d"]:
            made.update(w for w in words[2:] if w.startswith("/"))
        elif words[:1] in (["install"], ["cp"]):
            target = words[-1]
            directory = target if target.endswith("/") else str(Path(target).parent)
            assert directory.rstrip("/") in made, f"{step!r}: no install -d first"
    assert any(step.startswith("poolmgr sync") for step in steps)
    assert any(step.startswith("poolmgr export passwd") for step in steps)


@pytest.mark.parametrize(
    "args", [["recycle"], ["recycle", "--force", "atlas001", "--reason", "disk"]]
)
def test_recycle_while_another_run_holds_the_lock_exits_9(cli, tmp_path, args):
    assert cli("sync").code == 0
    engine = db.get_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    with exclusive(engine, "recycle"):
        refused = cli(*args)
    assert (refused.code, refused.out) == (9, "")
    assert refused.err == (
        "poolmgr: Another 'poolmgr recycle' is running on this database; this "
        "one did nothing. Run it again once the other has finished.\n"
    )
    assert cli("recycle", "--dry-run").code == 0
    assert cli("recycle").code == 0
