"""Fuzzing the webhook interpreters of every scheme through the real app, on both engines.

Hypothesis generates documents shaped like each sender's payloads — the fields our interpreters
read, each either a plausible value or any JSON at all (a list where an object belongs, a number
where text belongs, NUL, lone surrogates, deep nesting) — signs them correctly with the source's
scheme and posts them. Whatever is signed gets 202, 200 or 400, never a 5xx (a verified sender's
mistake must not look like our outage, and a 503 from the database refusing one row would fail
every request committed with it); and whatever was accepted is processed without failing.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daemon.web.app import build_public_app
from db.models import InboundEvent
from engine.events import START_WORDS, STOP_WORDS
from engine.processing import process_pending
from ground.vocabulary import DELIVERY_STATUSES, EVENT_TYPES
from ops.harness.signing import TOKEN, cal_signed, settings_for, standard, stripe_signed, twilio_signed

ACCEPTABLE = {200, 202, 400}
# modest for every CI run; FUZZ_EXAMPLES=2000 for a deeper search by hand
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FORM = "application/x-www-form-urlencoded"

# -- values ----------------------------------------------------------------------------------------

# text with everything JSON can carry: NUL, control characters, lone surrogates (JSON escapes them)
any_text = st.text(st.characters(exclude_categories=()), max_size=24)
# what a form or a query string can carry: any character but a lone surrogate (not encodable)
form_text = st.text(max_size=24)
leaf = st.none() | st.booleans() | st.integers() | st.floats() | any_text
any_json = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
                        max_leaves=8)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


deep_json = st.integers(0, 60).map(nested)


def maybe(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The kind of value the field holds, or anything at all."""
    return st.one_of(plausible, any_json, deep_json)


@dataclass(frozen=True)
class Pools:
    """The values documents are made of. Two sets: GOOD documents are valid (so that they reach
    the mapping and processing, where NUL, long texts and lone surrogates must still be stored),
    ANY documents hold the sender mistakes (wrong types, bad addresses, deep nesting) anywhere."""

    ids: st.SearchStrategy[Any]
    emails: st.SearchStrategy[Any]
    phones: st.SearchStrategy[Any]
    zones: st.SearchStrategy[Any]
    numbers: st.SearchStrategy[Any]
    field: Callable[[st.SearchStrategy[Any]], st.SearchStrategy[Any]]  # how one field's value is drawn
    required: bool  # the fields that make a document valid are present


good_ids = st.uuids().map(str) | st.sampled_from(["evt_1", "u1", "SM123", "pm-1", "tok-1", "id\x00nul", "\u00e9"]) | st.text(
    min_size=1, max_size=40)
GOOD = Pools(
    ids=good_ids, emails=st.sampled_from(["ada@example.com", "Ada@Example.COM", "grace@example.org"]),
    phones=st.sampled_from(["+12015550100", "2015550100", "+44 20 7946 0958"]),
    zones=st.sampled_from(["Europe/Paris", "UTC", "America/New_York"]),
    numbers=st.sampled_from(["12.5", "-0", "4900"]) | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False),
    field=lambda values: values, required=True)
ANY = Pools(
    ids=good_ids | st.sampled_from(["x" * 300, " ", ""]) | st.integers() | any_text,
    emails=st.sampled_from(["nope", "a@b", "", "x" * 400 + "@example.com", "ada@example.com"]) | any_text,
    phones=st.sampled_from(["123", "phone", "+12015550100", "0" * 50]) | any_text,
    zones=st.sampled_from(["Nowhere/City", "../../etc/passwd", "", "\x00"]) | any_text,
    numbers=st.sampled_from(["1e999", "nan", "-inf", "", "12,50", 10**400]) | st.integers() | st.floats() | any_text,
    field=maybe, required=False)


def keys(p: Pools) -> tuple[dict[str, Any], dict[str, Any]]:
    """(required, optional) contact key fields."""
    required = {"email": p.field(p.emails)} if p.required else {}
    optional = {"external_id": p.field(p.ids), "phone": p.field(p.phones)} | ({} if p.required else
                                                                                {"email": p.field(p.emails)})
    return required, optional


