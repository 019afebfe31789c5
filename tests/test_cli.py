"""The command line as an operator's shell sees it: exit codes, help, --version, suggestions for a
mistyped command, the one-line errors, and a pipe closed early (issue 10, defect 22). Every test runs
``retentiond`` as a real process, except the walk of the parser that checks every option has help."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from daemon.cli import build_parser
from daemon.exit_codes import RET_CONFIG, RET_CONNECT, RET_NOT_FOUND, RET_OK
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


def test_version_is_printed_whatever_the_settings() -> None:
    # Given settings that no command would accept: --version reads the package metadata, not them
    result = cli("--version", env=base_env(DATABASE_URL="mysql://root:hunter2@localhost/app"))
    assert result.returncode == RET_OK and result.stderr == ""
    assert result.stdout.strip() == f"retentiond {version('retentiond')}"


# -- a mistyped command ---------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "typo", "meant"), [
    (("migrat",), "migrat", "migrate"),
    (("simulate-provider",), "simulate-provider", "simulate-providers"),
    (("campaign", "aply", "x.yaml"), "aply", "apply"),
    (("contacts", "improt", "x.csv"), "improt", "import"),
])
def test_a_mistyped_command_gets_a_suggestion(args: tuple[str, ...], typo: str, meant: str) -> None:
    result = cli(*args, env=base_env())
    assert result.returncode == RET_CONFIG  # still a bad command line: a script must not go on
    assert f"invalid choice: {typo!r}, maybe you meant {meant!r}?" in result.stderr


def test_a_word_like_no_command_gets_no_suggestion() -> None:
    result = cli("xyzzy", env=base_env())
    assert result.returncode == RET_CONFIG
    assert "invalid choice: 'xyzzy'" in result.stderr and "maybe you meant" not in result.stderr


# -- help on every command and option -------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the command line (the top one, each group, each command) with its words."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(build_parser())


def test_the_walk_finds_every_contract_command() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {("run",), ("migrate",), ("campaign", "apply"), ("contacts", "import"), ("cleanup",), ("backup",),
            ("stats",), ("simulate-providers",)} <= paths


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[" ".join(p) or "retentiond" for p, _ in COMMANDS])
def test_every_option_and_command_has_help(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    # Walks the parser: an option or a command added without help fails here
    shown = " ".join(parser.format_help().split())  # as `retentiond ... --help` prints it, unwrapped
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            for name in action.choices:
                assert listed.get(name), f"retentiond {' '.join((*path, name))} has no help"
                assert " ".join(str(listed[name]).split()) in shown
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"retentiond {' '.join(path)} {name}: no help"
        assert " ".join(action.help.split()) in shown, f"retentiond {' '.join(path)} {name}: help not shown"
    if path:
        assert parser.description, f"retentiond {' '.join(path)} --help does not say what the command does"


def test_a_command_help_shows_a_sentence_for_each_option() -> None:
    result = cli("contacts", "import", "--help", env=base_env())
    assert result.returncode == RET_OK
    shown = " ".join(result.stdout.split())
    assert "bulk upsert contacts from a CSV file" in shown
    for sentence in ("enrol every imported contact in this campaign", "rows upserted per transaction",
                     "no progress bar", "the file's text encoding"):
        assert sentence in shown


# -- errors raised once: the database commands ----------------------------------------------------

CAMPAIGN = "slug: c\nname: C\ntrigger: manual\nsteps:\n  - {channel: sms, delay: 0s, body: hi}\n"


def _database_command(name: str, tmp_path: Path) -> tuple[str, ...]:
    campaign = tmp_path / "c.yaml"
    campaign.write_text(CAMPAIGN)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("external_id,email\nada,ada@example.com\n")
    return {"run": ("run",), "migrate": ("migrate",), "campaign apply": ("campaign", "apply", str(campaign)),
            "campaign enrol": ("campaign", "enrol", "c", "--external-id", "ada"),
            "contacts import": ("contacts", "import", "--no-progress", str(contacts)),
            "stats": ("stats",), "cleanup": ("cleanup",)}[name]


DATABASE_COMMANDS = ["run", "migrate", "campaign apply", "campaign enrol", "contacts import", "stats", "cleanup"]


@pytest.mark.parametrize("command", DATABASE_COMMANDS)
def test_an_unreachable_database_is_one_line_and_exit_3_for_every_command(command: str, tmp_path: Path) -> None:
    # Given a PostgreSQL address where nothing listens
    env = base_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/x", DB_TIMEOUT_S="2")
    result = cli(*_database_command(command, tmp_path), env=env, cwd=tmp_path)
    # Then every command that needs the database says the same one line and exits 3
    assert result.returncode == RET_CONNECT, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("retentiond: error: RETENTIOND_DATABASE_URL: cannot connect (OperationalError: ")


@pytest.mark.parametrize("command", [c for c in DATABASE_COMMANDS if c != "migrate"])
def test_an_unmigrated_database_is_one_line_and_exit_2_for_every_command(
        command: str, sqlite_url: str, tmp_path: Path) -> None:
    # Given a database that no `retentiond migrate` has prepared
    result = cli(*_database_command(command, tmp_path), env=base_env(DATABASE_URL=sqlite_url), cwd=tmp_path)
    # Then every command but migrate refuses it with the same one line, naming the fix
    assert result.returncode == RET_CONFIG, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("retentiond: error: the database needs migrating (0001_initial, ")
    assert result.stderr.endswith(" pending): run `retentiond migrate`\n")


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
