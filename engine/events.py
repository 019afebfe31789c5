"""What an incoming webhook means: its event id (for deduplication) and the canonical events it
maps to (contract: contact.upsert, contact.unsubscribe, conversion, delivery, click).

* ``standard`` and ``token`` sources send canonical events ``{"type": ..., "data": {...}}``; a
  ``token`` source may also send Postmark's delivery/bounce/spam JSON, or a postback (GET or form)
  with ``event=conversion|click`` parameters.
* ``stripe``: checkout.session.completed and payment_intent.succeeded -> conversion.
* ``calcom``: BOOKING_CREATED -> contact.upsert + conversion.
* ``twilio``: message and call status callbacks -> delivery; inbound STOP/START -> sms suppression
  on/off; the opt-out key pressed in a call -> call suppression.

A body that cannot be parsed, or a canonical event that is not valid, raises ``InvalidEvent``
(400, nothing stored). A native payload that verifies but has no mapping is kept with its reason
(``unmappable``), visible to an operator.

Whatever a verified sender posts, the answer is 202, 200 or 400, never a 5xx: every field is read
through a type check (a list where an object belongs is a 400 naming the field, not a crash), JSON
nested past the parser's limit is a 400, and every text that reaches a column (event id, type,
reason, canonical data) is storable on both engines — no NUL, no lone surrogate, within its column's
length. An event id is refused rather than cut (two events must never collapse into one).

What is stored of the request (``stored_raw``) never holds the source's secret: a ``token``
source's ``token`` parameter is dropped and any other occurrence of the secret is masked; headers
(``X-Webhook-Token``, signatures) are never stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, quote_plus

from engine.contacts import InvalidContact, normalise_email, normalise_phone, parse_contact
from ground.channels import CHANNELS, ChannelName
from ground.errors import RetentiondError
from ground.vocabulary import DELIVERY_STATUSES, EVENT_TYPES, EventType, WebhookScheme

STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "UNSTOP", "YES", "OPTIN"}
KEY_FIELDS = ("external_id", "email", "phone")
EVENT_ID_MAX = 255  # inbound_event.event_id
TYPE_MAX = 100  # inbound_event.type
NAME_MAX = 100  # attribution.name
TEXT_MAX = 320  # any other identifier we look things up by (an email is at most 320)
RAW_MAX = 65536  # characters of the request kept beside its meaning


class InvalidEvent(RetentiondError):
    """Not a valid event (-> 400)."""


@dataclass(frozen=True)
class Interpreted:
    event_id: str
    type: str | None
    events: list[dict[str, Any]] = field(default_factory=list)  # canonical events, in order
    unmappable: str | None = None  # why a verified payload has no meaning for us

    def stored_payload(self, raw: str) -> str:
        return json.dumps({"events": self.events, "raw": raw[:RAW_MAX]}, separators=(",", ":"))


@dataclass(frozen=True)
class WebhookRequest:
    """A webhook request as it arrived: what the signature check and the interpreters read."""

    method: str
    path_qs: str  # path and query string, as received
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    query: Mapping[str, str]
    body: bytes
    form: Mapping[str, str] = field(default_factory=dict)  # parsed form-encoded body (twilio)


def interpret(scheme: str, request: WebhookRequest, default_region: str) -> Interpreted:
    """The meaning of a verified request, storable as it is; ``InvalidEvent`` (400) otherwise."""
    # No fallback: a scheme without an interpreter is a KeyError (ValueError if not a scheme at all)
    # here, and a failing test, never read silently as another scheme's payload.
    return _storable(INTERPRETERS[WebhookScheme(scheme)](request, default_region))


def stored_raw(scheme: str, request: WebhookRequest, secret: str) -> str:
    """What is kept of the request beside its meaning, for an operator: the body, or the query
    parameters of a bodiless postback — without the source's secret, whatever the scheme."""
    if request.body:
        if request.form and scheme == WebhookScheme.TOKEN:
            raw = json.dumps({k: v for k, v in request.form.items() if k != "token"})
        else:
            raw = request.body.decode("utf-8", "replace")
    else:
        raw = json.dumps({k: v for k, v in request.query.items() if k != "token"})
    if secret:
        for form in {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}:
            raw = raw.replace(form, "[secret]")
    return raw[:RAW_MAX]


