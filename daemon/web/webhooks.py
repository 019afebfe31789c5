"""``POST /webhooks/{source}`` (and GET for ``token`` postbacks): verify, interpret, commit, answer.

Statuses (contract): 404 unknown source; 413 body over ``WEBHOOK_MAX_BYTES`` (aiohttp refuses it
while reading); 401 bad or missing signature, token or timestamp; 400 a body that cannot be parsed
or is not a valid event; 202 committed to the database; 200 a duplicate of an event already
accepted (same event id), processed once; 503 the database could not take it in time, or the
ingest queue is full (nothing accepted; ``Retry-After`` says when to retry).
A rejected request writes nothing.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from aiohttp import web
from twilio.twiml.voice_response import VoiceResponse

from daemon.web.group_commit import IncomingEvent, Overloaded
from daemon.web.keys import COMMITTER, SETTINGS
from daemon.web.signatures import verify
from engine.events import OPTOUT_EVENT, InvalidEvent, WebhookRequest, interpret, stored_raw
from ground.errors import InvalidSignature
from ground.metrics import WEBHOOK_EVENTS, WEBHOOK_LATENCY
from ground.vocabulary import InboundStatus, WebhookScheme

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()


def _refuse(source: str, outcome: str, status: int, message: str,
            headers: dict[str, str] | None = None) -> web.Response:
    WEBHOOK_EVENTS.labels(source, outcome).inc()
    return web.json_response({"error": message}, status=status, headers=headers)


def twilio_answer(kind: str | None) -> str:
    """The TwiML answering a Twilio webhook: words for an opted-out callee, else nothing to do."""
    response = VoiceResponse()
    if kind == OPTOUT_EVENT:
        response.say("You will not get these calls again. Goodbye.")
        response.hangup()
    return str(response)


@routes.route("*", "/webhooks/{source}")
async def receive(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    name = request.match_info["source"]
    source = settings.sources.get(name)
    if source is None:
        return _refuse("unknown", "unknown_source", 404, "unknown source")
    if request.method not in ("POST", "GET") or (request.method == "GET" and source.scheme != "token"):
        return _refuse(name, "bad_method", 405, "POST only" if source.scheme != "token" else "GET or POST")
    with WEBHOOK_LATENCY.labels(name).time():
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refuse(name, "too_large", 413, f"body over {settings.webhook_max_bytes} bytes")
        form = {}
        if "application/x-www-form-urlencoded" in request.headers.get("Content-Type", ""):
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        incoming = WebhookRequest(request.method, request.path_qs, request.headers, request.query, body, form)
        try:
            verify(source, incoming, settings.public_url, settings.webhook_tolerance_s)
        except InvalidSignature:
            return _refuse(name, "unauthorized", 401, "bad or missing signature")
        try:
            meaning = interpret(source.scheme, incoming, settings.default_region)
        except InvalidEvent as exc:
            return _refuse(name, "invalid", 400, str(exc))
        if not meaning.event_id:
            return _refuse(name, "invalid", 400, "no event id")
        raw = stored_raw(source.scheme, incoming, str(source.secret or ""))
        event = IncomingEvent(name, meaning.event_id, meaning.type, meaning.stored_payload(raw),
                              status=InboundStatus.UNMAPPABLE if meaning.unmappable else InboundStatus.PENDING, error=meaning.unmappable)
        committer = request.app[COMMITTER]
        # 503 + Retry-After: nothing was accepted as far as we know, the sender retries (a commit whose
        # answer the database lost with its connection may have gone through: the retry gets 200).
        try:
            new = await committer.submit(event)
        except Overloaded as exc:
            return _refuse(name, "overloaded", 503, f"{exc}; retry later",
                           {"Retry-After": str(exc.retry_after_s)})
        except Exception:
            return _refuse(name, "unavailable", 503, "could not store the event; retry later",
                           {"Retry-After": str(committer.retry_after_s)})
    WEBHOOK_EVENTS.labels(name, "accepted" if new else "duplicate").inc()
    if source.scheme == WebhookScheme.TWILIO:
        # Twilio reads the answer as TwiML: a call whose opt-out key was pressed hears it taken
        # (JSON would make it say "an application error has occurred")
        return web.Response(text=twilio_answer(meaning.type), content_type="text/xml", status=202 if new else 200)
    if new:
        return web.json_response({"status": "accepted", "event_id": meaning.event_id}, status=202)
    return web.json_response({"status": "duplicate", "event_id": meaning.event_id}, status=200)
