"""The admin API (/api/v1 on the operators' listener), as an operator's script uses it: typed
resources, RFC 9457 problems for every error, cursor pagination, and the OpenAPI 3.1 document the
schemas come from. Both engines."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.web.app import build_admin_app
from db.models import Contact, Decision, InboundEvent, Send, Suppression
from tests.support.settings import make_settings

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"

CAMPAIGN_YAML = """\
slug: welcome
name: Welcome
trigger: manual
steps:
  - channel: sms
    delay: 0s
    body: "Hi {{ contact.name }}"
  - channel: email
    delay: 1d
    subject: "Still there?"
    body: "..."
"""


@pytest.fixture
async def api(aiohttp_client, migrated_db: str):  # type: ignore[no-untyped-def]
    return await aiohttp_client(build_admin_app(make_settings(DATABASE_URL=migrated_db, ADMIN_TOKEN=TOKEN)))


async def call(api: Any, method: str, path: str, **kwargs: Any) -> tuple[int, str, Any]:
    async with api.request(method, path, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs) as response:
        text = await response.text()
        body = json.loads(text) if text else None
        return response.status, response.content_type, body


# -- problems ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("GET", "/api/v1/no-such-thing", {}, 404),
    ("GET", "/api/v1/contacts/999", {}, 404),
    ("GET", "/api/v1/contacts/abc", {}, 404),
    ("DELETE", "/api/v1/contacts/history", {}, 405),
    ("PATCH", "/api/v1/contacts", {}, 405),
    ("GET", "/api/v1/contacts?limit=0", {}, 400),
    ("GET", "/api/v1/contacts?cursor=made-up", {}, 400),
    ("POST", "/api/v1/contacts", {"data": b"{not json"}, 400),
    ("POST", "/api/v1/contacts", {"data": b"\xff\xfe"}, 400),
    ("POST", "/api/v1/contacts", {}, 400),
    ("POST", "/api/v1/contacts", {"json": {"emial": "ada@example.com"}}, 400),
    ("POST", "/api/v1/contacts", {"json": {"external_id": False}}, 400),
    ("POST", "/api/v1/contacts", {"json": {"email": "not-an-address"}}, 400),
    ("POST", "/api/v1/contacts", {"json": {"external_id": "u\u0000"}}, 400),
    ("POST", "/api/v1/contacts", {"data": b'{"external_id": "\\ud800"}'}, 400),
    ("POST", "/api/v1/contacts", {"data": lambda: io.BytesIO(b"x" * (2 * 1024 * 1024))}, 413),
    ("PUT", "/api/v1/campaigns", {"data": "slug: Not A Slug\n"}, 422),
    # found by a review: recursion errors were 500s
    ("POST", "/api/v1/contacts", {"data": "[" * 5000 + "]" * 5000}, 400),
    ("PUT", "/api/v1/campaigns", {"data": "- " * 5000}, 422),
    ("PUT", "/api/v1/campaigns", {"data": "[" * 5000}, 422),
])
async def test_every_error_is_a_problem_document_naming_the_status(  # type: ignore[no-untyped-def]
        api, method: str, path: str, kwargs: dict, status: int, caplog: pytest.LogCaptureFixture) -> None:
    kwargs = {k: v() if callable(v) else v for k, v in kwargs.items()}  # a stream is read once
    got, content_type, body = await call(api, method, path, **kwargs)
    assert (got, content_type) == (status, PROBLEM), body
    assert body["status"] == status and body["title"] and body["detail"] and body["type"] == "about:blank"
    # a client error is the client's: no traceback in the daemon's log
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_without_the_token_every_resource_is_refused_with_a_problem(api, aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        async with api.get("/api/v1/contacts", headers=headers) as response:
            assert (response.status, response.content_type) == (401, PROBLEM)
            assert response.headers["WWW-Authenticate"] == "Bearer"
    # no token configured: the API is off, and says so
    off = await aiohttp_client(build_admin_app(make_settings(DATABASE_URL=migrated_db)))
    async with off.get("/api/v1/stats", headers=AUTH) as response:
        assert response.status == 401 and "ADMIN_TOKEN" in (await response.json())["detail"]
    # the OpenAPI document is readable without it (it holds no data)
    async with off.get("/api/v1/openapi.json") as response:
        assert response.status == 200


async def test_an_unexpected_failure_is_a_500_problem_with_the_traceback_only_in_the_log(  # type: ignore[no-untyped-def]
        api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from daemon.web.api import stats

    def broken() -> dict:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(stats, "overview", broken)
    status, content_type, body = await call(api, "GET", "/api/v1/stats")
    assert (status, content_type) == (500, PROBLEM)
    assert "secret internals" not in json.dumps(body)
    assert any("secret internals" in (r.exc_text or "") or r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)


# -- contacts ------------------------------------------------------------------------------------


async def test_upsert_follows_the_contact_upsert_rules_and_get_finds_it_by_every_key(api) -> None:  # type: ignore[no-untyped-def]
    # Given a contact upserted through the API, with keys written loosely
    status, _, body = await call(api, "POST", "/api/v1/contacts", json={
        "external_id": "u-1", "email": " Ada@Example.COM ", "phone": "(201) 555-0100", "name": "Ada",
        "attributes": {"plan": "pro"}, "consent": {"sms": True}})
    assert status == 200 and body["created"] is True
    contact = body["contact"]
    # Then the keys are normalised as a webhook's would be, and times carry their zone
    assert (contact["email"], contact["phone"]) == ("ada@example.com", "+12015550100")
    assert contact["created_at"].endswith("Z") and contact["attributes"] == {"plan": "pro"}
    # and a second upsert by another key updates the same contact
    status, _, again = await call(api, "POST", "/api/v1/contacts", json={"email": "ada@example.com", "name": "Ada L."})
    assert (status, again["created"], again["contact"]["id"], again["contact"]["name"]) == (200, False, contact["id"], "Ada L.")
    # When it is looked up by id, external id, email or phone, Then each finds it
    assert (await call(api, "GET", f"/api/v1/contacts/{contact['id']}"))[2]["name"] == "Ada L."
    for query in ("external_id=u-1", "email=ADA@example.com", "phone=%2B12015550100", "q=ada"):
        status, _, page = await call(api, "GET", f"/api/v1/contacts?{query}")
        assert status == 200 and [c["id"] for c in page["items"]] == [contact["id"]], query
    assert (await call(api, "GET", "/api/v1/contacts?email=nobody@example.com"))[2]["items"] == []


async def test_upsert_with_a_campaign_enrols_and_an_unknown_campaign_writes_nothing(api) -> None:  # type: ignore[no-untyped-def]
    assert (await call(api, "PUT", "/api/v1/campaigns", data=CAMPAIGN_YAML, headers={"Content-Type": "application/yaml"}))[0] == 200
    status, _, body = await call(api, "POST", "/api/v1/contacts", json={"email": "a@example.com", "campaign": "welcome"})
    assert status == 200
    status, _, problem = await call(api, "POST", "/api/v1/contacts", json={"email": "b@example.com", "campaign": "nope"})
    assert status == 404 and problem["detail"] == "no campaign 'nope'"
    assert [c.email for c in Contact.select()] == ["a@example.com"]
    # and the enrolled contact's first step (no delay) is planned at once, as for a webhook lead
    assert [(s.contact_id, s.channel) for s in Send.select()] == [(body["contact"]["id"], "sms")]


async def test_suppress_and_unsuppress_per_channel(api) -> None:  # type: ignore[no-untyped-def]
    contact_id = (await call(api, "POST", "/api/v1/contacts", json={"email": "a@example.com"}))[2]["contact"]["id"]
    status, _, body = await call(api, "POST", f"/api/v1/contacts/{contact_id}/suppressions", json={"channel": "email"})
    assert status == 200 and [(s["channel"], s["reason"]) for s in body["suppressions"]] == [("email", "operator")]
    await call(api, "POST", f"/api/v1/contacts/{contact_id}/suppressions", json={})  # every channel
    assert sorted(s.channel for s in Suppression.select()) == ["*", "email"]
    status, _, body = await call(api, "DELETE", f"/api/v1/contacts/{contact_id}/suppressions/email")
    assert status == 200 and [s["channel"] for s in body["suppressions"]] == ["*"]
    assert (await call(api, "DELETE", f"/api/v1/contacts/{contact_id}/suppressions/fax"))[0] == 400
    assert (await call(api, "POST", f"/api/v1/contacts/{contact_id}/suppressions", json={"channel": "fax"}))[0] == 400


async def test_the_decision_log_is_paged_newest_first(api) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com")
    for i in range(5):
        Decision.create(contact=ada.id, channel="sms", outcome="skipped", reason=f"reason {i}")
    status, _, first = await call(api, "GET", f"/api/v1/contacts/{ada.id}/decisions?limit=3")
    assert status == 200 and [d["reason"] for d in first["items"]] == ["reason 4", "reason 3", "reason 2"]
    _, _, second = await call(api, "GET", f"/api/v1/contacts/{ada.id}/decisions?limit=3&cursor={first['next_cursor']}")
    assert [d["reason"] for d in second["items"]] == ["reason 1", "reason 0"] and second["next_cursor"] is None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(total=st.integers(0, 12), limit=st.integers(1, 5))
async def test_paging_through_a_list_gives_every_item_once_in_order(api, total: int, limit: int) -> None:  # type: ignore[no-untyped-def]
    # Whatever the page size: the pages, concatenated, are the whole list (no gap, no repeat)
    Contact.delete().execute()
    ids = [Contact.create(external_id=f"u-{i}").id for i in range(total)]
    seen: list[int] = []
    cursor = ""
    while True:
        status, _, page = await call(api, "GET", f"/api/v1/contacts?limit={limit}{cursor}")
        assert status == 200 and len(page["items"]) <= limit
        seen += [c["id"] for c in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == ids


# -- sends, events, campaigns --------------------------------------------------------------------


async def test_sends_are_listed_by_filter_without_their_message(api) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com")
    Send.create(idempotency_key="a", channel="sms", status="sent", contact=ada.id, body="secret text",
                recipient="+12015550100")
    Send.create(idempotency_key="b", channel="email", status="failed", contact=ada.id, reason="bounced")
    status, _, page = await call(api, "GET", "/api/v1/sends?status=failed")
    assert status == 200 and [(s["channel"], s["reason"]) for s in page["items"]] == [("email", "bounced")]
    _, _, page = await call(api, "GET", f"/api/v1/sends?contact_id={ada.id}&channel=sms")
    assert [s["status"] for s in page["items"]] == ["sent"]
    assert "secret text" not in json.dumps(page) and "+12015550100" not in json.dumps(page)
    assert (await call(api, "GET", "/api/v1/sends?status=lost"))[0] == 400


async def test_a_failed_event_is_replayed_and_a_processed_one_is_not(api) -> None:  # type: ignore[no-untyped-def]
    failed = InboundEvent.create(source="shop", event_id="e1", type="conversion", payload="{}", status="failed",
                                 error="ValueError: boom")
    done = InboundEvent.create(source="shop", event_id="e2", type="conversion", payload="{}", status="processed")
    status, _, page = await call(api, "GET", "/api/v1/events?status=failed&source=shop")
    assert status == 200 and [e["event_id"] for e in page["items"]] == ["e1"]
    status, _, body = await call(api, "POST", f"/api/v1/events/{failed.id}/replay")
    assert (status, body["status"], body["error"]) == (200, "pending", None)
    assert InboundEvent.get_by_id(failed.id).status == "pending"
    status, _, problem = await call(api, "POST", f"/api/v1/events/{done.id}/replay")
    assert status == 409 and "only a failed event" in problem["detail"]
    assert (await call(api, "POST", "/api/v1/events/999999/replay"))[0] == 404


async def test_a_campaign_applies_from_yaml_or_json_with_the_clis_checks(api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from ops.harness.daemon import base_env, cli

    status, _, body = await call(api, "PUT", "/api/v1/campaigns", data=CAMPAIGN_YAML)
    assert (status, body["action"], body["version"]) == (200, "created", 1)
    as_json = json.dumps({**yaml.safe_load(CAMPAIGN_YAML), "name": "Welcome!"})
    status, _, body = await call(api, "PUT", "/api/v1/campaigns", data=as_json, headers={"Content-Type": "application/json"})
    assert (status, body["action"], body["version"]) == (200, "updated", 2)
    status, _, campaign = await call(api, "GET", "/api/v1/campaigns/welcome")
    assert campaign["name"] == "Welcome!" and [s["channel"] for s in campaign["steps"]] == ["sms", "email"]
    assert (await call(api, "GET", "/api/v1/campaigns"))[2]["items"][0]["slug"] == "welcome"
    # A broken file: every problem listed, in the words `retentiond campaign apply` prints
    broken = "slug: welcome\nname: W\ntrigger: {event: signup}\nsteps:\n  - channel: fax\n    delay: 1x\n    body: hi\n"
    status, _, problem = await call(api, "PUT", "/api/v1/campaigns", data=broken)
    (tmp_path / "broken.yml").write_text(broken)
    printed = cli("campaign", "apply", str(tmp_path / "broken.yml"), env=base_env()).stderr
    assert status == 422 and len(problem["errors"]) == 3
    for error in problem["errors"]:
        assert error["message"].removeprefix("campaign: ") in printed


# -- the document --------------------------------------------------------------------------------


async def test_the_openapi_document_is_3_1_and_gives_every_operation_its_schemas(api) -> None:  # type: ignore[no-untyped-def]
    status, _, spec = await call(api, "GET", "/api/v1/openapi.json")
    assert status == 200 and spec["openapi"] == "3.1.0"
    schemas = spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            ok = [s for s in operation["responses"] if s.startswith("2")]
            assert ok, where
            for status_code, response in operation["responses"].items():
                if status_code == "204":
                    continue
                (media, content), = response["content"].items()
                assert media == ("application/json" if status_code.startswith("2") else PROBLEM), where
                assert content["schema"]["$ref"].rsplit("/", 1)[1] in schemas, where
            assert {"400", "401", "500"} <= set(operation["responses"]) or operation.get("security") == [], where


async def test_a_failed_send_is_requeued_detached_from_its_enrolment_and_others_are_not(api) -> None:  # type: ignore[no-untyped-def]
    from db.models import Campaign, Enrolment
    from engine.sends import due

    ada = Contact.create(email="ada@example.com")
    campaign = Campaign.create(slug="c", name="C")
    enrolment = Enrolment.create(contact=ada.id, campaign=campaign.id, status="waiting", next_position=1)
    failed = Send.create(idempotency_key="f", channel="email", status="failed", contact=ada.id, enrolment=enrolment.id,
                         attempts=5, reason="retries exhausted", error="401 bad credentials")
    sent = Send.create(idempotency_key="s", channel="email", status="sent", contact=ada.id)
    # When the operator re-queues the dead letter
    status, _, body = await call(api, "POST", f"/api/v1/sends/{failed.id}/requeue")
    # Then it is in the outbox, due now, with a fresh start and the same idempotency key
    assert (status, body["status"], body["attempts"], body["error"]) == (200, "planned", 0, None)
    row = Send.get_by_id(failed.id)
    assert (row.idempotency_key, row.enrolment_id) == ("f", None)  # its outcome will not move the enrolment
    assert (failed.id, "email") in due(utcnow_plus_a_second(), {"email": 10})
    assert Decision.get(Decision.send == failed.id).outcome == "requeued"
    # and a send in any other status is refused
    status, _, problem = await call(api, "POST", f"/api/v1/sends/{sent.id}/requeue")
    assert status == 409 and "only a failed send" in problem["detail"]
    assert (await call(api, "POST", f"/api/v1/sends/{failed.id}/requeue"))[0] == 409  # planned now
    assert (await call(api, "POST", "/api/v1/sends/999999/requeue"))[0] == 404


def utcnow_plus_a_second():  # type: ignore[no-untyped-def]
    import datetime as dt

    from db.models import utcnow

    return utcnow() + dt.timedelta(seconds=1)


async def test_a_search_for_text_with_an_at_sign_that_is_no_address_is_a_search_not_a_500(api) -> None:  # type: ignore[no-untyped-def]
    # found by schemathesis: q="«eÅ@ò\x9c\x85ºa..." made the address normaliser raise
    Contact.create(email="ada@example.com", name="Ada")
    for q in ("«eÅ@\U0001c17aa\x92", "@", "ada@", "ADA@EXAMPLE.COM", "ada\\", "%", "_", "a%\\_"):
        status, _, page = await call(api, "GET", "/api/v1/contacts", params={"q": q})
        assert status == 200, (q, page)
    assert [c["email"] for c in (await call(api, "GET", "/api/v1/contacts", params={"q": "ADA@EX"}))[2]["items"]] \
        == ["ada@example.com"]



async def test_a_send_whose_failure_fell_back_or_whose_campaign_is_archived_is_not_requeued(api) -> None:  # type: ignore[no-untyped-def]
    # found by a review: re-queueing a send that had fallen back delivered the message twice
    from db.models import Campaign

    ada = Contact.create(email="ada@example.com")
    failed = Send.create(idempotency_key="f", channel="sms", status="failed", contact=ada.id)
    Send.create(idempotency_key="f.fallback", channel="email", status="sent", contact=ada.id, fallback_of=failed.id)
    status, _, problem = await call(api, "POST", f"/api/v1/sends/{failed.id}/requeue")
    assert status == 409 and "fallback" in problem["detail"]
    archived = Campaign.create(slug="old", name="Old", archived_at=utcnow_plus_a_second())
    old = Send.create(idempotency_key="o", channel="sms", status="failed", contact=ada.id, campaign=archived.id)
    status, _, problem = await call(api, "POST", f"/api/v1/sends/{old.id}/requeue")
    assert status == 409 and "archived" in problem["detail"]
    assert {s.status for s in Send.select().where(Send.id.in_([failed.id, old.id]))} == {"failed"}


async def test_an_upsert_naming_a_paused_campaign_is_a_409_whatever_its_slug(api) -> None:  # type: ignore[no-untyped-def]
    # found by a review: the status was chosen by the word "unknown" in the message
    await call(api, "PUT", "/api/v1/campaigns", data=CAMPAIGN_YAML.replace("slug: welcome", "slug: unknown-offer"))
    await call(api, "POST", "/api/v1/campaigns/unknown-offer/pause")
    status, _, problem = await call(api, "POST", "/api/v1/contacts", json={"email": "a@example.com",
                                                                         "campaign": "unknown-offer"})
    assert status == 409 and problem["detail"] == "campaign 'unknown-offer' is paused"
    assert (await call(api, "POST", "/api/v1/contacts", json={"email": "a@example.com", "campaign": "nope"}))[0] == 404


async def test_a_page_of_contacts_or_campaigns_costs_the_same_queries_for_2_or_50(api, statements) -> None:  # type: ignore[no-untyped-def]
    # a review of the change: each contact's suppressions (each campaign's steps) were a query of its own
    from db.models import Campaign, CampaignStep, Suppression

    for i in range(50):
        contact = Contact.create(external_id=f"c{i}")
        Suppression.create(contact=contact.id, channel="sms", reason="stop")
        campaign = Campaign.create(slug=f"k{i}", name=f"K{i}")
        CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="hi")

    async def cost(path: str) -> int:
        statements.count = 0
        status, _, page = await call(api, "GET", path)
        assert status == 200 and page["items"]
        return statements.count

    await cost("/api/v1/contacts?limit=1")  # PostgreSQL: a pooled connection is checked on its first use
    for resource in ("contacts", "campaigns"):
        assert await cost(f"/api/v1/{resource}?limit=2") == await cost(f"/api/v1/{resource}?limit=50"), resource
