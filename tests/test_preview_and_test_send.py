"""Preview and test-send of a campaign step (admin API): a preview catches a template typo before
any send; a test send reaches the provider (the simulator, through the real Postmark and Twilio
clients) and never counts in the campaign's analytics (both engines)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.web.app import build_admin_app
from db.models import Contact, Send
from ops.harness.simulator_process import SimulatorProcess
from tests.support.settings import make_settings

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CAMPAIGN = """\
slug: welcome
name: Welcome
trigger: manual
steps:
  - channel: email
    delay: 0s
    subject: "Hello {{ contact.name }}"
    body: "Your plan: {{ contact.attributes.plan }}. Offer: {{ link('https://example.com/offer') }}"
  - channel: sms
    delay: 1d
    body: "Hi {{ contact.nme }}, still there?"
"""


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path).start()
    yield sim
    sim.stop()


@pytest.fixture
async def api(aiohttp_client, migrated_db: str, simulator: SimulatorProcess):  # type: ignore[no-untyped-def]
    settings = make_settings(DATABASE_URL=migrated_db, ADMIN_TOKEN=TOKEN, PROVIDER_POSTMARK_BATCH_WAIT_MS="50",
                             **simulator.provider_env())
    client = await aiohttp_client(build_admin_app(settings))
    async with client.put("/api/v1/campaigns", data=CAMPAIGN, headers=AUTH) as response:
        body = await response.json()
        # applying warns about the typo (a warning: attributes may come later) and goes on
        assert response.status == 200 and any("nme" in w for w in body["warnings"])
    return client


async def call(api: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with api.request(method, path, headers=AUTH, **kwargs) as response:
        return response.status, json.loads(await response.text() or "null")


async def test_a_preview_renders_for_a_contact_or_the_sample_and_catches_a_typo_before_any_send(api) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com", name="Ada", attributes={"plan": "pro"})
    # For a real contact: her name, her attributes, her address, and the links it would track
    status, shown = await call(api, "POST", "/api/v1/campaigns/welcome/steps/0/preview", json={"contact_id": ada.id})
    assert status == 200, shown
    assert (shown["channel"], shown["recipient"], shown["subject"]) == ("email", "ada@example.com", "Hello Ada")
    assert shown["body"].startswith("Your plan: pro. Offer: http") and "/t/" in shown["body"]
    assert [link["url"] for link in shown["links"]] == ["https://example.com/offer"]
    assert shown["links"][0]["tracked"] in shown["body"]
    # For the sample contact (every field, the attributes in use)
    status, sample = await call(api, "POST", "/api/v1/campaigns/welcome/steps/0/preview", json={})
    assert status == 200 and sample["subject"] == "Hello Sample" and "pro" in sample["body"]
    # The typo of step 1 is a 422 naming the field and the name, and nothing was sent or saved
    status, problem = await call(api, "POST", "/api/v1/campaigns/welcome/steps/1/preview", json={"contact_id": ada.id})
    assert status == 422 and problem["errors"][0]["field"] == "body" and "nme" in problem["detail"]
    assert Send.select().count() == 0
    # a step or campaign that does not exist is a 404
    assert (await call(api, "POST", "/api/v1/campaigns/welcome/steps/7/preview", json={}))[0] == 404
    assert (await call(api, "POST", "/api/v1/campaigns/nope/steps/0/preview", json={}))[0] == 404


async def test_a_test_send_reaches_the_provider_and_is_absent_from_analytics(api, simulator: SimulatorProcess) -> None:  # type: ignore[no-untyped-def]
    Contact.create(email="ada@example.com", attributes={"plan": "pro"})  # the sample contact gets a plan
    # When the operator test-sends the email step to an address (written loosely)
    status, sent = await call(api, "POST", "/api/v1/campaigns/welcome/steps/0/test-send", json={"to": " QA@Example.com "})
    # Then Postmark (the simulator) got it, once, for that address
    assert status == 200, sent
    assert (sent["status"], sent["provider"], sent["error"]) == ("sent", "postmark", None)
    assert sent["message"]["recipient"] == "qa@example.com" and sent["provider_message_id"]
    assert simulator.stats()["by_channel"] == {"email": 1}
    # and it is a send of its own, marked as a test, that no campaign figure counts
    row = Send.get_by_id(sent["send_id"])
    assert (row.status, row.campaign_id, row.step_id, row.contact_id) == ("sent", None, None, None)
    assert row.idempotency_key.startswith("test-") and "test send" in row.reason
    status, analytics = await call(api, "GET", "/api/v1/campaigns/welcome/analytics")
    assert status == 200 and analytics["overall"]["planned"] == 0 and analytics["overall"]["sent"] == 0
    # An SMS step with a typo sends nothing; an address that is no phone number is a 400
    status, problem = await call(api, "POST", "/api/v1/campaigns/welcome/steps/1/test-send", json={"to": "+12015550100"})
    assert status == 422 and "nme" in problem["detail"]
    assert simulator.stats()["received"] == 1


async def test_a_test_send_the_provider_refuses_is_a_failed_send_not_an_error(  # type: ignore[no-untyped-def]
        aiohttp_client, migrated_db: str, tmp_path: Path) -> None:
    # Given a provider that answers every call with an error
    failing = SimulatorProcess(tmp_path, error_rate=1.0).start()
    try:
        settings = make_settings(DATABASE_URL=migrated_db, ADMIN_TOKEN=TOKEN, **failing.provider_env())
        api = await aiohttp_client(build_admin_app(settings))
        await call(api, "PUT", "/api/v1/campaigns", data=CAMPAIGN.replace("{{ contact.nme }}", "{{ contact.name }}"))
        # an address that is no phone number is a 400, and nothing is sent
        status, problem = await call(api, "POST", "/api/v1/campaigns/welcome/steps/1/test-send", json={"to": "no phone"})
        assert status == 400 and problem["detail"].startswith("to:")
        # When the step is test-sent, Then the answer says it failed and why, and the row says so too
        status, sent = await call(api, "POST", "/api/v1/campaigns/welcome/steps/1/test-send", json={"to": "+12015550100"})
        assert status == 200 and (sent["status"], sent["provider"]) == ("failed", "twilio"), sent
        assert sent["error"] and sent["message"]["body"] == "Hi Sample, still there?"
        assert Send.get_by_id(sent["send_id"]).status == "failed"
    finally:
        failing.stop()