def _storable(meaning: Interpreted) -> Interpreted:
    """Every text a column will hold, fit for it on both engines (see the module's docstring)."""
    event_id = _text(meaning.event_id, "event id", EVENT_ID_MAX) or ""
    if event_id != _clean(event_id):
        raise InvalidEvent("event id: contains a NUL or an invalid character")
    kind = None if meaning.type is None else _clean(str(meaning.type))[:TYPE_MAX]  # informative: cut, not refused
    reason = None if meaning.unmappable is None else _clean(meaning.unmappable)[:2000]
    return replace(meaning, event_id=event_id, type=kind, unmappable=reason,
                   events=[_clean_deep(event) for event in meaning.events])


def _clean(text: str) -> str:
    """Without NUL (PostgreSQL refuses it in text and jsonb) or lone surrogates (no encoding takes
    them); both arrive legally through JSON escapes or URL encoding."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _clean_deep(value: Any) -> Any:
    # canonical events are shallow; attributes are depth-bounded by parse_contact
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, Mapping):
        return {_clean(str(k)): _clean_deep(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_deep(v) for v in value]
    return value


def _short(value: Any, limit: int = 60) -> str:
    """A bounded rendering of a sender's value for a message: a 256 KiB 'type' is not echoed back."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _text(value: Any, where: str, limit: int = TEXT_MAX) -> str | None:
    """A text (or integer) identifier, stripped; None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(f"{where}: expected text")
    text = str(value).strip()
    if len(text) > limit:
        raise InvalidEvent(f"{where}: longer than {limit} characters")
    return text or None


def _object(value: Any, where: str) -> Mapping[str, Any]:
    """A JSON object, or {} when absent: a list or a number where an object belongs is a 400."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"{where}: expected an object")
    return value


MAX_VALUE = 1e12  # a conversion's value, in either direction: beyond it no sum stays exact (nor finite)


