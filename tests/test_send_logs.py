"""What the log tells the person running the daemon: text at a terminal and JSON lines otherwise,
times in RFC 3339 UTC, and one line for every send that was deferred, skipped or failed, with the
send id, channel and campaign as fields of their own and the reason in the message."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pty
import subprocess
import sys

import pytest

from ground.errors import PermanentChannelError, TransientChannelError
from ops.harness.daemon import REPO
from tests.support.providers import ScriptedProvider
from tests.support.sends import enrolled_send, plan

LOG_ONE_LINE = ("from ground.settings import load_settings; from daemon.logging_setup import setup_logging; "
                "import logging; setup_logging('INFO', load_settings().log_format); "
                "logging.getLogger('demo').info('hello', extra={'send_id': 7, 'channel': 'sms', 'campaign': 3})")


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTIOND_")}
    env["PYTHONPATH"] = str(REPO)
    env.update({f"RETENTIOND_{k}": v for k, v in settings.items()})
    return env


def _stderr_on_a_terminal(env: dict[str, str]) -> str:
    """Run LOG_ONE_LINE with its stderr on a pseudo-terminal; what the terminal showed."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.run([sys.executable, "-c", LOG_ONE_LINE], env=env, stderr=follower,
                                 stdout=subprocess.DEVNULL, timeout=60, check=True)
        assert process.returncode == 0
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: all read
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(leader)


def test_a_terminal_gets_text_and_a_pipe_gets_json() -> None:
    # Given no LOG_FORMAT setting: a person at a terminal reads text...
    shown = _stderr_on_a_terminal(_env())
    assert "INFO" in shown and "demo: hello [send_id=7 channel=sms campaign=3]" in shown
    assert not shown.lstrip().startswith("{")
    # ...and a pipe (systemd, a log shipper) gets JSON lines
    piped = subprocess.run([sys.executable, "-c", LOG_ONE_LINE], env=_env(), capture_output=True, text=True,
                           timeout=60, check=True).stderr
    assert json.loads(piped.strip())["message"] == "hello"
    # An explicit LOG_FORMAT wins over the guess, both ways
    assert json.loads(_stderr_on_a_terminal(_env(LOG_FORMAT="json")).strip())["message"] == "hello"
    piped_text = subprocess.run([sys.executable, "-c", LOG_ONE_LINE], env=_env(LOG_FORMAT="text"),
                                capture_output=True, text=True, timeout=60, check=True).stderr
    assert "demo: hello [send_id=7" in piped_text


def test_json_lines_have_an_rfc3339_utc_time_and_the_send_as_fields() -> None:
    piped = subprocess.run([sys.executable, "-c", LOG_ONE_LINE], env=_env(LOG_FORMAT="json"),
                           capture_output=True, text=True, timeout=60, check=True).stderr
    line = json.loads(piped.strip())
    assert line["time"].endswith("Z") and "T" in line["time"]
    at = dt.datetime.fromisoformat(line["time"])
    assert at.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - at).total_seconds()) < 300
    assert (line["send_id"], line["channel"], line["campaign"]) == (7, "sms", 3)
    assert line["message"] == "hello"


# -- every send held back or failed is told once --------------------------------------------------


def _about(caplog: pytest.LogCaptureFixture, send_id: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "engine.outcomes" and getattr(r, "send_id", None) == send_id]


def test_a_send_deferred_by_quiet_hours_says_so_once(stub_pipeline, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="engine.outcomes")
    # Given a newcomer's SMS at a time of day that is quiet for the contact
    p = stub_pipeline({"sms": ScriptedProvider()}, DAILY_CAP="0", QUIET_HOURS="00:00-23:59")
    send, _ = enrolled_send("sms", timezone="Europe/Paris")
    # When the daemon takes it
    p.relay_and_wait()
    # Then one INFO line says it was deferred, why, and until when, with the send as fields
    [record] = _about(caplog, send.id)
    assert record.levelno == logging.INFO
    assert (record.channel, record.campaign) == ("sms", send.campaign_id)  # type: ignore[attr-defined]
    message = record.getMessage()
    assert "deferred" in message and "quiet hours" in message and "until" in message and "UTC" in message


def test_a_skipped_send_says_so_once(stub_pipeline, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="engine.outcomes")
    p = stub_pipeline({"sms": ScriptedProvider()}, DAILY_CAP="0", QUIET_HOURS="off")
    send, _ = enrolled_send("sms", consent={"sms": False})
    p.relay_and_wait()
    [record] = _about(caplog, send.id)
    assert record.levelno == logging.INFO
    assert "skipped" in record.getMessage() and "no consent for sms" in record.getMessage()


def test_failed_sends_are_warnings_with_their_reason(stub_pipeline, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="engine.outcomes")
    provider = ScriptedProvider(script={"+15550000000": [PermanentChannelError("invalid number")],
                                        "+15550000003": [TransientChannelError("503")] * 10})
    p = stub_pipeline({"sms": provider}, MAX_RETRIES="1")
    refused, doomed, fine = plan("refused", recipient="+15550000000"), plan("doomed", recipient="+15550000003"), plan("ok")
    p.relay_and_wait()
    [refused_line] = _about(caplog, refused.id)
    assert refused_line.levelno == logging.WARNING and "invalid number" in refused_line.getMessage()
    assert refused_line.channel == "sms"  # type: ignore[attr-defined]
    [doomed_line] = _about(caplog, doomed.id)
    assert doomed_line.levelno == logging.WARNING and "retries exhausted" in doomed_line.getMessage()
    assert _about(caplog, fine.id) == []  # a sent message is the normal case: no line


def test_a_send_that_fails_at_planning_says_so_once(migrated_db: str, caplog) -> None:  # type: ignore[no-untyped-def]
    from db.models import Send, utcnow
    from engine.campaigns import enrol
    from engine.planner import plan_due_steps
    from tests.support.campaigns import campaign_with, contacts
    from tests.support.settings import PLANNER_SETTINGS

    caplog.set_level(logging.INFO, logger="engine.outcomes")
    # Given a campaign step whose template names a field no contact has
    campaign = campaign_with("Hi {{ contact.nme }}")
    enrol(contacts(1), campaign)
    # When the scheduler plans it
    plan_due_steps(PLANNER_SETTINGS, utcnow() + dt.timedelta(seconds=1))
    # Then one WARNING line names the send, its channel and campaign, and the error
    failed = Send.get()
    [record] = _about(caplog, failed.id)
    assert record.levelno == logging.WARNING and "template error" in record.getMessage()
    assert "nme" in record.getMessage()
    assert (record.channel, record.campaign) == ("sms", campaign.id)  # type: ignore[attr-defined]
