"""The provider simulator sends back what Twilio and Postmark send: signed Twilio status callbacks
in order, inbound SMS, Postmark Delivery/Bounce/SpamComplaint webhooks, per recipient outcomes.

The simulator runs in-process; a small aiohttp app stands in for the daemon and keeps what it is
sent. Every Twilio callback is checked on the receiving side with the twilio package's own
RequestValidator, against the URL the test configured (as the daemon checks it against PUBLIC_URL).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from twilio.request_validator import RequestValidator

from ops.harness.daemon import free_port
from ops.harness.simulator_process import SimulatorProcess
from ops.simulator import SIMULATOR, Simulator, build_simulator_app, run_simulator

ACCOUNT = "AC" + "1" * 32
AUTH_TOKEN = "twilio-auth-token-do-not-show"
SENDER = "+15005550006"
PHONE = "+12015550100"
WEBHOOK_TOKEN = "postmark-webhook-token-do-not-show"
SERVER_TOKEN = "postmark-server-token-do-not-show"
WAIT_S = 10

MESSAGE_FIELDS = {"MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "AccountSid", "From", "To", "ApiVersion"}
CALL_FIELDS = {"CallSid", "CallStatus", "AccountSid", "From", "To", "Direction", "ApiVersion"}


@dataclass
class Received:
    path_qs: str
    headers: Mapping[str, str]
    form: dict[str, str]
    body: Any


class Receiver:
    """Stands in for the daemon: keeps every POST and answers ``statuses[path]`` (202 by default);
    while ``hold`` is set and not released, it keeps its answers back."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.arrived = asyncio.Condition()
        self.statuses: dict[str, int] = {}
        self.hold: asyncio.Event | None = None
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        form: dict[str, str] = {}
        body: Any = None
        if request.content_type == "application/json":
            body = await request.json()
        else:
            form = {k: str(v) for k, v in (await request.post()).items()}
        async with self.arrived:
            self.requests.append(Received(request.path_qs, dict(request.headers), form, body))
            self.arrived.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.statuses.get(request.path, 202))

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def wait_for(self, count: int) -> list[Received]:
        """The first ``count`` requests, once they have arrived (fails after WAIT_S)."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.requests) >= count), WAIT_S)
        return self.requests[:count]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    receiver.server = await aiohttp_server(app)
    return receiver


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(build_simulator_app())


def sim(client: TestClient) -> Simulator:
    assert client.app is not None
    return client.app[SIMULATOR]


async def settled(client: TestClient) -> None:
    """Every receipt the simulator had on its way has been posted (so nothing more will come)."""
    await asyncio.wait_for(asyncio.gather(*sim(client).callbacks.tasks), WAIT_S)


async def twilio(client: TestClient, resource: str, form: Any, token: str = AUTH_TOKEN) -> str:
    """A Twilio API call, as the daemon makes it; the sid answered."""
    response = await client.post(f"/2010-04-01/Accounts/{ACCOUNT}/{resource}.json", data=form,
                                 headers=basic(ACCOUNT, token))
    assert response.status == 201, await response.text()
    return str((await response.json())["sid"])


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def signed_by_twilio(received: Received, url: str, token: str = AUTH_TOKEN) -> bool:
    """What the daemon checks: X-Twilio-Signature over the URL Twilio was given and the form."""
    return RequestValidator(token).validate(url, received.form, received.headers.get("X-Twilio-Signature", ""))


async def post_json(client: TestClient, path: str, document: Any) -> tuple[int, Any]:
    response = await client.post(path, json=document)
    return response.status, await response.json()


# -- Twilio messages ------------------------------------------------------------------------------

async def test_an_sms_reports_sent_then_delivered_signed_as_twilio_signs(
        client: TestClient, receiver: Receiver) -> None:
    # Given a status callback URL with a query string (it is part of what Twilio signs)
    callback = receiver.url("/webhooks/twilio?campaign=welcome")
    # When the daemon sends an SMS asking for its statuses
    sid = await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi", "StatusCallback": callback})
    # Then Twilio's two callbacks arrive, in order, each signed with the account's auth token
    sent, delivered = await receiver.wait_for(2)
    await settled(client)
    assert len(receiver.requests) == 2
    assert [r.form["MessageStatus"] for r in (sent, delivered)] == ["sent", "delivered"]
    for received in (sent, delivered):
        assert received.path_qs == "/webhooks/twilio?campaign=welcome"
        assert signed_by_twilio(received, callback)
        assert not signed_by_twilio(received, callback, token="another-token")
        assert set(received.form) == MESSAGE_FIELDS
        assert received.form | {"MessageStatus": "-", "SmsStatus": "-"} == {
            "MessageSid": sid, "SmsSid": sid, "MessageStatus": "-", "SmsStatus": "-", "AccountSid": ACCOUNT,
            "From": SENDER, "To": PHONE, "ApiVersion": "2010-04-01"}
        assert received.form["SmsStatus"] == received.form["MessageStatus"]
        assert received.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    # And a field changed on the way would not pass the check
    assert not signed_by_twilio(Received(sent.path_qs, sent.headers, {**sent.form, "MessageStatus": "delivered"},
                                         None), callback)


@pytest.mark.parametrize(("outcome", "expected"), [
    ("undelivered", [("sent", None), ("undelivered", "30003")]),
    ("failed", [("failed", "30008")]),
])
async def test_an_sms_outcome_decides_how_it_ends(client: TestClient, receiver: Receiver, outcome: str,
                                              expected: list[tuple[str, str | None]]) -> None:
    # Given a recipient whose messages do not arrive
    assert await post_json(client, "/simulate/outcome", {"to": PHONE, "outcome": outcome}) == (
        200, {"to": PHONE, "outcome": outcome})
    callback = receiver.url("/webhooks/twilio")
    # When an SMS goes to them
    await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi", "StatusCallback": callback})
    await receiver.wait_for(len(expected))
    await settled(client)
    # Then Twilio reports it undelivered (after sent) or failed (never sent), with its error code
    assert [(r.form["MessageStatus"], r.form.get("ErrorCode")) for r in receiver.requests] == expected
    assert all(signed_by_twilio(r, callback) for r in receiver.requests)
    assert set(receiver.requests[-1].form) == MESSAGE_FIELDS | {"ErrorCode"}


async def test_no_status_callback_no_receipt(client: TestClient, receiver: Receiver) -> None:
    # Given no StatusCallback on the SMS nor the call, and no Postmark webhook configured
    await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi"})
    await twilio(client, "Calls", {"To": PHONE, "From": SENDER, "Twiml": "<Response/>"})
    response = await client.post("/email", json={"To": "ada@example.com", "From": "team@example.com"},
                                 headers={"X-Postmark-Server-Token": SERVER_TOKEN})
    assert response.status == 200
    # Then nothing is posted back
    await settled(client)
    assert (await (await client.get("/callbacks")).json()) == {"callbacks": []}
    assert receiver.requests == []


async def test_an_invalid_status_callback_is_refused_like_twilio_does(client: TestClient) -> None:
    response = await client.post(f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json", headers=basic(ACCOUNT, "t"),
                                 data={"To": PHONE, "From": SENDER, "Body": "Hi", "StatusCallback": "not-a-url"})
    assert response.status == 400 and (await response.json())["code"] == 21609
    assert sim(client).deliveries.received == 0


# -- Twilio calls ---------------------------------------------------------------------------------

TWIML = "<Response><Say>Your appointment is tomorrow at nine.</Say></Response>"
ALL_EVENTS = "initiated ringing answered completed"  # as the daemon asks for them


async def test_a_call_reports_its_progress_in_order_and_who_answered(
        client: TestClient, receiver: Receiver) -> None:
    callback = receiver.url("/webhooks/twilio")
    # When the daemon places a call asking for every progress event and machine detection
    sid = await twilio(client, "Calls", {"To": PHONE, "From": SENDER, "Twiml": TWIML, "StatusCallback": callback,
                                         "StatusCallbackEvent": ALL_EVENTS, "MachineDetection": "DetectMessageEnd"})
    received = await receiver.wait_for(4)
    await settled(client)
    # Then Twilio's four callbacks arrive in order, signed, a human answering
    assert [r.form["CallStatus"] for r in receiver.requests] == ["initiated", "ringing", "in-progress", "completed"]
    assert all(signed_by_twilio(r, callback) for r in received)
    for r in received:
        assert {k: r.form[k] for k in CALL_FIELDS - {"CallStatus"}} == {
            "CallSid": sid, "AccountSid": ACCOUNT, "From": SENDER, "To": PHONE, "Direction": "outbound-api",
            "ApiVersion": "2010-04-01"}
    assert [set(r.form) - CALL_FIELDS for r in received] == [
        set(), set(), {"AnsweredBy"}, {"AnsweredBy", "CallDuration"}]
    assert received[2].form["AnsweredBy"] == received[3].form["AnsweredBy"] == "human"
    assert int(received[3].form["CallDuration"]) >= 1


@pytest.mark.parametrize(("outcome", "detection", "statuses", "answered_by"), [
    ("busy", "Enable", ["initiated", "ringing", "busy"], None),
    ("no-answer", "Enable", ["initiated", "ringing", "no-answer"], None),
    ("failed", None, ["initiated", "failed"], None),
    ("machine", "DetectMessageEnd", ["initiated", "ringing", "in-progress", "completed"], "machine_end_beep"),
    ("machine", "Enable", ["initiated", "ringing", "in-progress", "completed"], "machine_start"),
    ("machine", None, ["initiated", "ringing", "in-progress", "completed"], None),
])
async def test_a_call_outcome_decides_how_it_ends(client: TestClient, receiver: Receiver, outcome: str,
                                                  detection: str | None, statuses: list[str],
                                                  answered_by: str | None) -> None:
    # Given a recipient who is busy, does not pick up, cannot be reached, or has voicemail
    await post_json(client, "/simulate/outcome", {"to": PHONE, "outcome": outcome})
    callback = receiver.url("/webhooks/twilio")
    form = {"To": PHONE, "From": SENDER, "Twiml": TWIML, "StatusCallback": callback, "StatusCallbackEvent": ALL_EVENTS,
            **({"MachineDetection": detection} if detection else {})}
    await twilio(client, "Calls", form)
    await receiver.wait_for(len(statuses))
    await settled(client)
    # Then the call ends that way; AnsweredBy only where the call asked for detection and was answered
    assert [r.form["CallStatus"] for r in receiver.requests] == statuses
    assert [r.form.get("AnsweredBy") for r in receiver.requests if r.form["CallStatus"] == "completed"] == (
        [answered_by] if statuses[-1] == "completed" else [])
    assert all("AnsweredBy" not in r.form for r in receiver.requests if r.form["CallStatus"] != "completed"
               and r.form["CallStatus"] != "in-progress")
    assert all(signed_by_twilio(r, callback) for r in receiver.requests)


async def test_a_call_reports_only_the_events_it_asked_for(client: TestClient, receiver: Receiver) -> None:
    callback = receiver.url("/webhooks/twilio")
    # Given a call that names no event: Twilio posts the final status only
    await twilio(client, "Calls", {"To": PHONE, "From": SENDER, "Twiml": TWIML, "StatusCallback": callback})
    await receiver.wait_for(1)
    await settled(client)
    assert [r.form["CallStatus"] for r in receiver.requests] == ["completed"]
    # And a call naming events one parameter each (as Twilio's own library sends a list)
    await twilio(client, "Calls", [("To", PHONE), ("From", SENDER), ("Twiml", TWIML), ("StatusCallback", callback),
                                   ("StatusCallbackEvent", "ringing"), ("StatusCallbackEvent", "completed")])
    await receiver.wait_for(3)
    await settled(client)
    assert [r.form["CallStatus"] for r in receiver.requests[1:]] == ["ringing", "completed"]
    assert all(signed_by_twilio(r, callback) for r in receiver.requests)


async def test_the_api_answer_does_not_wait_for_the_callbacks(client: TestClient, receiver: Receiver) -> None:
    # Given a receiver that holds its answer to the first callback
    receiver.hold = asyncio.Event()
    callback = receiver.url("/webhooks/twilio")
    # When an SMS is sent, the API answers while that callback is still waiting
    answered = asyncio.create_task(twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi",
                                                               "StatusCallback": callback}))
    first, = await receiver.wait_for(1)
    sid = await asyncio.wait_for(answered, WAIT_S)
    assert first.form["MessageSid"] == sid and first.form["MessageStatus"] == "sent"
    # And the second callback waits for the first one's answer: one after another, in order
    assert len(receiver.requests) == 1
    receiver.hold.set()
    await receiver.wait_for(2)
    await settled(client)
    assert [r.form["MessageStatus"] for r in receiver.requests] == ["sent", "delivered"]


# -- inbound SMS ----------------------------------------------------------------------------------

async def test_an_inbound_stop_arrives_signed_with_the_accounts_token(
        client: TestClient, receiver: Receiver) -> None:
    # Given an account the simulator has seen (its auth token is known as Twilio knows it)
    await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi"})
    url = receiver.url("/webhooks/twilio?kind=inbound")
    # When the person texts STOP back
    status, answer = await post_json(client, "/simulate/twilio/inbound", {
        "url": url, "account_sid": ACCOUNT, "from": PHONE, "to": SENDER, "body": "STOP"})
    # Then the webhook has been posted (answered with the receiver's status), signed, in Twilio's shape
    assert (status, answer) == (200, {"status": 202})
    received, = receiver.requests
    assert received.path_qs == "/webhooks/twilio?kind=inbound"
    assert signed_by_twilio(received, url)
    sid = received.form["MessageSid"]
    assert sid.startswith("SM") and received.form == {
        "MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "SmsStatus": "received", "AccountSid": ACCOUNT,
        "From": PHONE, "To": SENDER, "Body": "STOP", "NumMedia": "0", "NumSegments": "1", "ApiVersion": "2010-04-01"}
    # And the receiver's own status is what the simulator reports
    receiver.statuses["/webhooks/twilio"] = 401
    assert await post_json(client, "/simulate/twilio/inbound", {
        "url": url, "account_sid": ACCOUNT, "from": PHONE, "to": SENDER, "body": "START"}) == (200, {"status": 401})


async def test_an_inbound_message_for_an_unknown_account_is_a_409(
        client: TestClient, receiver: Receiver) -> None:
    status, answer = await post_json(client, "/simulate/twilio/inbound", {
        "url": receiver.url("/webhooks/twilio"), "account_sid": ACCOUNT, "from": PHONE, "to": SENDER, "body": "STOP"})
    assert status == 409 and "auth token" in answer["error"]
    assert receiver.requests == []
    # And a request missing a field is a 400
    status, answer = await post_json(client, "/simulate/twilio/inbound", {"url": receiver.url("/x"), "body": "STOP"})
    assert status == 400 and "account_sid" in answer["error"]


async def test_a_callback_that_fails_is_recorded_and_the_simulator_carries_on(
        client: TestClient, receiver: Receiver) -> None:
    # Given a receiver that answers 500, and a URL where nothing listens
    receiver.statuses["/broken"] = 500
    await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi",
                                      "StatusCallback": receiver.url("/broken")})
    await receiver.wait_for(2)
    await settled(client)
    nowhere = f"http://127.0.0.1:{free_port()}/webhooks/twilio"
    status, answer = await post_json(client, "/simulate/twilio/inbound", {
        "url": nowhere, "account_sid": ACCOUNT, "from": PHONE, "to": SENDER, "body": "STOP"})
    # Then each attempt is recorded with its status or error, counted as failed, and nothing breaks
    assert status == 502 and answer["status"] is None and answer["error"]
    attempts = (await (await client.get("/callbacks")).json())["callbacks"]
    assert [(a["kind"], a["status"]) for a in attempts[:2]] == [("twilio.message_status", 500)] * 2
    assert attempts[2]["kind"] == "twilio.inbound_sms" and isinstance(attempts[2]["status"], str)
    assert attempts[2]["url"] == nowhere and attempts[2]["fields"]["Body"] == "STOP"
    stats = await (await client.get("/stats")).json()
    assert stats["callbacks"] == {"sent": 0, "failed": 3} and stats["received"] == 1
    await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "still here"})


# -- Postmark -------------------------------------------------------------------------------------

async def postmark(client: TestClient, message: Any, batch: bool = False) -> Any:
    response = await client.post("/email/batch" if batch else "/email", json=message,
                                 headers={"X-Postmark-Server-Token": SERVER_TOKEN})
    assert response.status == 200, await response.text()
    return await response.json()


def email(to: str, **extra: Any) -> dict[str, Any]:
    return {"From": "team@example.com", "To": to, "Subject": "Welcome", "TextBody": "Hi", "HtmlBody": "<p>Hi</p>",
            "Metadata": {"idempotency_key": f"k-{to}"}, "MessageStream": "broadcast", "Tag": "welcome",
            "Headers": [{"Name": "List-Unsubscribe", "Value": "<https://x.example/u/t>"}], **extra}


async def configure(client: TestClient, url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    status, answer = await post_json(client, "/simulate/postmark/webhook", {"url": url, "headers": headers or {}})
    assert status == 200, answer
    return dict(answer)


async def test_a_postmark_delivery_webhook_with_the_custom_header_and_basic_auth(
        client: TestClient, receiver: Receiver) -> None:
    # Given Postmark's webhook pointed at the receiver with basic auth in the URL and a custom header
    url = receiver.url("/webhooks/postmark?s=1").replace("http://", "http://hook:p%40ss@")
    described = await configure(client, url, {"X-Webhook-Token": WEBHOOK_TOKEN})
    assert described == {"url": receiver.url("/webhooks/postmark?s=1"), "headers": ["Authorization", "X-Webhook-Token"]}
    # When an email is accepted
    answer = await postmark(client, email("ada@example.com"))
    # Then a Delivery webhook reports it, with the header and the credentials Postmark was given
    delivery, = await receiver.wait_for(1)
    assert delivery.path_qs == "/webhooks/postmark?s=1"
    assert delivery.headers["X-Webhook-Token"] == WEBHOOK_TOKEN
    assert delivery.headers["Authorization"] == "Basic " + base64.b64encode(b"hook:p@ss").decode()
    assert delivery.headers["Content-Type"].startswith("application/json")
    assert delivery.body["DeliveredAt"].endswith("Z")
    assert {**delivery.body, "DeliveredAt": "-"} == {
        "RecordType": "Delivery", "MessageID": answer["MessageID"], "Recipient": "ada@example.com",
        "DeliveredAt": "-", "Details": "smtp;250 2.0.0 OK", "Tag": "welcome", "ServerID": 1,
        "MessageStream": "broadcast", "Metadata": {"idempotency_key": "k-ada@example.com"}}


BOUNCE_FIELDS = {"RecordType", "ID", "Type", "TypeCode", "Name", "MessageID", "Email", "From", "BouncedAt", "Inactive",
                 "CanActivate", "Description", "Details", "MessageStream", "Metadata", "Tag", "ServerID", "Subject",
                 "DumpAvailable"}


async def test_postmark_bounces_and_spam_complaints(client: TestClient, receiver: Receiver) -> None:
    await configure(client, receiver.url("/webhooks/postmark"), {"X-Webhook-Token": WEBHOOK_TOKEN})
    # Given Postmark's test recipients, and an address whose outcome is set (its case does not matter)
    await post_json(client, "/simulate/outcome", {"to": "Grace@Example.com", "outcome": "bounce"})
    hard = await postmark(client, email("hardbounce@bounce-testing.postmarkapp.com"))
    received = await receiver.wait_for(1)
    spam = await postmark(client, email("spamcomplaint@bounce-testing.postmarkapp.com"))
    received = await receiver.wait_for(3)
    set_bounce = await postmark(client, email("grace@example.com"))
    received = await receiver.wait_for(4)
    await settled(client)
    assert len(receiver.requests) == 4
    # Then a hard bounce, a delivery followed by a complaint, and a hard bounce
    bounce, delivered, complaint, bounce_too = (r.body for r in received)
    assert set(bounce) == set(complaint) == BOUNCE_FIELDS
    assert {k: bounce[k] for k in ("RecordType", "Type", "TypeCode", "Name", "MessageID", "Email", "From", "Inactive",
                                   "CanActivate", "MessageStream", "Metadata")} == {
        "RecordType": "Bounce", "Type": "HardBounce", "TypeCode": 1, "Name": "Hard bounce",
        "MessageID": hard["MessageID"], "Email": "hardbounce@bounce-testing.postmarkapp.com",
        "From": "team@example.com", "Inactive": True, "CanActivate": True, "MessageStream": "broadcast",
        "Metadata": {"idempotency_key": "k-hardbounce@bounce-testing.postmarkapp.com"}}
    assert isinstance(bounce["ID"], int) and bounce["Description"] and bounce["Details"]
    assert delivered["RecordType"] == "Delivery" and delivered["MessageID"] == spam["MessageID"]
    assert {k: complaint[k] for k in ("RecordType", "Type", "TypeCode", "Name", "MessageID", "Email", "Inactive",
                                      "CanActivate")} == {
        "RecordType": "SpamComplaint", "Type": "SpamComplaint", "TypeCode": 512, "Name": "Spam complaint",
        "MessageID": spam["MessageID"], "Email": "spamcomplaint@bounce-testing.postmarkapp.com", "Inactive": True,
        "CanActivate": False}  # Postmark: a complaint's address cannot be reactivated
    assert isinstance(complaint["ID"], int) and complaint["ID"] != bounce["ID"]
    assert (bounce_too["RecordType"], bounce_too["MessageID"], bounce_too["Email"]) == (
        "Bounce", set_bounce["MessageID"], "grace@example.com")
    assert all(r.headers["X-Webhook-Token"] == WEBHOOK_TOKEN for r in received)


async def test_each_message_of_a_batch_gets_its_webhook(client: TestClient, receiver: Receiver) -> None:
    await configure(client, receiver.url("/webhooks/postmark"))
    # When a batch of three carries one message Postmark refuses
    answers = await postmark(client, [email("a@example.com"), {"From": "team@example.com"},
                                      email("hardbounce@bounce-testing.postmarkapp.com"), email("c@example.com")],
                             batch=True)
    assert [a["ErrorCode"] for a in answers] == [0, 300, 0, 0]
    await receiver.wait_for(3)
    await settled(client)
    # Then each accepted message gets its own webhook, under its own MessageID; the refused one none
    by_id = {r.body["MessageID"]: r.body["RecordType"] for r in receiver.requests}
    assert by_id == {answers[0]["MessageID"]: "Delivery", answers[2]["MessageID"]: "Bounce",
                     answers[3]["MessageID"]: "Delivery"}


async def test_a_message_to_several_recipients_gets_a_webhook_for_each(
        client: TestClient, receiver: Receiver) -> None:
    await configure(client, receiver.url("/webhooks/postmark"))
    answer = await postmark(client, email("Ada <ada@example.com>, hardbounce@bounce-testing.postmarkapp.com"))
    await receiver.wait_for(2)
    await settled(client)
    assert [(r.body["RecordType"], r.body.get("Recipient") or r.body.get("Email"), r.body["MessageID"])
            for r in receiver.requests] == [
        ("Delivery", "ada@example.com", answer["MessageID"]),
        ("Bounce", "hardbounce@bounce-testing.postmarkapp.com", answer["MessageID"])]


async def test_a_postmark_webhook_can_be_removed_and_must_be_a_url(
        client: TestClient, receiver: Receiver) -> None:
    await configure(client, receiver.url("/webhooks/postmark"))
    assert await post_json(client, "/simulate/postmark/webhook", {"url": None}) == (200, {"url": None, "headers": []})
    await postmark(client, email("ada@example.com"))
    await settled(client)
    assert receiver.requests == []
    for bad in ({"url": "ftp://example.com/x"}, {"url": receiver.url("/x"), "headers": {"X-A": 1}},
                {"url": receiver.url("/x"), "headers": {"X-A": "a\r\nX-B: b"}}, ["not", "an", "object"]):
        status, answer = await post_json(client, "/simulate/postmark/webhook", bad)
        assert status == 400 and answer["error"]


# -- what the simulator shows ---------------------------------------------------------------------

async def test_messages_keep_what_each_call_carried_and_never_a_secret(
        client: TestClient, receiver: Receiver) -> None:
    await configure(client, receiver.url("/webhooks/postmark").replace("http://", "http://hook:hook-password@"),
                    {"X-Webhook-Token": WEBHOOK_TOKEN})
    callback = receiver.url("/webhooks/twilio")
    # Given one call of each provider
    sms = await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi there",
                                            "StatusCallback": callback})
    call = await twilio(client, "Calls", {"To": PHONE, "From": SENDER, "Twiml": TWIML, "StatusCallback": callback,
                                          "MachineDetection": "Enable"})
    single = await postmark(client, email("ada@example.com"))
    batch = await postmark(client, [email("bob@example.com")], batch=True)
    hook_headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,abc"}
    response = await client.post("/webhook", json={"type": "retentiond.message", "data": {"recipient": "u-1"}},
                                 headers=hook_headers)
    assert response.status == 200
    await receiver.wait_for(5)  # sent, delivered, completed, two deliveries
    await settled(client)
    # Then /messages shows what each carried, with the provider and the id it answered
    messages = (await (await client.get("/messages")).json())["messages"]
    assert messages[0] == {"channel": "sms", "idempotency_key": None, "provider": "twilio", "provider_message_id": sms,
                           "account_sid": ACCOUNT, "to": PHONE, "from": SENDER, "body": "Hi there",
                           "status_callback": callback}
    assert messages[1] == {"channel": "call", "idempotency_key": None, "provider": "twilio",
                           "provider_message_id": call, "account_sid": ACCOUNT, "to": PHONE, "from": SENDER,
                           "twiml": TWIML, "status_callback": callback, "machine_detection": "Enable",
                           "status_callback_events": []}
    assert messages[2] == {"channel": "email", "idempotency_key": "k-ada@example.com", "provider": "postmark",
                           "provider_message_id": single["MessageID"], "to": "ada@example.com",
                           "from": "team@example.com", "subject": "Welcome", "text": "Hi", "html": "<p>Hi</p>",
                           "headers": {"List-Unsubscribe": "<https://x.example/u/t>"}, "message_stream": "broadcast",
                           "metadata": {"idempotency_key": "k-ada@example.com"}, "tag": "welcome"}
    assert messages[3]["provider_message_id"] == batch[0]["MessageID"] and messages[3]["to"] == "bob@example.com"
    assert messages[4] == {"channel": "webhook", "idempotency_key": "msg_1", "provider": "webhook",
                           "provider_message_id": None, "to": "u-1", "headers": hook_headers,
                           "body": {"type": "retentiond.message", "data": {"recipient": "u-1"}}}
    # And the filters pick by channel and recipient
    assert [m["channel"] for m in (await (await client.get("/messages", params={"to": PHONE})).json())["messages"]] == [
        "sms", "call"]
    assert len((await (await client.get("/messages", params={"channel": "email"})).json())["messages"]) == 2
    # And no auth token, server token, webhook token or password shows in /messages or /callbacks
    callbacks = await (await client.get("/callbacks")).json()
    assert {a["kind"] for a in callbacks["callbacks"]} == {"twilio.message_status", "twilio.call_status",
                                                          "postmark.delivery"}
    shown = json.dumps(messages) + json.dumps(callbacks) + await (await client.get("/stats")).text()
    for secret in (AUTH_TOKEN, SERVER_TOKEN, WEBHOOK_TOKEN, "hook-password",
                   base64.b64encode(f"{ACCOUNT}:{AUTH_TOKEN}".encode()).decode()):
        assert secret not in shown


async def test_an_unknown_outcome_is_a_400(client: TestClient) -> None:
    status, answer = await post_json(client, "/simulate/outcome", {"to": PHONE, "outcome": "lost"})
    assert status == 400 and "spam_complaint" in answer["error"]
    assert (await post_json(client, "/simulate/outcome", {"outcome": "bounce"}))[0] == 400
    assert (await client.post("/simulate/outcome", data=b"{not json")).status == 400
    assert sim(client).outcomes == {}


async def test_reset_clears_messages_outcomes_and_callbacks(client: TestClient, receiver: Receiver) -> None:
    # Given a message with its receipts, and a recipient set to fail
    callback = receiver.url("/webhooks/twilio")
    await post_json(client, "/simulate/outcome", {"to": PHONE, "outcome": "failed"})
    await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi", "StatusCallback": callback})
    await receiver.wait_for(1)
    await settled(client)
    stats = await (await client.get("/stats")).json()
    assert stats["callbacks"] == {"sent": 1, "failed": 0} and stats["received"] == 1
    # When the stats are reset
    assert (await client.post("/stats/reset")).status == 200
    # Then messages, callbacks and counts are gone, and the recipient is delivered to again
    assert (await (await client.get("/messages")).json()) == {"messages": []}
    assert (await (await client.get("/callbacks")).json()) == {"callbacks": []}
    assert await (await client.get("/stats")).json() == {"received": 0, "duplicates": 0, "by_channel": {},
                                                         "callbacks": {"sent": 0, "failed": 0}}
    await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi", "StatusCallback": callback})
    await receiver.wait_for(3)
    await settled(client)
    assert [r.form["MessageStatus"] for r in receiver.requests[1:]] == ["sent", "delivered"]


async def test_reset_cancels_the_receipts_still_on_their_way(client: TestClient, receiver: Receiver) -> None:
    # Given a message whose first callback the receiver holds
    receiver.hold = asyncio.Event()
    await twilio(client, "Messages", {"To": PHONE, "From": SENDER, "Body": "Hi",
                                      "StatusCallback": receiver.url("/webhooks/twilio")})
    await receiver.wait_for(1)
    in_flight = list(sim(client).callbacks.tasks)
    assert in_flight
    # When the stats are reset, its remaining callbacks are dropped, not posted into the next run
    await client.post("/stats/reset")
    receiver.hold.set()
    await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), WAIT_S)
    assert all(task.cancelled() for task in in_flight)
    assert len(receiver.requests) == 1
    assert (await (await client.get("/callbacks")).json()) == {"callbacks": []}


# -- the command ----------------------------------------------------------------------------------

def test_the_command_refuses_a_webhook_option_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_simulator("127.0.0.1", free_port(), postmark_webhook_url="http://x.example/h",
                         postmark_webhook_headers=["X-Webhook-Token=secret-value"]) == 2
    assert run_simulator("127.0.0.1", free_port(), postmark_webhook_url="x.example/h") == 2
    err = capsys.readouterr().err
    assert err.count("retentiond: error: --postmark-webhook-url/--postmark-webhook-header") == 2
    assert "secret-value" not in err


async def test_the_simulator_process_takes_the_webhook_options_and_the_harness_helpers(
        tmp_path: Path, receiver: Receiver) -> None:
    # Given `retentiond simulate-providers` started with a Postmark webhook (basic auth + a header)
    process = SimulatorProcess(tmp_path, postmark_webhook_url=receiver.url("/pm").replace("http://", "http://u:pw@"),
                               postmark_webhook_headers={"X-Webhook-Token": WEBHOOK_TOKEN})
    await asyncio.to_thread(process.start)
    try:
        await asyncio.to_thread(process.set_outcome, "ada@example.com", "bounce")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{process.url}/email", json=email("ada@example.com"),
                                    headers={"X-Postmark-Server-Token": SERVER_TOKEN}) as response:
                message_id = (await response.json())["MessageID"]
            async with session.post(f"{process.url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
                                    data={"To": PHONE, "From": SENDER, "Body": "Hi"},
                                    headers=basic(ACCOUNT, AUTH_TOKEN)) as response:
                assert response.status == 201
        bounce, = await receiver.wait_for(1)
        # Then the webhook came with those options, and the helpers read and drive the simulator
        assert (bounce.body["RecordType"], bounce.body["MessageID"]) == ("Bounce", message_id)
        assert bounce.headers["X-Webhook-Token"] == WEBHOOK_TOKEN
        assert bounce.headers["Authorization"] == "Basic " + base64.b64encode(b"u:pw").decode()
        url = receiver.url("/webhooks/twilio")
        assert await asyncio.to_thread(process.inbound_sms, url, ACCOUNT, PHONE, SENDER, "STOP") == 202
        inbound = (await receiver.wait_for(2))[1]
        assert inbound.form["Body"] == "STOP" and signed_by_twilio(inbound, url)
        assert [m["channel"] for m in await asyncio.to_thread(process.messages)] == ["email", "sms"]
        assert [m["to"] for m in await asyncio.to_thread(process.messages, "sms", PHONE)] == [PHONE]
        assert [c["kind"] for c in await asyncio.to_thread(process.callbacks)] == ["postmark.bounce",
                                                                                  "twilio.inbound_sms"]
        await asyncio.to_thread(process.postmark_webhook, receiver.url("/pm2"), {"X-Other": "1"})
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{process.url}/email", json=email("bob@example.com"),
                                    headers={"X-Postmark-Server-Token": SERVER_TOKEN}) as response:
                assert response.status == 200
        delivery = (await receiver.wait_for(3))[2]
        assert delivery.path_qs == "/pm2" and delivery.headers["X-Other"] == "1"
        assert "Authorization" not in delivery.headers and delivery.body["RecordType"] == "Delivery"
    finally:
        await asyncio.to_thread(process.stop)