def _number(value: Any, where: str) -> float | None:
    """A finite number (or its text, as postbacks send it) of at most MAX_VALUE either way, None
    when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidEvent(f"{where}: expected a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise InvalidEvent(f"{where}: expected a number") from None
    if not math.isfinite(number):
        raise InvalidEvent(f"{where}: expected a finite number")
    if abs(number) > MAX_VALUE:
        raise InvalidEvent(f"{where}: more than {MAX_VALUE:g} either way")
    return number


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidEvent("empty body")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidEvent("the body is not valid JSON") from None
    except RecursionError:  # nested deeper than the parser goes; nothing of ours nests that deep
        raise InvalidEvent("the body is nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidEvent("the body must be a JSON object")
    return document


def _key(data: Mapping[str, Any], where: str, default_region: str) -> dict[str, Any]:
    """The contact key of an event, normalised as the contact's own fields are (an address that
    can never match anyone is refused now, not failed later)."""
    key: dict[str, Any] = {}
    for name in KEY_FIELDS:
        text = _text(data.get(name), f"{where}.{name}", 255 if name == "external_id" else TEXT_MAX)
        if text is None:
            continue
        try:
            key[name] = (normalise_email(text) if name == "email"
                         else normalise_phone(text, default_region) if name == "phone" else text)
        except InvalidContact as exc:
            raise InvalidEvent(f"{where}.{exc}") from None
    if not key:
        raise InvalidEvent(f"{where}: needs a contact key (external_id, email or phone)")
    return key


def canonical(document: Mapping[str, Any], default_region: str) -> dict[str, Any]:
    """Validate one canonical event; return it normalised."""
    kind = document.get("type")
    data = document.get("data")
    if kind not in EVENT_TYPES:
        raise InvalidEvent(f"type: unknown event type {_short(kind)!r} (one of {', '.join(EVENT_TYPES)})")
    if not isinstance(data, Mapping):
        raise InvalidEvent("data: expected an object")
    if kind == EventType.CONTACT_UPSERT:
        fields = {k: v for k, v in data.items() if k != "campaign"}
        try:
            contact = parse_contact(fields, default_region)
        except InvalidContact as exc:
            raise InvalidEvent(f"data.{exc}") from None
        out: dict[str, Any] = {k: v for k, v in vars(contact).items() if v not in (None, {}, "")}
        campaign = _text(data.get("campaign"), "data.campaign", 255)
        if campaign:
            out["campaign"] = campaign
        return {"type": kind, "data": out}
    if kind == EventType.CONTACT_UNSUBSCRIBE:
        channel = data.get("channel")
        if channel is not None and channel not in CHANNELS:
            raise InvalidEvent(f"data.channel: unknown channel {_short(channel)!r}")
        return {"type": kind, "data": {**_key(data, "data", default_region), **({"channel": channel} if channel else {})}}
    if kind == EventType.CONVERSION:
        return {"type": kind, "data": {**_key(data, "data", default_region),
                                       "name": _text(data.get("name"), "data.name", NAME_MAX),
                                       "value": _number(data.get("value"), "data.value")}}
    if kind == EventType.DELIVERY:
        provider_message_id = _text(data.get("provider_message_id"), "data.provider_message_id")
        if not provider_message_id:
            raise InvalidEvent("data.provider_message_id: required")
        if data.get("status") not in DELIVERY_STATUSES:
            raise InvalidEvent(f"data.status: one of {', '.join(DELIVERY_STATUSES)}")
        return {"type": kind, "data": {"provider_message_id": provider_message_id, "status": data["status"]}}
    token = _text(data.get("token"), "data.token")
    if not token:
        raise InvalidEvent("data.token: required")
    return {"type": EventType.CLICK, "data": {"token": token}}


def _mapped(event_id: str, kind: str, events: Sequence[Mapping[str, Any]], default_region: str) -> Interpreted:
    """A native payload's events through the canonical checks: a verified payload whose data we
    cannot use (an attendee's malformed address) is kept as unmappable with the reason, not
    refused, so the sender does not retry it for days."""
    try:
        return Interpreted(event_id, kind, [canonical(event, default_region) for event in events])
    except InvalidEvent as exc:
        return Interpreted(event_id, kind, unmappable=str(exc))


def _stripe(request: WebhookRequest, default_region: str) -> Interpreted:
    document = _json_object(request.body)
    event_id = _text(document.get("id"), "id", EVENT_ID_MAX)
    kind = _text(document.get("type"), "type", TYPE_MAX) or ""
    if not event_id:
        raise InvalidEvent("id: a Stripe event needs its id")
    obj = _object(_object(document.get("data"), "data").get("object"), "data.object")
    if kind == "checkout.session.completed":
        details = _object(obj.get("customer_details"), "data.object.customer_details")
        key = {"email": obj.get("customer_email") or details.get("email"), "external_id": obj.get("client_reference_id")}
        value = _number(obj.get("amount_total"), "data.object.amount_total")
    elif kind == "payment_intent.succeeded":
        metadata = _object(obj.get("metadata"), "data.object.metadata")
        key = {"email": obj.get("receipt_email") or metadata.get("email"), "external_id": metadata.get("external_id")}
        value = _number(obj.get("amount_received") or obj.get("amount"), "data.object.amount_received")
    else:
        return Interpreted(event_id, kind, unmappable=f"stripe event {_short(kind)!r} has no mapping")
    if not any(key.values()):
        return Interpreted(event_id, kind, unmappable="no customer email or client_reference_id to find the contact")
    conversion = {"type": EventType.CONVERSION, "data": {**key, "name": kind, "value": (value or 0) / 100}}
    return _mapped(event_id, kind, [conversion], default_region)


def _calcom(request: WebhookRequest, default_region: str) -> Interpreted:
    document = _json_object(request.body)
    trigger = _text(document.get("triggerEvent"), "triggerEvent", TYPE_MAX) or ""
    payload = _object(document.get("payload"), "payload")
    uid = _text(payload.get("uid"), "payload.uid") or _text(payload.get("bookingId"), "payload.bookingId")
    if not uid:
        raise InvalidEvent("payload.uid: a Cal.com event needs its booking uid")
    event_id = f"{uid}:{trigger}"
    if trigger != "BOOKING_CREATED":
        return Interpreted(event_id, trigger, unmappable=f"cal.com {_short(trigger)!r} has no mapping")
    attendees = payload.get("attendees") or []
    if not isinstance(attendees, list):
        raise InvalidEvent("payload.attendees: expected a list")
    if not attendees or not isinstance(attendees[0], Mapping) or not attendees[0].get("email"):
        return Interpreted(event_id, trigger, unmappable="no attendee email")
    attendee = attendees[0]
    upsert: dict[str, Any] = {"type": EventType.CONTACT_UPSERT, "data": {
        "email": attendee["email"], "name": attendee.get("name"), "timezone": attendee.get("timeZone")}}
    try:
        upsert = canonical(upsert, default_region)
    except InvalidEvent:  # a name or timezone we cannot take does not lose the booking
        upsert = {"type": EventType.CONTACT_UPSERT, "data": {"email": attendee["email"]}}
    conversion = {"type": EventType.CONVERSION, "data": {"email": attendee["email"], "name": "booking", "value": None}}
    return _mapped(event_id, trigger, [upsert, conversion], default_region)


OPTOUT_EVENT = "call.optout"  # the stored type of a call's opt-out key press (the daemon answers it in TwiML)
# A call's final statuses (Twilio's CallStatus) and what they mean for its send; the others
# (queued, initiated, ringing, in-progress) are intermediate
CALL_STATUSES = {"completed": "delivered", "busy": "failed", "no-answer": "failed", "failed": "failed",
                 "canceled": "failed"}


def _twilio(request: WebhookRequest, default_region: str) -> Interpreted:
    form = request.form
    if form.get("CallSid") is not None:
        return _twilio_call(request, default_region)
    sid = _text(form.get("MessageSid"), "MessageSid") or _text(form.get("SmsSid"), "SmsSid")
    if not sid:
        raise InvalidEvent("MessageSid: required")
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if status and status != "received":
        mapped = {"delivered": "delivered", "undelivered": "failed", "failed": "failed"}.get(status)
        event_id = f"{sid}:{status}"
        if mapped is None:
            return Interpreted(event_id, f"status.{status}", unmappable=f"intermediate status {_short(status)!r}")
        return Interpreted(event_id, EventType.DELIVERY, [{"type": EventType.DELIVERY,
                                                           "data": {"provider_message_id": sid, "status": mapped}}])
    word = (form.get("Body") or "").strip().upper()
    kind = "inbound.stop" if word in STOP_WORDS else "inbound.start" if word in START_WORDS else None
    if kind is None:
        return Interpreted(sid, "inbound.reply", unmappable="an inbound reply, not a STOP/START keyword")
    try:
        sender = normalise_phone(form.get("From") or "", default_region)
    except InvalidContact:
        return Interpreted(sid, kind, unmappable="a STOP/START from a number we cannot read")
    if kind == "inbound.stop":
        return Interpreted(sid, kind, [{"type": EventType.CONTACT_UNSUBSCRIBE,
                                        "data": {"phone": sender, "channel": ChannelName.SMS, "reason": "STOP"}}])
    return Interpreted(sid, kind, [{"type": EventType.CONTACT_RESUBSCRIBE, "data": {"phone": sender, "channel": ChannelName.SMS}}])


def _twilio_call(request: WebhookRequest, default_region: str) -> Interpreted:
    """A call's status callback, or the key its callee pressed in the opt-out ``<Gather>``
    (engine/voice.py: the digit that opts out rides in the action URL's ``optout`` parameter)."""
    form = request.form
    sid = _text(form.get("CallSid"), "CallSid")
    if not sid:
        raise InvalidEvent("CallSid: required")
    digits = form.get("Digits")
    if digits is not None:
        wanted = request.query.get("optout")
        if not wanted or _text(digits, "Digits") != wanted:
            return Interpreted(f"{sid}:digits", "call.digits", unmappable="a key that is not the opt-out digit")
        try:
            callee = normalise_phone(form.get("To") or "", default_region)
        except InvalidContact:
            return Interpreted(f"{sid}:digits", OPTOUT_EVENT, unmappable="an opt-out from a number we cannot read")
        return Interpreted(f"{sid}:digits", OPTOUT_EVENT, [{"type": EventType.CONTACT_UNSUBSCRIBE, "data": {
            "phone": callee, "channel": ChannelName.CALL, "reason": "opt-out key"}}])
    status = _text(form.get("CallStatus"), "CallStatus", TYPE_MAX) or ""
    mapped = CALL_STATUSES.get(status)
    event_id = f"{sid}:{status}"
    if mapped is None:
        return Interpreted(event_id, f"call.{status}", unmappable=f"intermediate call status {_short(status)!r}")
    return Interpreted(event_id, EventType.DELIVERY, [{"type": EventType.DELIVERY,
                                                       "data": {"provider_message_id": sid, "status": mapped}}])


def _token(request: WebhookRequest, default_region: str) -> Interpreted:
    if request.method == "GET" or not request.body.strip():
        params = {k: v for k, v in request.query.items() if k != "token"}
        return _postback(params, default_region)
    content_type = request.headers.get("Content-Type", "")
    if "form" in content_type:
        return _postback(dict(request.form), default_region)
    document = _json_object(request.body)
    if "RecordType" in document:
        return _postmark(document)
    event_id = (_text(document.get("event_id"), "event_id", EVENT_ID_MAX) or _text(document.get("id"), "id", EVENT_ID_MAX)
                or _text(request.headers.get("X-Event-Id"), "X-Event-Id", EVENT_ID_MAX))
    if not event_id:
        raise InvalidEvent("event_id: a token source must give an event id (event_id, id or X-Event-Id)")
    return Interpreted(event_id, document.get("type"), [canonical(document, default_region)])


def _postback(params: Mapping[str, str], default_region: str) -> Interpreted:
    kind = params.get("event", EventType.CONVERSION)
    event_id = (_text(params.get("event_id"), "event_id", EVENT_ID_MAX)
                or _text(params.get("click_id"), "click_id", EVENT_ID_MAX)
                or _text(params.get("transaction_id"), "transaction_id", EVENT_ID_MAX))
    if not event_id:
        raise InvalidEvent("click_id: a postback needs click_id, event_id or transaction_id")
    if kind == EventType.CLICK:
        link = _text(params.get("link"), "link")
        if not link:
            raise InvalidEvent("link: a click postback needs the tracked link token")
        return Interpreted(event_id, EventType.CLICK, [{"type": EventType.CLICK, "data": {"token": link}}])
    if kind != EventType.CONVERSION:
        raise InvalidEvent("event: expected conversion or click")
    if not any(params.get(k) for k in KEY_FIELDS):
        raise InvalidEvent("a conversion postback needs external_id, email or phone")
    document = {"type": EventType.CONVERSION, "data": {**{k: params.get(k) for k in KEY_FIELDS},
                                                       "name": params.get("name") or "postback", "value": params.get("value")}}
    return Interpreted(event_id, EventType.CONVERSION, [canonical(document, default_region)])


def _postmark(document: Mapping[str, Any]) -> Interpreted:
    record = _text(document.get("RecordType"), "RecordType", TYPE_MAX) or ""
    message_id = _text(document.get("MessageID"), "MessageID")
    if not message_id:
        raise InvalidEvent("MessageID: required")
    status = {"Delivery": "delivered", "Bounce": "bounced", "SpamComplaint": "complained"}.get(record)
    event_id = _text(document.get("ID"), "ID", EVENT_ID_MAX) or f"{message_id}:{record}"
    if status is None:
        return Interpreted(event_id, record, unmappable=f"postmark {_short(record)!r} has no mapping")
    if record == "Bounce" and document.get("Type") not in (None, "HardBounce", "BadEmailAddress", "ManuallyDeactivated"):
        status = "failed"  # a soft bounce: recorded, no suppression
    return Interpreted(event_id, EventType.DELIVERY, [{"type": EventType.DELIVERY,
                                                       "data": {"provider_message_id": message_id, "status": status}}])


def _standard(request: WebhookRequest, default_region: str) -> Interpreted:
    document = _json_object(request.body)
    return Interpreted(request.headers.get("webhook-id", ""), document.get("type"), [canonical(document, default_region)])


# Each webhook scheme's interpreter (tests/test_vocabulary.py keeps the keys equal to WebhookScheme).
INTERPRETERS: dict[WebhookScheme, Callable[[WebhookRequest, str], Interpreted]] = {
    WebhookScheme.STANDARD: _standard, WebhookScheme.STRIPE: _stripe, WebhookScheme.CALCOM: _calcom,
    WebhookScheme.TWILIO: _twilio, WebhookScheme.TOKEN: _token,
}
