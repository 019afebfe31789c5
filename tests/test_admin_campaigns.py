"""Operating a running campaign through the admin API: pause, resume, archive, enrol and unenrol,
seen through what the planner then does (both engines)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from daemon.web.app import build_admin_app
from db.models import Contact, Enrolment, Send, utcnow
from engine.outcomes import advance_enrolments
from engine.planner import plan_due_steps
from tests.support.settings import make_settings

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TWO_STEPS = """\
slug: onboarding
name: Onboarding
trigger: {event: contact.upsert}
steps:
  - {channel: sms, delay: 0s, body: "one"}
  - {channel: sms, delay: 1h, body: "two"}
"""


@pytest.fixture
def settings(migrated_db: str):  # type: ignore[no-untyped-def]
    return make_settings(DATABASE_URL=migrated_db, ADMIN_TOKEN=TOKEN)


@pytest.fixture
async def api(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_admin_app(settings))
    async with client.put("/api/v1/campaigns", data=TWO_STEPS, headers=AUTH) as response:
        assert response.status == 200
    return client


async def call(api: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with api.request(method, path, headers=AUTH, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


def planned_bodies() -> list[str]:
    return [s.body for s in Send.select().order_by(Send.id)]


async def test_a_paused_campaign_plans_nothing_and_takes_no_one_until_resumed(api, settings) -> None:  # type: ignore[no-untyped-def]
    # Given a contact enrolled (its first step planned at once) and its step done
    status, ada = await call(api, "POST", "/api/v1/contacts", json={"email": "ada@example.com"})
    assert status == 200 and planned_bodies() == ["one"]
    enrolment = Enrolment.get()
    advance_enrolments([enrolment.id], utcnow() - dt.timedelta(hours=2))  # step two due an hour ago
    # When the operator pauses the campaign
    status, campaign = await call(api, "POST", "/api/v1/campaigns/onboarding/pause")
    assert (status, campaign["state"]) == (200, "paused") and campaign["paused_at"].endswith("Z")
    # Then the due step is not planned, and no one new enters, by trigger or by hand
    plan_due_steps(settings, utcnow())
    assert planned_bodies() == ["one"] and Enrolment.get().status == "paused"
    status, bob = await call(api, "POST", "/api/v1/contacts", json={"email": "bob@example.com"})
    assert status == 200 and bob["notes"] == ["campaign 'onboarding' is paused"]
    status, problem = await call(api, "POST", "/api/v1/campaigns/onboarding/enrolments",
                                 json={"contact_id": bob["contact"]["id"]})
    assert status == 409 and problem["detail"] == "campaign 'onboarding' is paused"
    # and re-applying its file does not lift the operator's pause
    status, _ = await call(api, "PUT", "/api/v1/campaigns", data=TWO_STEPS.replace("one", "One"))
    assert status == 200 and (await call(api, "GET", "/api/v1/campaigns/onboarding"))[1]["state"] == "paused"
    # When it is resumed, Then the step due during the pause is planned at the next tick
    status, campaign = await call(api, "POST", "/api/v1/campaigns/onboarding/resume")
    assert (status, campaign["state"], campaign["paused_at"]) == (200, "running", None)
    plan_due_steps(settings, utcnow())
    assert planned_bodies() == ["one", "two"]


async def test_a_step_under_way_when_paused_waits_for_the_resume_before_the_next(api, settings) -> None:  # type: ignore[no-untyped-def]
    await call(api, "POST", "/api/v1/contacts", json={"email": "ada@example.com"})
    enrolment = Enrolment.get()
    assert enrolment.status == "waiting"  # step one planned, not yet sent
    await call(api, "POST", "/api/v1/campaigns/onboarding/pause")
    # When step one is done during the pause
    advance_enrolments([enrolment.id], utcnow() - dt.timedelta(hours=2))
    # Then step two is not planned until the resume
    assert Enrolment.get().status == "paused"
    plan_due_steps(settings, utcnow())
    assert planned_bodies() == ["one"]
    await call(api, "POST", "/api/v1/campaigns/onboarding/resume")
    plan_due_steps(settings, utcnow())
    assert planned_bodies() == ["one", "two"]


async def test_an_archived_campaign_is_ended_hidden_from_the_list_and_not_resumed(api) -> None:  # type: ignore[no-untyped-def]
    await call(api, "POST", "/api/v1/contacts", json={"email": "ada@example.com"})
    assert [s.status for s in Send.select()] == ["planned"]  # in the outbox, not yet relayed
    status, campaign = await call(api, "POST", "/api/v1/campaigns/onboarding/archive")
    assert (status, campaign["state"]) == (200, "archived")
    assert [(e.status, e.exit_reason) for e in Enrolment.select()] == [("exited", "campaign archived")]
    # its send still in the outbox does not go out
    assert [(s.status, s.reason) for s in Send.select()] == [("skipped", "campaign archived")]
    assert (await call(api, "GET", "/api/v1/campaigns"))[1]["items"] == []
    assert [c["slug"] for c in (await call(api, "GET", "/api/v1/campaigns?archived=true"))[1]["items"]] == ["onboarding"]
    status, problem = await call(api, "POST", "/api/v1/campaigns/onboarding/resume")
    assert status == 409 and "archived" in problem["detail"]
    # archiving again changes nothing
    again = (await call(api, "POST", "/api/v1/campaigns/onboarding/archive"))[1]
    assert again["archived_at"] == campaign["archived_at"]


async def test_enrol_and_unenrol_by_hand(api, settings) -> None:  # type: ignore[no-untyped-def]
    await call(api, "PUT", "/api/v1/campaigns", data=TWO_STEPS.replace("{event: contact.upsert}", "manual"))
    ada = Contact.create(email="ada@example.com")
    status, enrolment = await call(api, "POST", "/api/v1/campaigns/onboarding/enrolments", json={"contact_id": ada.id})
    assert (status, enrolment["contact_id"], enrolment["status"]) == (200, ada.id, "waiting")
    assert planned_bodies() == ["one"]  # no delay: planned at once
    # enrolling again leaves it as it is
    assert (await call(api, "POST", "/api/v1/campaigns/onboarding/enrolments", json={"contact_id": ada.id}))[1]["id"] \
        == enrolment["id"]
    listed = (await call(api, "GET", "/api/v1/campaigns/onboarding/enrolments?status=waiting"))[1]["items"]
    assert [e["id"] for e in listed] == [enrolment["id"]]
    status, ended = await call(api, "DELETE", f"/api/v1/campaigns/onboarding/enrolments/{ada.id}")
    assert (status, ended["status"], ended["exit_reason"]) == (200, "exited", "unenrolled by an operator")
    assert (await call(api, "DELETE", "/api/v1/campaigns/onboarding/enrolments/999"))[0] == 404
    assert (await call(api, "POST", "/api/v1/campaigns/onboarding/enrolments", json={"contact_id": 999}))[0] == 404
    assert (await call(api, "POST", "/api/v1/campaigns/nope/enrolments", json={"contact_id": ada.id}))[0] == 404
