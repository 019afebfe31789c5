"""What an incoming webhook means: its event id (for deduplication) and the canonical events it
maps to (contract: contact.upsert, contact.unsubscribe, conversion, delivery, click).

* ``standard`` and ``token`` sources send canonical events ``{"type": ..., "data": {...}}``; a
  ``token`` source may also send Postmark's delivery/bounce/spam JSON, or a postback (GET or form)
  with ``event=conversion|click`` parameters.
* ``stripe``: checkout.session.completed and payment_intent.succeeded -> conversion.
* ``calcom``: BOOKING_CREATED -> contact.upsert + conversion.
* ``twilio``: status callbacks -> delivery; inbound STOP/START -> sms suppression on/off.

A body that cannot be parsed, or a canonical event that is not valid, raises ``InvalidEvent``
(400, nothing stored). A native payload that verifies but has no mapping is kept with its reason
(``unmappable``), visible to an operator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.config import CHANNELS
from daemon.errors import RetentiondError
from daemon.signatures import WebhookRequest
from engine.contacts import InvalidContact, parse_contact

EVENT_TYPES = ("contact.upsert", "contact.unsubscribe", "conversion", "delivery", "click")
DELIVERY_STATUSES = ("delivered", "failed", "bounced", "complained")
STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "UNSTOP", "YES", "OPTIN"}
KEY_FIELDS = ("external_id", "email", "phone")


class InvalidEvent(RetentiondError):
    """Not a valid event (-> 400)."""


@dataclass(frozen=True)
class Interpreted:
    event_id: str
    type: str | None
    events: list[dict[str, Any]] = field(default_factory=list)  # canonical events, in order
    unmappable: str | None = None  # why a verified payload has no meaning for us

    def stored_payload(self, raw: str) -> str:
        return json.dumps({"events": self.events, "raw": raw[:65536]}, separators=(",", ":"))


def interpret(scheme: str, request: WebhookRequest, default_region: str) -> Interpreted:
    if scheme == "standard":
        document = _json_object(request.body)
        event_id = request.headers.get("webhook-id", "")
        return Interpreted(event_id[:255], document.get("type"), [canonical(document, default_region)])
    if scheme == "stripe":
        return _stripe(_json_object(request.body))
    if scheme == "calcom":
        return _calcom(_json_object(request.body), default_region)
    if scheme == "twilio":
        return _twilio(request.form)
    return _token(request, default_region)


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidEvent("empty body")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidEvent("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidEvent("the body must be a JSON object")
    return document


def _key(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    key = {k: data[k] for k in KEY_FIELDS if data.get(k)}
    if not key:
        raise InvalidEvent(f"{where}: needs a contact key (external_id, email or phone)")
    return key


def canonical(document: Mapping[str, Any], default_region: str) -> dict[str, Any]:
    """Validate one canonical event; return it normalised."""
    kind = document.get("type")
    data = document.get("data")
    if kind not in EVENT_TYPES:
        raise InvalidEvent(f"type: unknown event type {kind!r} (one of {', '.join(EVENT_TYPES)})")
    if not isinstance(data, Mapping):
        raise InvalidEvent("data: expected an object")
    if kind == "contact.upsert":
        fields = {k: v for k, v in data.items() if k != "campaign"}
        try:
            contact = parse_contact(fields, default_region)
        except InvalidContact as exc:
            raise InvalidEvent(f"data.{exc}") from None
        out: dict[str, Any] = {k: v for k, v in vars(contact).items() if v not in (None, {}, "")}
        if data.get("campaign"):
            out["campaign"] = str(data["campaign"])
        return {"type": kind, "data": out}
    if kind == "contact.unsubscribe":
        channel = data.get("channel")
        if channel is not None and channel not in CHANNELS:
            raise InvalidEvent(f"data.channel: unknown channel {channel!r}")
        return {"type": kind, "data": {**_key(data, "data"), **({"channel": channel} if channel else {})}}
    if kind == "conversion":
        value = data.get("value")
        if value is not None and not isinstance(value, int | float):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise InvalidEvent("data.value: expected a number") from None
        return {"type": kind, "data": {**_key(data, "data"), "name": data.get("name"), "value": value}}
    if kind == "delivery":
        if not data.get("provider_message_id"):
            raise InvalidEvent("data.provider_message_id: required")
        if data.get("status") not in DELIVERY_STATUSES:
            raise InvalidEvent(f"data.status: one of {', '.join(DELIVERY_STATUSES)}")
        return {"type": kind, "data": {"provider_message_id": str(data["provider_message_id"]),
                                       "status": data["status"]}}
    if not data.get("token"):
        raise InvalidEvent("data.token: required")
    return {"type": "click", "data": {"token": str(data["token"])}}


def _stripe(document: Mapping[str, Any]) -> Interpreted:
    event_id, kind = str(document.get("id") or ""), str(document.get("type") or "")
    if not event_id:
        raise InvalidEvent("id: a Stripe event needs its id")
    obj = (document.get("data") or {}).get("object") or {}
    if kind == "checkout.session.completed":
        details = obj.get("customer_details") or {}
        key = {"email": obj.get("customer_email") or details.get("email"), "external_id": obj.get("client_reference_id")}
        value = (obj.get("amount_total") or 0) / 100
    elif kind == "payment_intent.succeeded":
        metadata = obj.get("metadata") or {}
        key = {"email": obj.get("receipt_email") or metadata.get("email"), "external_id": metadata.get("external_id")}
        value = (obj.get("amount_received") or obj.get("amount") or 0) / 100
    else:
        return Interpreted(event_id, kind, unmappable=f"stripe event {kind!r} has no mapping")
    key = {k: v for k, v in key.items() if v}
    if not key:
        return Interpreted(event_id, kind, unmappable="no customer email or client_reference_id to find the contact")
    return Interpreted(event_id, kind, [{"type": "conversion", "data": {**key, "name": kind, "value": value}}])


def _calcom(document: Mapping[str, Any], default_region: str) -> Interpreted:
    trigger = str(document.get("triggerEvent") or "")
    payload = document.get("payload") or {}
    uid = payload.get("uid") or payload.get("bookingId")
    if not uid:
        raise InvalidEvent("payload.uid: a Cal.com event needs its booking uid")
    event_id = f"{uid}:{trigger}"
    if trigger != "BOOKING_CREATED":
        return Interpreted(event_id, trigger, unmappable=f"cal.com {trigger!r} has no mapping")
    attendees = payload.get("attendees") or []
    if not attendees or not isinstance(attendees[0], Mapping) or not attendees[0].get("email"):
        return Interpreted(event_id, trigger, unmappable="no attendee email")
    attendee = attendees[0]
    upsert: dict[str, Any] = {"type": "contact.upsert", "data": {
        "email": attendee["email"], "name": attendee.get("name"), "timezone": attendee.get("timeZone")}}
    try:
        upsert = canonical(upsert, default_region)
    except InvalidEvent:
        upsert = canonical({"type": "contact.upsert", "data": {"email": attendee["email"]}}, default_region)
    conversion = {"type": "conversion", "data": {"email": upsert["data"]["email"], "name": "booking", "value": None}}
    return Interpreted(event_id, trigger, [upsert, conversion])


def _twilio(form: Mapping[str, str]) -> Interpreted:
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    if not sid:
        raise InvalidEvent("MessageSid: required")
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if status and status != "received":
        mapped = {"delivered": "delivered", "undelivered": "failed", "failed": "failed"}.get(status)
        event_id = f"{sid}:{status}"
        if mapped is None:
            return Interpreted(event_id, f"status.{status}", unmappable=f"intermediate status {status!r}")
        return Interpreted(event_id, "delivery", [{"type": "delivery",
                                                   "data": {"provider_message_id": sid, "status": mapped}}])
    word = (form.get("Body") or "").strip().upper()
    sender = form.get("From") or ""
    if word in STOP_WORDS:
        return Interpreted(sid, "inbound.stop", [{"type": "contact.unsubscribe",
                                                  "data": {"phone": sender, "channel": "sms", "reason": "STOP"}}])
    if word in START_WORDS:
        return Interpreted(sid, "inbound.start", [{"type": "contact.resubscribe",
                                                   "data": {"phone": sender, "channel": "sms"}}])
    return Interpreted(sid, "inbound.reply", unmappable="an inbound reply, not a STOP/START keyword")


def _token(request: WebhookRequest, default_region: str) -> Interpreted:
    if request.method == "GET" or not request.body.strip():
        params = {k: v for k, v in request.query.items() if k != "token"}
        return _postback(params)
    content_type = request.headers.get("Content-Type", "")
    if "form" in content_type:
        return _postback(dict(request.form))
    document = _json_object(request.body)
    if "RecordType" in document:
        return _postmark(document)
    event_id = str(document.get("event_id") or document.get("id") or request.headers.get("X-Event-Id") or "")
    if not event_id:
        raise InvalidEvent("event_id: a token source must give an event id (event_id, id or X-Event-Id)")
    return Interpreted(event_id[:255], document.get("type"), [canonical(document, default_region)])


def _postback(params: Mapping[str, str]) -> Interpreted:
    kind = params.get("event", "conversion")
    event_id = params.get("event_id") or params.get("click_id") or params.get("transaction_id") or ""
    if not event_id:
        raise InvalidEvent("click_id: a postback needs click_id, event_id or transaction_id")
    if kind == "click":
        if not params.get("link"):
            raise InvalidEvent("link: a click postback needs the tracked link token")
        return Interpreted(event_id, "click", [{"type": "click", "data": {"token": params["link"]}}])
    if kind != "conversion":
        raise InvalidEvent("event: expected conversion or click")
    key = {k: params[k] for k in KEY_FIELDS if params.get(k)}
    if not key:
        raise InvalidEvent("a conversion postback needs external_id, email or phone")
    document = {"type": "conversion", "data": {**key, "name": params.get("name") or "postback",
                                               "value": params.get("value")}}
    return Interpreted(event_id, "conversion", [canonical(document, "US")])


def _postmark(document: Mapping[str, Any]) -> Interpreted:
    record = str(document.get("RecordType"))
    message_id = str(document.get("MessageID") or "")
    if not message_id:
        raise InvalidEvent("MessageID: required")
    status = {"Delivery": "delivered", "Bounce": "bounced", "SpamComplaint": "complained"}.get(record)
    event_id = str(document.get("ID") or f"{message_id}:{record}")
    if status is None:
        return Interpreted(event_id, record, unmappable=f"postmark {record!r} has no mapping")
    if record == "Bounce" and document.get("Type") not in (None, "HardBounce", "BadEmailAddress", "ManuallyDeactivated"):
        status = "failed"  # a soft bounce: recorded, no suppression
    return Interpreted(event_id, "delivery", [{"type": "delivery",
                                               "data": {"provider_message_id": message_id, "status": status}}])