def canonical_docs(p: Pools) -> st.SearchStrategy[dict[str, Any]]:
    required, optional = keys(p)
    f = p.field
    fields = {
        "contact.upsert": ({**required}, {**optional, "name": f(any_text), "timezone": f(p.zones), "campaign": f(p.ids),
                                          "attributes": f(st.dictionaries(any_text, any_json, max_size=4)),
                                          "consent": f(st.dictionaries(st.sampled_from(["sms", "email"]), st.booleans(),
                                                                       max_size=2))}),
        "contact.unsubscribe": ({**required}, {**optional, "channel": f(st.sampled_from(["sms", "push"]))}),
        "conversion": ({**required}, {**optional, "name": f(st.text(max_size=100)), "value": f(p.numbers)}),
        "delivery": ({"provider_message_id": f(p.ids), "status": f(st.sampled_from(DELIVERY_STATUSES))}, {}),
        "click": ({"token": f(p.ids)}, {}),
    }
    if not p.required:  # no field is sure to be there, and anything may stand beside them
        fields = {k: ({}, {**req, **opt, "stranger": any_json}) for k, (req, opt) in fields.items()}
    return st.sampled_from(EVENT_TYPES).flatmap(lambda kind: st.fixed_dictionaries(
        {"type": st.just(kind), "data": f(st.fixed_dictionaries(fields[kind][0], optional=fields[kind][1]))},
        optional={"event_id": p.ids, "id": f(p.ids)}))


def stripe_docs(p: Pools) -> st.SearchStrategy[dict[str, Any]]:
    f = p.field
    obj = st.fixed_dictionaries({}, optional={
        "customer_email": f(p.emails), "client_reference_id": f(p.ids), "amount_total": f(p.numbers),
        "customer_details": f(st.fixed_dictionaries({}, optional={"email": f(p.emails)})),
        "receipt_email": f(p.emails), "amount_received": f(p.numbers), "amount": f(p.numbers),
        "metadata": f(st.fixed_dictionaries({}, optional={"email": f(p.emails), "external_id": f(p.ids)}))})
    return st.fixed_dictionaries({
        "id": p.ids, "data": f(st.fixed_dictionaries({"object": f(obj)})),
        "type": st.sampled_from(["checkout.session.completed", "payment_intent.succeeded", "customer.created"])})


def cal_docs(p: Pools) -> st.SearchStrategy[dict[str, Any]]:
    f = p.field
    attendee = st.fixed_dictionaries({"email": f(p.emails)} if p.required else {},
                                     optional={"name": f(any_text), "timeZone": f(p.zones)})
    return st.fixed_dictionaries({
        "triggerEvent": st.sampled_from(["BOOKING_CREATED", "BOOKING_CANCELLED"]),
        "payload": f(st.fixed_dictionaries({"uid": p.ids}, optional={
            "bookingId": f(p.ids), "attendees": f(st.lists(f(attendee), min_size=int(p.required), max_size=2))}))})


def postmark_docs(p: Pools) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "RecordType": st.sampled_from(["Delivery", "Bounce", "SpamComplaint", "Open"]), "MessageID": p.ids}, optional={
        "ID": p.field(p.ids), "Type": p.field(st.sampled_from(["HardBounce", "SoftBounce"]))})


def documents(shape: Callable[[Pools], st.SearchStrategy[dict[str, Any]]]) -> st.SearchStrategy[dict[str, Any]]:
    return shape(GOOD) | shape(ANY)


