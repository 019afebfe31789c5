"""The command line as an operator's shell sees it: exit codes, help, --version, and a pipe closed
early (issue 10, defect 22). Every test runs ``retentiond`` as a real process."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from daemon.exit_codes import RET_CONFIG, RET_NOT_FOUND, RET_OK
from ops.harness.daemon import REPO, base_env, cli


@pytest.fixture
def env(sqlite_url: str) -> dict[str, str]:
    env = base_env(DATABASE_URL=sqlite_url)
    assert cli("migrate", env=env).returncode == 0
    return env


def test_a_closed_pipe_ends_quietly(env: dict[str, str]) -> None:
    # Given `retentiond stats --json | head -0`: the reader is gone before anything is written
    process = subprocess.Popen([sys.executable, "-m", "daemon.cli", "stats", "--json"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # deterministic: every write now meets EPIPE
    with process.stderr:
        stderr = process.stderr.read().decode()
    code = process.wait(timeout=60)
    # Then no traceback, no "Exception ignored" at exit, and the shell's usual code for it
    assert stderr == ""
    assert code == RET_OK


def test_a_closed_pipe_in_a_real_shell_pipeline(env: dict[str, str]) -> None:
    result = subprocess.run(f"{sys.executable} -m daemon.cli stats --json | head -c 1", shell=True, env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout == "{" and result.stderr == ""


@pytest.mark.parametrize("args", [
    ("stats", "--email", "nobody@example.com"),
    ("stats", "--external-id", "nobody"),
    ("campaign", "enrol", "no-such-campaign", "--email", "ada@example.com"),
])
def test_something_named_that_does_not_exist_is_not_found_not_a_bad_command_line(
        env: dict[str, str], args: tuple[str, ...]) -> None:
    result = cli(*args, env=env)
    assert result.returncode == RET_NOT_FOUND, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "nobody@example.com" not in result.stderr  # no personal data echoed back


def test_contacts_missing_from_an_enrolment_are_not_found(env: dict[str, str], tmp_path: Path) -> None:
    campaign = tmp_path / "c.yaml"
    campaign.write_text("slug: c\nname: C\ntrigger: manual\nsteps:\n  - {channel: sms, delay: 0s, body: hi}\n")
    assert cli("campaign", "apply", str(campaign), env=env).returncode == 0
    result = cli("campaign", "enrol", "c", "--external-id", "ghost", env=env)
    assert result.returncode == RET_NOT_FOUND
    assert "no such contact: ghost" in result.stderr


def test_no_command_prints_the_help() -> None:
    result = cli(env=base_env())
    assert result.returncode == RET_CONFIG  # a script that forgot its command still fails
    assert "usage: retentiond" in result.stdout and "campaign" in result.stdout and "contacts" in result.stdout
    assert "error" not in result.stderr


def test_a_command_group_alone_prints_its_help() -> None:
    result = cli("campaign", env=base_env())
    assert result.returncode == RET_CONFIG
    assert "usage: retentiond campaign" in result.stdout and "apply" in result.stdout and "enrol" in result.stdout


def test_version() -> None:
    result = cli("--version", env=base_env())
    assert result.returncode == RET_OK
    assert result.stdout.strip() == f"retentiond {version('retentiond')}"


# -- follow-up defects of issue 10 (11) ----------------------------------------------------------


def test_run_on_a_host_name_that_does_not_resolve_names_http_host(env: dict[str, str], tmp_path: Path) -> None:
    # Given a listener address whose host name does not exist
    result = cli("run", env={**env, "RETENTIOND_HTTP_HOST": "no.such.host.invalid"}, cwd=tmp_path, timeout_s=60)
    # Then the one line blames the host, not the port
    assert result.returncode == RET_CONFIG, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("retentiond: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("retentiond: error: RETENTIOND_HTTP_HOST: cannot listen on no.such.host.invalid:")


@pytest.mark.parametrize("fmt", ["json", "auto"])  # auto: stderr is a pipe here, not a terminal
def test_migrate_logs_in_the_configured_format(sqlite_url: str, fmt: str) -> None:
    import json

    result = cli("migrate", env=base_env(DATABASE_URL=sqlite_url, LOG_FORMAT=fmt))
    assert result.returncode == RET_OK, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, "migrate logged nothing"
    records = [json.loads(line) for line in lines]  # every line is a JSON object
    assert any("0001_initial" in r["message"] for r in records)


def test_migrate_logs_text_when_asked(sqlite_url: str) -> None:
    result = cli("migrate", env=base_env(DATABASE_URL=sqlite_url, LOG_FORMAT="text"))
    assert result.returncode == RET_OK and not result.stderr.lstrip().startswith("{")
    assert "0001_initial" in result.stderr
