"""CLI parity with the admin API for what an operator does from a shell: `retentiond report
campaign`, `retentiond preview`, `retentiond test-send`, run as real commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.models import Attribution, Campaign, CampaignStep, Contact, InboundEvent, Send
from ops.harness.daemon import base_env, cli
from ops.harness.simulator_process import SimulatorProcess

CAMPAIGN = """\
slug: welcome
name: Welcome series
trigger: manual
steps:
  - channel: sms
    delay: 0s
    body: "Hi {{ contact.name }}: {{ link('https://example.com/o') }}"
  - channel: email
    delay: 1d
    subject: "Still there, {{ contact.nme }}?"
    body: "..."
"""


@pytest.fixture
def env(sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    env = base_env(DATABASE_URL=sqlite_url)
    assert cli("migrate", env=env).returncode == 0
    (tmp_path / "welcome.yaml").write_text(CAMPAIGN)
    assert cli("campaign", "apply", str(tmp_path / "welcome.yaml"), env=env).returncode == 0
    init_database(sqlite_url)
    try:
        campaign = Campaign.get()
        sms = CampaignStep.get(CampaignStep.position == 0)
        ada = Contact.create(email="ada@example.com", name="Ada", phone="+12015550100")
        for key, status in (("a", "sent"), ("b", "sent"), ("c", "failed")):
            send = Send.create(idempotency_key=key, channel="sms", status=status, contact=ada.id, campaign=campaign.id,
                               step=sms.id)
        event = InboundEvent.create(source="s", event_id="e", type="conversion", payload="{}")
        Attribution.create(event=event.id, kind="conversion", contact=ada.id, send=send.id, campaign=campaign.id,
                           step=sms.id, value=19.5)
    finally:
        close_database()
    return env


def test_report_campaign_prints_the_funnel_and_its_json_is_the_apis(env: dict[str, str]) -> None:
    result = cli("report", "campaign", "welcome", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "welcome: Welcome series" in lines[0]
    step0 = next(line for line in lines if line.strip("│┃ ").startswith("0 "))
    assert "sms" in step0 and " 3 " in step0 and "19.50" in step0  # planned 3, revenue
    assert "conversion = converting contacts / sent" in result.stdout
    as_json = json.loads(cli("report", "campaign", "welcome", "--json", env=env).stdout)
    assert (as_json["overall"]["planned"], as_json["overall"]["sent"], as_json["overall"]["failed"]) == (3, 2, 1)
    assert as_json["overall"]["converted"] == 1 and as_json["overall"]["conversion_rate"] == 0.5
    missing = cli("report", "campaign", "nope", env=env)
    assert missing.returncode == 5 and missing.stderr.strip() == "retentiond: error: no campaign 'nope'"


def test_preview_renders_for_a_contact_and_a_typo_is_one_line_and_exit_6(env: dict[str, str]) -> None:
    shown = cli("preview", "welcome", "0", "--email", "ADA@example.com", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "to: +12015550100" in shown.stdout and "Hi Ada: http" in shown.stdout
    assert "-> https://example.com/o" in shown.stdout
    typo = cli("preview", "welcome", "1", env=env)
    assert typo.returncode == 6
    assert typo.stderr.startswith("retentiond: error: step 1 does not render: subject: ") and "nme" in typo.stderr
    assert len(typo.stderr.strip().splitlines()) == 1
    assert cli("preview", "welcome", "5", env=env).returncode == 5


def test_test_send_reaches_the_provider_and_says_so(env: dict[str, str], tmp_path: Path) -> None:
    simulator = SimulatorProcess(tmp_path).start()
    try:
        with_provider = {**env, **{f"RETENTIOND_{k}": v for k, v in simulator.provider_env().items()}}
        sent = cli("test-send", "welcome", "0", "--to", "+1 201 555 0199", env=with_provider)
        assert sent.returncode == 0, sent.stderr
        assert "to: +12015550199" in sent.stdout and "sent by twilio" in sent.stdout
        assert simulator.stats()["by_channel"] == {"sms": 1}
        refused = cli("test-send", "welcome", "1", "--to", "qa@example.com", env=with_provider)
        assert refused.returncode == 6 and "nothing was sent" in refused.stderr
        assert simulator.stats()["received"] == 1
    finally:
        simulator.stop()
