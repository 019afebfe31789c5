"""Webhook ingress in process, both engines: each sender's real signature, the contract's statuses
for bad input with nothing written, deduplication under concurrency, and what processing does."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import time

import pytest

from daemon.web.app import build_public_app
from db.models import (
    Attribution,
    Campaign,
    CampaignStep,
    Contact,
    Enrolment,
    InboundEvent,
    Send,
    Suppression,
    utcnow,
)
from engine.processing import RECEIPT_WAIT_S, process_pending
from ops.harness.signing import (
    CAL_SECRET,
    TOKEN,
    cal_signed,
    settings_for,
    standard,
    stripe_signed,
    twilio_signed,
)
from tests.support.raw_http import raw_request


@pytest.fixture
async def client(aiohttp_client, migrated_db: str):  # type: ignore[no-untyped-def]
    settings = settings_for(migrated_db)
    client = await aiohttp_client(build_public_app(settings))
    client.settings = settings
    return client


UPSERT = {"type": "contact.upsert", "data": {"email": "Ada@Example.com", "name": "Ada", "phone": "+12015550100"}}


async def post(client, path: str, signed: tuple[bytes, dict[str, str]]):  # type: ignore[no-untyped-def]
    body, headers = signed
    return await client.post(path, data=body, headers=headers)


# -- accepted, per scheme ------------------------------------------------------------------------


async def test_standard_webhook_is_committed_then_processed(client) -> None:  # type: ignore[no-untyped-def]
    response = await post(client, "/webhooks/app", standard(UPSERT, "msg_upsert"))
    assert response.status == 202 and (await response.json())["event_id"] == "msg_upsert"
    stored = InboundEvent.get()
    assert (stored.source, stored.event_id, stored.status, stored.type) == ("app", "msg_upsert", "pending",
                                                                           "contact.upsert")
    assert await asyncio.to_thread(process_pending, client.settings) == {"processed": 1}
    ada = Contact.get()
    assert (ada.email, ada.name, ada.phone) == ("ada@example.com", "Ada", "+12015550100")
    assert InboundEvent.get().status == "processed" and InboundEvent.get().contact_id == ada.id


async def test_stripe_checkout_is_a_conversion_that_exits_the_campaign(client) -> None:  # type: ignore[no-untyped-def]
    campaign = Campaign.create(slug="trial", name="Trial", exit_on=["conversion"])
    CampaignStep.create(campaign=campaign.id, position=0, channel="email", subject="s", body="b")
    ada = Contact.create(email="ada@example.com")
    Enrolment.create(contact=ada.id, campaign=campaign.id)
    event = {"id": "evt_1", "type": "checkout.session.completed",
             "data": {"object": {"customer_details": {"email": "ada@example.com"}, "amount_total": 4900}}}
    assert (await post(client, "/webhooks/stripe", stripe_signed(event))).status == 202
    await asyncio.to_thread(process_pending, client.settings)
    assert Enrolment.get().status == "exited"
    conversion = Attribution.get()
    assert (conversion.kind, conversion.value, conversion.contact_id) == ("conversion", 49.0, ada.id)


async def test_twilio_status_callback_and_stop_start(client) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(phone="+12015550100", email="ada@example.com")
    send = Send.create(idempotency_key="k", channel="sms", contact=ada.id, status="sent", provider_message_id="SM123")
    callback = twilio_signed("/webhooks/twilio", {"MessageSid": "SM123", "MessageStatus": "delivered"})
    assert (await post(client, "/webhooks/twilio", callback)).status == 202
    stop = twilio_signed("/webhooks/twilio", {"MessageSid": "SM900", "From": "+12015550100", "Body": " stop "})
    assert (await post(client, "/webhooks/twilio", stop)).status == 202
    await asyncio.to_thread(process_pending, client.settings)
    assert Send.get_by_id(send.id).delivery_status == "delivered"
    assert [(s.channel, s.reason) for s in Suppression.select()] == [("sms", "STOP")]
    start = twilio_signed("/webhooks/twilio", {"MessageSid": "SM901", "From": "+12015550100", "Body": "START"})
    assert (await post(client, "/webhooks/twilio", start)).status == 202
    await asyncio.to_thread(process_pending, client.settings)
    assert Suppression.select().count() == 0


async def test_calcom_booking_creates_the_contact_and_a_conversion(client) -> None:  # type: ignore[no-untyped-def]
    booking = {"triggerEvent": "BOOKING_CREATED", "payload": {
        "uid": "bk_1", "attendees": [{"email": "grace@example.com", "name": "Grace", "timeZone": "Europe/London"}]}}
    assert (await post(client, "/webhooks/cal", cal_signed(booking))).status == 202
    assert (await post(client, "/webhooks/cal", cal_signed(booking))).status == 200  # uid+trigger dedupe
    await asyncio.to_thread(process_pending, client.settings)
    grace = Contact.get()
    assert (grace.email, grace.timezone) == ("grace@example.com", "Europe/London")
    assert Attribution.get().name == "booking"


async def test_token_sources_take_canonical_json_postmark_bounces_and_get_postbacks(client) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com", external_id="u1")
    Send.create(idempotency_key="k", channel="email", contact=ada.id, status="sent", provider_message_id="pm-1")
    bounce = {"RecordType": "Bounce", "Type": "HardBounce", "MessageID": "pm-1", "ID": 42}
    response = await client.post("/webhooks/zap", json=bounce, headers={"X-Webhook-Token": TOKEN})
    assert response.status == 202
    postback = await client.get("/webhooks/zap", params={"token": TOKEN, "click_id": "c-77", "external_id": "u1",
                                                         "value": "12.5"})
    assert postback.status == 202
    canonical = {"event_id": "z-1", "type": "contact.unsubscribe", "data": {"email": "ada@example.com",
                                                                           "channel": "push"}}
    assert (await client.post(f"/webhooks/zap?token={TOKEN}", json=canonical)).status == 202
    await asyncio.to_thread(process_pending, client.settings)
    assert {(s.channel, s.reason) for s in Suppression.select()} == {("email", "bounced"), ("push", "unsubscribed")}
    assert Attribution.get().value == 12.5


async def test_a_verified_but_unmappable_payload_is_kept_with_its_reason(client) -> None:  # type: ignore[no-untyped-def]
    event = {"id": "evt_9", "type": "customer.created", "data": {"object": {}}}
    assert (await post(client, "/webhooks/stripe", stripe_signed(event))).status == 202
    kept = InboundEvent.get()
    assert kept.status == "unmappable" and "customer.created" in kept.error
    assert await asyncio.to_thread(process_pending, client.settings) == {}


async def test_a_click_is_attributed_to_its_send_step_and_campaign(client) -> None:  # type: ignore[no-untyped-def]
    from db.models import TrackedLink

    campaign = Campaign.create(slug="c", name="C")
    step = CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="b")
    ada = Contact.create(phone="+12015550100")
    send = Send.create(idempotency_key="k", channel="sms", contact=ada.id, campaign=campaign.id, step=step.id)
    TrackedLink.create(token="tok-click-0123456789abcd", url="https://example.com/x", contact=ada.id, send=send.id,
                       campaign=campaign.id, step=step.id)
    response = await client.get("/t/tok-click-0123456789abcd", allow_redirects=False)
    assert response.status == 302
    await asyncio.to_thread(process_pending, client.settings)
    click = Attribution.get()
    assert (click.kind, click.send_id, click.step_id, click.campaign_id) == ("click", send.id, step.id, campaign.id)


def _links_for(count: int):  # type: ignore[no-untyped-def]
    """``count`` contacts, each sent one message carrying one tracked link ``tok-<i>``."""
    from db.models import TrackedLink

    campaign = Campaign.create(slug="c", name="C")
    step = CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="b")
    sends = []
    for i in range(count):
        contact = Contact.create(phone=f"+1201555{i:04d}", external_id=f"u{i}")
        send = Send.create(idempotency_key=f"k{i}", channel="sms", contact=contact.id, campaign=campaign.id,
                           step=step.id, status="sent", finished_at=dt.datetime(2026, 1, 1))
        TrackedLink.create(token=f"tok-{i}", url="https://example.com/x", contact=contact.id, send=send.id,
                           campaign=campaign.id, step=step.id)
        sends.append(send)
    return campaign, step, sends


async def test_a_burst_of_clicks_and_a_conversion_are_applied_in_arrival_order(client) -> None:  # type: ignore[no-untyped-def]
    campaign, step, sends = _links_for(3)
    # Given clicks on every link, one on an unknown link, then a conversion by the contact who
    # clicked tok-1 (no send after the click), then more clicks: all pending in one batch
    posts = [standard({"type": "click", "data": {"token": f"tok-{i % 3}"}}, f"click-{i}") for i in range(7)]
    posts.insert(3, standard({"type": "click", "data": {"token": "tok-nope"}}, "click-unknown"))
    posts.insert(4, standard({"type": "conversion", "data": {"external_id": "u1", "name": "paid"}}, "conv"))
    for signed in posts:
        assert (await post(client, "/webhooks/app", signed)).status == 202

    assert await asyncio.to_thread(process_pending, client.settings) == {"processed": 9}

    clicks = list(Attribution.select().where(Attribution.kind == "click").order_by(Attribution.id))
    # Then every known click is attributed to the send that carried its link, in arrival order
    assert [c.send_id for c in clicks] == [sends[i % 3].id for i in range(7)]
    assert {(c.campaign_id, c.step_id) for c in clicks} == {(campaign.id, step.id)}
    # and the conversion is credited to the contact's last click before it
    conversion = Attribution.get(Attribution.kind == "conversion")
    assert (conversion.contact_id, conversion.send_id, conversion.name) == (sends[1].contact_id, sends[1].id, "paid")
    events = {e.event_id: e for e in InboundEvent.select()}
    assert {e.status for e in events.values()} == {"processed"}
    assert events["click-unknown"].error == "unknown link" and events["click-unknown"].contact_id is None
    assert events["click-4"].contact_id == sends[1].contact_id and events["click-4"].error is None
    assert await asyncio.to_thread(process_pending, client.settings) == {}  # once each


async def test_clicks_and_conversions_exit_and_trigger_the_campaigns_that_name_them(client) -> None:  # type: ignore[no-untyped-def]
    _, _, sends = _links_for(3)
    nurture = Campaign.create(slug="nurture", name="Nurture", exit_on=["click"])
    CampaignStep.create(campaign=nurture.id, position=0, channel="sms", body="b")
    clicked = Campaign.create(slug="clicked", name="Clicked", trigger_event="click")
    CampaignStep.create(campaign=clicked.id, position=0, channel="sms", body="b", delay_s=3600)
    paid = Campaign.create(slug="paid", name="Paid", trigger_event="conversion")
    CampaignStep.create(campaign=paid.id, position=0, channel="sms", body="b")
    contacts = [s.contact_id for s in sends]
    for contact_id in contacts:
        Enrolment.create(contact=contact_id, campaign=nurture.id)
    # Given clicks by the first two contacts (one run, set-based) and a conversion by the third
    for i, signed in enumerate([standard({"type": "click", "data": {"token": "tok-0"}}, "k0"),
                                standard({"type": "click", "data": {"token": "tok-1"}}, "k1"),
                                standard({"type": "click", "data": {"token": "tok-1"}}, "k2"),
                                standard({"type": "conversion", "data": {"external_id": "u2"}}, "k3")]):
        assert (await post(client, "/webhooks/app", signed)).status == 202, i
    assert await asyncio.to_thread(process_pending, client.settings) == {"processed": 4}

    def status(contact_id: int, campaign: Campaign) -> str | None:
        found = Enrolment.get_or_none(Enrolment.contact == contact_id, Enrolment.campaign == campaign.id)
        return None if found is None else f"{found.status}:{found.exit_reason or ''}"

    # Then the clickers left the campaign that exits on a click, and entered the one a click triggers
    assert [status(c, nurture) for c in contacts] == ["exited:click", "exited:click", "active:"]
    assert [status(c, clicked) for c in contacts] == ["active:", "active:", None]
    # and the converter entered the campaign a conversion triggers, once (its first step, due at
    # once, already planned by the processor: waiting for its send)
    assert [status(c, paid) for c in contacts] == [None, None, "waiting:"]
    assert Enrolment.select().where(Enrolment.campaign == clicked.id).count() == 2


async def test_a_run_of_delivery_receipts_updates_sends_and_suppresses_bounces(client) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com", phone="+12015550100")
    bob = Contact.create(email="bob@example.com")
    sms = Send.create(idempotency_key="s1", channel="sms", contact=ada.id, status="sent", provider_message_id="SM1")
    mail = Send.create(idempotency_key="e1", channel="email", contact=bob.id, status="sent", provider_message_id="pm-2")
    receipts = [("SM1", "failed"), ("pm-2", "delivered"), ("nope", "delivered"), ("SM1", "delivered"),
                ("pm-2", "bounced")]
    # Given five receipts in a row (one run): two for each send, one for a send we never made
    for i, (provider_id, status) in enumerate(receipts):
        signed = standard({"type": "delivery", "data": {"provider_message_id": provider_id, "status": status}},
                          f"r{i}")
        assert (await post(client, "/webhooks/app", signed)).status == 202
    # (the one naming no send waits for its send's result to be written: still pending)
    assert await asyncio.to_thread(process_pending, client.settings) == {"processed": 4}
    # Then each send has its last receipt's status, the bounce suppressed the address's channel only
    assert (Send.get_by_id(sms.id).delivery_status, Send.get_by_id(mail.id).delivery_status) == ("delivered",
                                                                                                 "bounced")
    assert [(s.contact_id, s.channel, s.reason) for s in Suppression.select()] == [(bob.id, "email", "bounced")]
    events = {e.event_id: e for e in InboundEvent.select()}
    assert events["r2"].status == "pending"
    assert (events["r0"].contact_id, events["r4"].contact_id) == (ada.id, bob.id)
    # When it has waited RECEIPT_WAIT_S and still names no send, it is kept, processed, with a note
    InboundEvent.update(received_at=utcnow() - dt.timedelta(seconds=RECEIPT_WAIT_S + 1)).where(
        InboundEvent.event_id == "r2").execute()
    assert await asyncio.to_thread(process_pending, client.settings) == {"processed": 1}
    late = InboundEvent.get(InboundEvent.event_id == "r2")
    assert late.error.startswith("no send with that provider_message_id") and late.contact_id is None


async def test_a_receipt_that_beats_its_sends_result_waits_for_it(client) -> None:  # type: ignore[no-untyped-def]
    # Given Twilio's "delivered" arriving before the worker wrote the message's sid on its send
    ada = Contact.create(phone="+12015550100")
    sms = Send.create(idempotency_key="s1", channel="sms", contact=ada.id, status="sending")
    signed = standard({"type": "delivery", "data": {"provider_message_id": "SM-early", "status": "delivered"}}, "early")
    assert (await post(client, "/webhooks/app", signed)).status == 202
    assert await asyncio.to_thread(process_pending, client.settings) == {}
    # When the send's result is written, then the next pass puts the receipt on it
    Send.update(status="sent", provider_message_id="SM-early").where(Send.id == sms.id).execute()
    assert await asyncio.to_thread(process_pending, client.settings) == {"processed": 1}
    assert Send.get_by_id(sms.id).delivery_status == "delivered"
    assert InboundEvent.get(InboundEvent.event_id == "early").error is None


async def test_clicks_fall_back_to_one_at_a_time_when_the_set_based_step_fails(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import engine.processing

    _, _, sends = _links_for(2)
    for i in range(4):
        assert (await post(client, "/webhooks/app", standard({"type": "click", "data": {"token": f"tok-{i % 2}"}},
                                                             f"c{i}"))).status == 202

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("lost the connection mid-statement")

    monkeypatch.setattr(engine.processing, "bulk_update", broken)
    assert await asyncio.to_thread(process_pending, client.settings) == {"processed": 4}
    # Nothing of the failed attempt is left behind: one attribution per click, not two
    assert [a.send_id for a in Attribution.select().order_by(Attribution.id)] == [sends[i % 2].id for i in range(4)]


# -- refused, with nothing written ----------------------------------------------------------------


def _bad_cases() -> list[tuple[str, str, object, int]]:
    """Signed when the test runs, not when it is collected: timestamps must be fresh (or stale) then."""
    now = dt.datetime.now(dt.UTC)
    valid_body, valid_headers = standard(UPSERT, "m-ok")
    return [
        ("missing signature", "/webhooks/app", (valid_body, {"Content-Type": "application/json"}), 401),
        ("wrong signature", "/webhooks/app", (valid_body, {**valid_headers, "webhook-signature": "v1,AAAA"}), 401),
        ("stale timestamp", "/webhooks/app", standard(UPSERT, "m1", at=now - dt.timedelta(minutes=10)), 401),
        ("future timestamp", "/webhooks/app", standard(UPSERT, "m2", at=now + dt.timedelta(minutes=10)), 401),
        ("other secret", "/webhooks/app", standard(UPSERT, "m3", secret="whsec_" + "QUJD" * 8), 401),
        ("malformed JSON", "/webhooks/app", standard('{"type": "contact.upsert", ', "m4"), 400),
        ("non-object JSON", "/webhooks/app", standard("[1, 2, 3]", "m5"), 400),
        ("unknown event type", "/webhooks/app", standard({"type": "contact.explode", "data": {}}, "m6"), 400),
        ("invalid email", "/webhooks/app", standard({"type": "contact.upsert", "data": {"email": "nope"}}, "m7"), 400),
        ("no contact key", "/webhooks/app", standard({"type": "conversion", "data": {"value": 3}}, "m8"), 400),
        ("oversized body", "/webhooks/app", standard({"type": "click", "data": {"token": "x" * 5000}}, "m9"), 413),
        ("unknown source", "/webhooks/nobody", standard(UPSERT, "m10"), 404),
        ("empty body", "/webhooks/app", standard("", "m11"), 400),
        ("stripe bad signature", "/webhooks/stripe", stripe_signed({"id": "e", "type": "x"}, secret="other"), 401),
        ("stripe stale", "/webhooks/stripe", stripe_signed({"id": "e", "type": "x"}, at=int(time.time()) - 900), 401),
        ("stripe future", "/webhooks/stripe", stripe_signed({"id": "e", "type": "x"}, at=int(time.time()) + 900), 401),
        ("stripe 10 years ahead", "/webhooks/stripe",
         stripe_signed({"id": "e", "type": "x"}, at=int(time.time()) + 10 * 365 * 86400), 401),
        ("twilio other token", "/webhooks/twilio",
         twilio_signed("/webhooks/twilio", {"MessageSid": "SM1", "MessageStatus": "sent"}, token="x"), 401),
        ("cal other secret", "/webhooks/cal", cal_signed({"triggerEvent": "BOOKING_CREATED"}, secret="x"), 401),
        ("token missing", "/webhooks/zap", (b'{"event_id": "1"}', {"Content-Type": "application/json"}), 401),
    ]


@pytest.mark.parametrize("case", [c[0] for c in _bad_cases()])
async def test_bad_input_gets_its_status_and_writes_nothing(client, case: str) -> None:  # type: ignore[no-untyped-def]
    _, path, signed, status = next(c for c in _bad_cases() if c[0] == case)
    response = await post(client, path, signed)
    assert response.status == status, await response.text()
    assert "error" in await response.json()
    assert InboundEvent.select().count() == 0 and Contact.select().count() == 0


def _malformed_cases() -> list[tuple[str, str, tuple[bytes, dict[str, str]]]]:
    """Correctly signed, and still nonsense: each must get a 4xx naming the problem, never a 5xx."""
    deep = "[" * 100_000 + "]" * 100_000
    nested: object = "leaf"
    for _ in range(50):
        nested = {"a": nested}
    upsert = {"type": "contact.upsert", "data": {"email": "ada@example.com", "attributes": {"x": nested}}}
    checkout = "checkout.session.completed"
    return [
        ("cal.com payload is a list", "/webhooks/cal", cal_signed({"triggerEvent": "BOOKING_CREATED", "payload": [1]})),
        ("cal.com attendees is an object", "/webhooks/cal", cal_signed(
            {"triggerEvent": "BOOKING_CREATED", "payload": {"uid": "u", "attendees": {"email": "a@example.com"}}})),
        ("cal.com uid is an object", "/webhooks/cal", cal_signed({"triggerEvent": "X", "payload": {"uid": {"a": 1}}})),
        ("JSON nested 100k deep", "/webhooks/app", standard(deep, "m-deep")),
        ("JSON nested 100k deep, cal.com", "/webhooks/cal", (deep.encode(), cal_signed({})[1] | {
            "X-Cal-Signature-256": hmac.new(CAL_SECRET.encode(), deep.encode(), hashlib.sha256).hexdigest()})),
        ("attributes 50 deep", "/webhooks/app", standard(upsert, "m-deep-attrs")),
        ("attributes of 200 KB", "/webhooks/app", standard(
            {"type": "contact.upsert", "data": {"email": "ada@example.com", "attributes": {"x": "y" * 200_000}}},
            "m-big-attrs")),
        ("stripe data is a list", "/webhooks/stripe", stripe_signed({"id": "e1", "type": checkout, "data": [1]})),
        ("stripe amount is text", "/webhooks/stripe", stripe_signed(
            {"id": "e2", "type": checkout, "data": {"object": {"customer_email": "a@example.com",
                                                                "amount_total": "lots"}}})),
        ("stripe id of 1,000 characters", "/webhooks/stripe", stripe_signed({"id": "e" * 1000, "type": "x"})),
        ("twilio status of 120 characters", "/webhooks/twilio",
         twilio_signed("/webhooks/twilio", {"MessageSid": "SM1", "MessageStatus": "s" * 120})),
        ("stripe id with a NUL", "/webhooks/stripe", stripe_signed({"id": "e\u0000", "type": "x"})),
        ("stripe id with a lone surrogate", "/webhooks/stripe", stripe_signed('{"id": "e\\ud800", "type": "x"}')),
        ("token id with a lone surrogate", "/webhooks/app", standard(
            '{"type": "click", "data": {"token": "\\udfff"}}', "m-surrogate")),
        ("conversion value infinite", "/webhooks/app", standard(
            {"type": "conversion", "data": {"email": "ada@example.com", "value": "1e999"}}, "m-inf")),
        ("conversion value huge integer", "/webhooks/app", standard(
            '{"type": "conversion", "data": {"email": "ada@example.com", "value": 1' + "0" * 400 + '}}', "m-huge")),
        ("contact key is an object", "/webhooks/app", standard(
            {"type": "conversion", "data": {"email": {"a": 1}}}, "m-key-object")),
        ("unsubscribe channel is an object", "/webhooks/app", standard(
            {"type": "contact.unsubscribe", "data": {"email": "ada@example.com", "channel": {"a": 1}}}, "m-chan")),
        ("contact key with a NUL", "/webhooks/app", standard(
            {"type": "conversion", "data": {"external_id": "u\u00001"}}, "m-key-nul")),
        ("upsert campaign with a NUL", "/webhooks/app", standard(
            {"type": "contact.upsert", "data": {"email": "ada@example.com", "campaign": "w\u0000"}}, "m-camp-nul")),
    ]


@pytest.fixture
async def roomy_client(aiohttp_client, migrated_db: str):  # type: ignore[no-untyped-def]
    """The default body limit (256 KiB), so deep or big documents reach the interpreters."""
    settings = settings_for(migrated_db, WEBHOOK_MAX_BYTES=str(256 * 1024))
    client = await aiohttp_client(build_public_app(settings))
    client.settings = settings
    return client


@pytest.mark.parametrize("case", [c[0] for c in _malformed_cases()])
async def test_signed_but_malformed_payloads_get_a_4xx_never_a_5xx(roomy_client, case: str) -> None:  # type: ignore[no-untyped-def]
    _, path, signed = next(c for c in _malformed_cases() if c[0] == case)
    response = await post(roomy_client, path, signed)
    assert response.status in (200, 202, 400), await response.text()
    if response.status == 400:
        assert "error" in await response.json()
    if case.startswith("attributes"):  # bounded, and the sender is told which field
        assert response.status == 400 and (await response.json())["error"].startswith("data.attributes: ")
    # whatever was accepted can be processed without failing
    await asyncio.to_thread(process_pending, roomy_client.settings)
    assert InboundEvent.select().where(InboundEvent.status == "failed").count() == 0


SECRET_TOKEN = "s3cr3t-postback-token-value"


async def test_a_token_source_stores_nothing_of_its_secret(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    from db.database import database

    client = await aiohttp_client(build_public_app(settings_for(migrated_db, SOURCE_ZAP_SECRET=SECRET_TOKEN)))
    # Given postbacks that carry the secret in the query string (GET, form POST, empty POST) or a header
    assert (await client.get("/webhooks/zap", params={"token": SECRET_TOKEN, "click_id": "c-1",
                                                      "external_id": "u1", "value": "3"})).status == 202
    assert (await client.post(f"/webhooks/zap?token={SECRET_TOKEN}", data={"click_id": "c-2", "email": "a@example.com",
                                                                            "token": SECRET_TOKEN})).status == 202
    assert (await client.post(f"/webhooks/zap?token={SECRET_TOKEN}&click_id=c-3&phone=%2B12015550100")).status == 202
    assert (await client.post("/webhooks/zap", json={"event_id": "z-1", "type": "click", "data": {"token": "t"}},
                              headers={"X-Webhook-Token": SECRET_TOKEN})).status == 202
    assert (await client.post("/webhooks/zap", data={"click_id": "c-4", "external_id": "u2"},
                              headers={"X-Webhook-Token": SECRET_TOKEN})).status == 202
    # Then no column of any stored event holds the secret (what a backup would carry)
    rows = database.execute_sql("SELECT * FROM inbound_event").fetchall()
    assert len(rows) == 5
    assert [row for row in rows if any(SECRET_TOKEN in str(value) for value in row)] == []
    # and what was needed is still there: the postback's parameters without the token
    stored = {e.event_id: json.loads(e.payload) for e in InboundEvent.select()}
    assert "external_id" in stored["c-1"]["raw"] and "token" not in stored["c-1"]["raw"]


# -- duplicates ------------------------------------------------------------------------------------


async def test_twenty_identical_concurrent_deliveries_are_one_event(client) -> None:  # type: ignore[no-untyped-def]
    signed = standard(UPSERT, "msg_dup")
    responses = await asyncio.gather(*[post(client, "/webhooks/app", signed) for _ in range(20)])
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 19 + [202]
    assert InboundEvent.select().count() == 1
    assert await asyncio.to_thread(process_pending, client.settings) == {"processed": 1}
    assert await asyncio.to_thread(process_pending, client.settings) == {}
    assert Contact.select().count() == 1


async def test_a_retried_delivery_later_is_a_duplicate(client) -> None:  # type: ignore[no-untyped-def]
    assert (await post(client, "/webhooks/app", standard(UPSERT, "msg_r"))).status == 202
    await asyncio.to_thread(process_pending, client.settings)
    assert (await post(client, "/webhooks/app", standard(UPSERT, "msg_r"))).status == 200
    assert await asyncio.to_thread(process_pending, client.settings) == {}


async def test_contact_upsert_enrols_in_triggered_and_named_campaigns(client) -> None:  # type: ignore[no-untyped-def]
    for slug, trigger in (("welcome", "contact.upsert"), ("vip", None)):
        campaign = Campaign.create(slug=slug, name=slug, trigger_event=trigger)
        CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="hi")
    event = {"type": "contact.upsert", "data": {**UPSERT["data"], "campaign": "vip"}}
    assert (await post(client, "/webhooks/app", standard(event, "m-enrol"))).status == 202
    await asyncio.to_thread(process_pending, client.settings)
    assert sorted(e.campaign.slug for e in Enrolment.select()) == ["vip", "welcome"]


async def test_an_event_id_deduplicates_for_the_retention_window_only(client) -> None:  # type: ignore[no-untyped-def]
    from db.models import utcnow
    from engine.event_ids import expire_event_ids

    assert (await post(client, "/webhooks/app", standard(UPSERT, "msg_old"))).status == 202
    await asyncio.to_thread(process_pending, client.settings)
    InboundEvent.update(received_at=utcnow() - dt.timedelta(days=31)).execute()
    assert await asyncio.to_thread(expire_event_ids, client.settings, utcnow()) == 1
    # the id is free again: a new delivery with it is a new event; the old row is still there
    assert (await post(client, "/webhooks/app", standard(UPSERT, "msg_old"))).status == 202
    assert InboundEvent.select().count() == 2


@pytest.mark.parametrize("kind", ["click", "delivery"])
def test_a_run_of_clicks_or_receipts_takes_the_same_statements_for_10_or_300(migrated_db: str, statements,  # type: ignore[no-untyped-def]
                                                                               kind: str) -> None:
    settings = settings_for(migrated_db)
    _, _, sends = _links_for(3)
    for i, send in enumerate(sends):
        Send.update(provider_message_id=f"PM{i}").where(Send.id == send.id).execute()

    def process(count: int) -> int:
        for i in range(count):
            data = {"token": f"tok-{i % 3}"} if kind == "click" else {"provider_message_id": f"PM{i % 3}",
                                                                        "status": "delivered"}
            InboundEvent.create(source="app", event_id=f"{kind}-{count}-{i}", type=kind,
                                payload=json.dumps({"events": [{"type": kind, "data": data}], "raw": ""}))
        statements.count = 0
        assert process_pending(settings) == {"processed": count}
        return statements.count

    # A process's first click on a step reads that step's metric labels, once for the process's
    # life (engine/campaign_metrics.py): a first event pays it before the measure
    process(1)
    assert process(10) == process(300)  # one run each: no statement per event


_FRESH = b"webhook-id: m1\r\nwebhook-timestamp: {now}\r\n"  # so the signature itself is what gets compared


@pytest.mark.parametrize(("target", "header"), [
    (b"/webhooks/zap", b"X-Webhook-Token: \xff\xfe"),
    (b"/webhooks/zap?token=%ff%fe", b"X-Other: 1"),
    (b"/webhooks/cal", b"X-Cal-Signature-256: \xc3("),
    (b"/webhooks/cal", b"X-Cal-Signature-256: \xc3\xa9"),
    (b"/webhooks/stripe", b"Stripe-Signature: t={now},v1=\xc3\xa9"),  # UTF-8, but not ASCII
    (b"/webhooks/stripe", b"Stripe-Signature: t={now},v1=\xff\xfe"),
    (b"/webhooks/stripe", b"Stripe-Signature: t=\xff,v1=00"),
    (b"/webhooks/twilio", b"X-Twilio-Signature: \xff\xfe"),
    (b"/webhooks/twilio", b"X-Twilio-Signature: \xc3\xa9"),
    (b"/webhooks/twilio?x=%ff%C3%A9", b"X-Twilio-Signature: AAAA"),  # the signed URL itself is not UTF-8
    (b"/webhooks/app", _FRESH + b"webhook-signature: v1,\xff\xfe"),
    (b"/webhooks/app", _FRESH + b"webhook-signature: v1,\xc3\xa9"),
])
async def test_header_bytes_that_are_not_utf8_are_refused_not_a_500(client, target: bytes, header: bytes) -> None:  # type: ignore[no-untyped-def]
    # Given signature material that is not ASCII (raw bytes no well-behaved sender sends)
    header = header.replace(b"{now}", str(int(time.time())).encode())
    # When it reaches a source of that scheme, Then it is an ordinary bad signature: 401, nothing stored
    status = await raw_request(client, b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n"
                                b"Content-Type: application/json\r\n", b"{}")
    assert status == 401
    assert InboundEvent.select().count() == 0


async def test_an_event_id_header_that_is_not_utf8_is_a_400(client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"type": "click", "data": {"token": "t"}}).encode()
    status = await raw_request(client, b"POST /webhooks/zap HTTP/1.1\r\nHost: x\r\nX-Webhook-Token: " + TOKEN.encode()
                                + b"\r\nX-Event-Id: ev\xff\r\nContent-Type: application/json\r\n", body)
    assert status == 400
    assert InboundEvent.select().count() == 0


@pytest.mark.parametrize(("depth", "status"), [(8, 202), (9, 400)])
async def test_attributes_nest_up_to_eight_levels(client, depth: int, status: int) -> None:  # type: ignore[no-untyped-def]
    attributes: object = "leaf"
    for _ in range(depth - 1):
        attributes = {"k": attributes}
    event = {"type": "contact.upsert", "data": {"email": "ada@example.com", "attributes": {"plan": attributes}}}
    response = await post(client, "/webhooks/app", standard(event, f"m-depth-{depth}"))
    assert response.status == status, await response.text()
    if status == 400:
        assert (await response.json())["error"] == "data.attributes: nested deeper than 8 levels"