def form(fields: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[dict[str, str]]:
    """Form or query parameters: the fields read, each maybe present, plus strangers."""
    return st.builds(lambda known, extra: {**extra, **known}, st.fixed_dictionaries({}, optional=fields),
                     st.dictionaries(form_text, form_text, max_size=2))


def text_of(values: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """A form value: the field's kind of value as text (no lone surrogate: forms cannot carry it)."""
    return st.one_of(values.map(str).filter(lambda text: text == text.encode("utf-8", "replace").decode()),
                     form_text, st.just("x" * 120), st.just("x" * 300))


ids, phones, emails, numbers = ANY.ids, GOOD.phones | ANY.phones, GOOD.emails | ANY.emails, GOOD.numbers | ANY.numbers
words = st.sampled_from(sorted(STOP_WORDS | START_WORDS) + [" stop ", "hello"])
twilio_forms = form({"MessageSid": text_of(ids), "SmsSid": text_of(ids), "From": text_of(phones),
                     "MessageStatus": text_of(st.sampled_from(["delivered", "undelivered", "sent", "received"])),
                     "SmsStatus": text_of(st.sampled_from(["received"])), "Body": text_of(words)})
postbacks = form({"event": text_of(st.sampled_from(["conversion", "click", "refund"])), "click_id": text_of(ids),
                  "event_id": text_of(ids), "transaction_id": text_of(ids), "external_id": text_of(ids),
                  "email": text_of(emails), "phone": text_of(phones), "name": text_of(any_text.filter(str.isprintable)),
                  "value": text_of(numbers), "link": text_of(ids)})

def bodies(documents: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """A shaped document (the identity fields right, so that it reaches the mapping), or any JSON,
    or any text at all."""
    return st.one_of(documents.map(json.dumps), any_json.map(json.dumps), deep_json.map(json.dumps),
                     st.text(max_size=40))


# -- each scheme's request, signed ---------------------------------------------------------------

Send = tuple[str, str, dict[str, Any]]  # method, path, keyword arguments of the client's request


def signed_post(path: str, signed: tuple[bytes, dict[str, str]]) -> Send:
    return "POST", path, {"data": signed[0], "headers": signed[1]}


SCHEMES: dict[str, st.SearchStrategy[Send]] = {
    "standard": st.builds(lambda body, msg_id: signed_post("/webhooks/app", standard(body, msg_id)),
                          bodies(documents(canonical_docs)), st.uuids().map(str)),
    "stripe": bodies(documents(stripe_docs)).map(lambda body: signed_post("/webhooks/stripe", stripe_signed(body))),
    "calcom": bodies(documents(cal_docs)).map(lambda body: signed_post("/webhooks/cal", cal_signed(body))),
    "twilio": twilio_forms.map(lambda params: signed_post("/webhooks/twilio", twilio_signed("/webhooks/twilio",
                                                                                          params))),
    "token": st.one_of(
        bodies(documents(canonical_docs) | documents(postmark_docs)).map(lambda body: ("POST", "/webhooks/zap", {
            "data": body.encode(), "headers": {"X-Webhook-Token": TOKEN, "Content-Type": "application/json"}})),
        postbacks.map(lambda params: ("GET", "/webhooks/zap", {"params": {**params, "token": TOKEN}})),
        postbacks.map(lambda params: ("POST", "/webhooks/zap", {"params": {"token": TOKEN}, "data": urlencode(params),
                                                                "headers": {"Content-Type": FORM}})),
        postbacks.map(lambda params: ("POST", "/webhooks/zap", {"params": {**params, "token": TOKEN}}))),
}


@pytest.fixture
async def roomy_client(aiohttp_client, migrated_db: str):  # type: ignore[no-untyped-def]
    settings = settings_for(migrated_db, WEBHOOK_MAX_BYTES=str(64 * 1024))
    client = await aiohttp_client(build_public_app(settings))
    client.settings = settings
    return client


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
async def test_every_signed_request_gets_202_200_or_400_and_what_is_accepted_processes(  # type: ignore[no-untyped-def]
        roomy_client, scheme: str, data: st.DataObject) -> None:
    # Given a request its source signed correctly, whatever it says
    method, path, kwargs = data.draw(SCHEMES[scheme], label="request")
    response = await roomy_client.request(method, path, **kwargs)
    # Then the answer is the sender's fault or a success, never ours
    assert response.status in ACCEPTABLE, (response.status, await response.text())
    if response.content_type == "text/xml":  # Twilio reads its answers as TwiML
        assert scheme == "twilio" and response.status in (200, 202)
        assert ElementTree.fromstring(await response.text()).tag == "Response"
        body = {}
    else:
        body = await response.json()
        assert ("error" in body) if response.status == 400 else body["status"] in ("accepted", "duplicate")
    event(f"{response.status} {body.get('error', '').partition(':')[0][:30]}")  # the spread, with --hypothesis-show-statistics
    # and what was accepted is processed without failing
    outcome = await asyncio.to_thread(process_pending, roomy_client.settings)
    assert "failed" not in outcome, [e.error for e in InboundEvent.select().where(InboundEvent.status == "failed")]
