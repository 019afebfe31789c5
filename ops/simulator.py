"""The provider simulator: the provider APIs retentiond speaks, on one local port, for tests,
benchmarks and try-outs (``retentiond simulate-providers``).

Serves Twilio Messages and Calls, Postmark /email and /email/batch, the generic webhook endpoint
(POST /webhook) and the push gateway (POST /push), each after ``latency_ms``, with injected
failures: a share ``error_rate`` of calls answered 503, a share ``rate_429`` answered 429 with
``Retry-After: 1`` (for a batch: the whole call). ``GET /stats`` counts successful deliveries:
``received`` (all of them), ``duplicates`` (a second delivery of an idempotency key already
delivered: a message sent twice), ``by_channel`` and ``callbacks`` (``{"sent", "failed"}``: the
receipts below, answered 2xx or not); ``POST /stats/reset`` zeroes them and forgets the messages,
the outcomes and the callbacks (cancelling those still on their way).

``GET /messages`` (``?channel=``, ``?to=``) lists what each accepted call carried, with ``provider``
and the ``provider_message_id`` answered: sms ``to, from, body, status_callback``; call ``to, from,
twiml, status_callback, machine_detection, status_callback_events``; email ``to, from, subject, text, html, headers`` (a
dict), ``message_stream, metadata, tag``; webhook ``headers`` (webhook-id/-timestamp/-signature),
``body``; push ``to`` (the topic), ``title, message``. Never an auth token.

Receipts, sent back as the real providers send them, after the API call is answered, in a
background task per message (so one message's callbacks arrive in order), ``callback_delay_ms``
after the answer:

* Twilio status callbacks to a call's ``StatusCallback``: form-encoded, ``X-Twilio-Signature``
  computed with the auth token of the call's Basic ``Authorization``. Messages: ``sent`` then
  ``delivered`` | ``undelivered`` (ErrorCode 30003), or ``failed`` alone (30008: never sent).
  Calls: ``initiated``, ``ringing``, ``in-progress`` (``answered``), then ``completed`` | ``busy``
  | ``no-answer`` | ``failed``, filtered as Twilio does by ``StatusCallbackEvent`` (none given: the
  final status only); ``AnsweredBy`` once answered when ``MachineDetection`` was asked for.
* Postmark webhooks, when one is configured (``POST /simulate/postmark/webhook`` JSON ``{"url",
  "headers"}``, ``url: null`` to remove it, or the command's options; ``user:password@`` in the URL
  is sent as Basic auth): per recipient of each accepted message a ``Delivery``, or a ``Bounce``
  (HardBounce), or a ``Delivery`` then a ``SpamComplaint``. Recipients at
  ``bounce-testing.postmarkapp.com`` named ``hardbounce`` / ``spamcomplaint`` bounce / complain.
* ``POST /simulate/twilio/inbound`` JSON ``{"url", "account_sid", "from", "to", "body"}``: a person
  texting (STOP...): Twilio's inbound-message webhook, signed with the auth token seen for that
  account (409 if none was), answered ``{"status": <the webhook's HTTP status>}`` once posted (502
  with ``error`` when it could not be).

``POST /simulate/outcome`` JSON ``{"to", "outcome"}`` sets a recipient's fate (``OUTCOMES``; by
default delivered, a call completed by a human). ``GET /callbacks`` (``?kind=``) lists every
callback attempt: ``kind, url, status`` (the HTTP status, or the error) and ``fields`` (Twilio's
form) or ``body`` (Postmark's JSON). A callback that fails is recorded, never retried or raised.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import random
import signal
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from email.utils import getaddresses
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from ops import simulator_push
from ops.simulator_receipts import (
    ANSWERED_STATUSES,
    OUTCOMES,
    POSTMARK_TEST_DOMAIN,
    POSTMARK_TEST_OUTCOMES,
    TWILIO_API_VERSION,
    Callbacks,
    Post,
    PostmarkHook,
    answered_by,
    basic_password,
    call_statuses,
    form_text,
    is_http_url,
    json_object,
    message_statuses,
    postmark_records,
    recipient_key,
    twilio_post,
)

logger = logging.getLogger(__name__)


MESSAGES_KEPT = 10_000  # GET /messages keeps the last ones (a bench sends far more)


class Deliveries:
    """What arrived, by idempotency key, and the last MESSAGES_KEPT messages with their contents;
    kept in memory."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.duplicates = 0
        self.by_channel: Counter[str] = Counter()
        self.seen: set[str] = set()
        self.messages: collections.deque[dict[str, Any]] = collections.deque(maxlen=MESSAGES_KEPT)

    def record(self, channel: str, key: str | None, message: Mapping[str, Any] | None = None) -> None:
        """Count one delivery; ``message`` (what the provider call carried: to, subject, text,
        html, headers...) is kept for ``GET /messages`` with the channel and key added."""
        self.received += 1
        self.by_channel[channel] += 1
        if key:
            if key in self.seen:
                self.duplicates += 1
            self.seen.add(key)
        self.messages.append({"channel": channel, "idempotency_key": key, **(message or {})})

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "duplicates": self.duplicates, "by_channel": dict(self.by_channel)}


class Simulator:
    def __init__(self, latency_ms: float, error_rate: float, rate_429: float, seed: int | None,
                 postmark_hook: PostmarkHook | None = None, callback_delay_ms: float = 0) -> None:
        self.latency_s = latency_ms / 1000
        self.error_rate = error_rate
        self.rate_429 = rate_429
        self.random = random.Random(seed)
        self.deliveries = Deliveries()
        self.callbacks = Callbacks(callback_delay_ms / 1000)
        self.outcomes: dict[str, str] = {}  # recipient_key -> one of OUTCOMES
        self.postmark_hook = postmark_hook
        # Twilio signs its webhooks with the account's auth token: the one each account's API calls
        # authenticated with (kept for inbound messages; never shown)
        self.auth_tokens: dict[str, str] = {}

    def outcome_of(self, address: str) -> str | None:
        key = recipient_key(address)
        if key in self.outcomes:
            return self.outcomes[key]
        local, _, domain = key.rpartition("@")
        return POSTMARK_TEST_OUTCOMES.get(local) if domain == POSTMARK_TEST_DOMAIN else None

    async def answer_then(self, request: web.Request, response: web.Response,
                          receipts: Sequence[Sequence[Post]]) -> web.Response:
        """Answer the API call first, then send each message's receipts (a provider reports on a
        message it has already acknowledged): in order for one message, messages side by side."""
        if any(receipts):
            await response.prepare(request)
            await response.write_eof()
            for posts in receipts:
                self.callbacks.send_later(posts)
        return response

    async def fault(self) -> web.Response | None:
        """Wait the latency; then maybe fail the call as a busy provider would."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        draw = self.random.random()
        if draw < self.error_rate:
            return web.json_response({"code": 20500, "message": "Service unavailable (simulated)"}, status=503)
        if draw < self.error_rate + self.rate_429:
            return web.json_response({"code": 20429, "message": "Too many requests (simulated)"}, status=429,
                                     headers={"Retry-After": "1"})
        return None

    # -- Twilio ---------------------------------------------------------------------------------

    async def twilio(self, request: web.Request) -> web.Response:
        credentials = basic_password(request.headers.get("Authorization", ""))
        if credentials is None:
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        form = await request.post()
        to = form_text(form, "To")
        if not to:
            return web.json_response({"code": 21604, "message": "A 'To' phone number is required."}, status=400)
        callback = form_text(form, "StatusCallback")
        if callback and not is_http_url(callback):
            return web.json_response({"code": 21609, "message": "Invalid StatusCallback url"}, status=400)
        failed = await self.fault()
        if failed is not None:
            return failed
        account = request.match_info["sid"]
        self.auth_tokens[account] = credentials[1]
        calls = request.match_info["resource"] == "Calls"
        key = request.headers.get("I-Twilio-Idempotency-Token") or request.headers.get("Idempotency-Key")
        sid = ("CA" if calls else "SM") + uuid.uuid4().hex
        sender = form_text(form, "From")
        message: dict[str, Any] = {"provider": "twilio", "provider_message_id": sid, "account_sid": account,
                                   "to": to, "from": sender, "status_callback": callback}
        if calls:
            message |= {"twiml": form_text(form, "Twiml"), "machine_detection": form_text(form, "MachineDetection"),
                        # the parameter's values as they came (Twilio takes a list as repeated parameters)
                        "status_callback_events": [v for v in form.getall("StatusCallbackEvent", [])
                                                   if isinstance(v, str)]}
        else:
            message["body"] = form_text(form, "Body")
        self.deliveries.record("call" if calls else "sms", key, message)
        posts: list[Post] = []
        if callback:
            common = {"AccountSid": account, "From": sender or "", "To": to, "ApiVersion": TWILIO_API_VERSION}
            outcome = self.outcome_of(to)
            if calls:
                posts = [twilio_post("twilio.call_status", callback, fields, credentials[1])
                         for fields in self._call_fields(sid, common, outcome, form)]
            else:
                for status, error in message_statuses(outcome):
                    fields = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status, **common}
                    if error:
                        fields["ErrorCode"] = error
                    posts.append(twilio_post("twilio.message_status", callback, fields, credentials[1]))
        answer = web.json_response({"sid": sid, "status": "queued", "to": to}, status=201)
        return await self.answer_then(request, answer, [posts])

    @staticmethod
    def _call_fields(sid: str, common: Mapping[str, str], outcome: str | None,
                     form: MultiDictProxy[Any]) -> list[dict[str, str]]:
        """The form of each status callback of one call."""
        machine_detection = form_text(form, "MachineDetection")
        events = [v for v in form.getall("StatusCallbackEvent", []) if isinstance(v, str)]
        spoken = form_text(form, "Twiml") or ""
        answerer = answered_by(outcome, machine_detection)
        found = []
        for status in call_statuses(outcome, events):
            fields = {"CallSid": sid, "CallStatus": status, "Direction": "outbound-api", **common}
            if status == "completed":
                fields["CallDuration"] = str(max(1, len(spoken) // 15))  # about 15 characters a second
            if answerer and status in ANSWERED_STATUSES:
                fields["AnsweredBy"] = answerer
            found.append(fields)
        return found

    # -- Postmark -------------------------------------------------------------------------------

    @staticmethod
    def _postmark_auth(request: web.Request) -> web.Response | None:
        if not request.headers.get("X-Postmark-Server-Token"):
            return web.json_response({"ErrorCode": 10, "Message": "No Account or Server API tokens were supplied"},
                                     status=401)
        return None

    def _postmark_one(self, message: Any, key: str | None, posts: list[Post]) -> dict[str, Any]:
        """Accept one message (or refuse it, as Postmark does in a batch); its webhooks go in ``posts``."""
        if not isinstance(message, dict) or not message.get("To"):
            return {"ErrorCode": 300, "Message": "Invalid 'To' address."}
        message_id = str(uuid.uuid4())
        metadata: dict[str, Any] = message["Metadata"] if isinstance(message.get("Metadata"), dict) else {}
        headers: list[Any] = message["Headers"] if isinstance(message.get("Headers"), list) else []
        self.deliveries.record("email", key or metadata.get("idempotency_key"), {
            "provider": "postmark", "provider_message_id": message_id, "to": message["To"],
            "from": message.get("From"), "subject": message.get("Subject"), "text": message.get("TextBody"),
            "html": message.get("HtmlBody"),
            "headers": {h.get("Name"): h.get("Value") for h in headers if isinstance(h, dict)},
            "message_stream": message.get("MessageStream"), "metadata": metadata, "tag": message.get("Tag")})
        if self.postmark_hook is not None:
            for _, address in getaddresses([str(message["To"])]):
                if address:
                    posts.extend(self.postmark_hook.post(kind, body) for kind, body
                                 in postmark_records(message, message_id, address, self.outcome_of(address)))
        return {"To": message["To"], "MessageID": message_id, "ErrorCode": 0, "Message": "OK"}

    async def postmark_email(self, request: web.Request) -> web.Response:
        refused = self._postmark_auth(request)
        if refused is not None:
            return refused
        message = await request.json()
        failed = await self.fault()
        if failed is not None:
            return failed
        posts: list[Post] = []
        result = self._postmark_one(message, request.headers.get("Idempotency-Key"), posts)
        answer = web.json_response(result, status=200 if result["ErrorCode"] == 0 else 422)
        return await self.answer_then(request, answer, [posts])

    async def postmark_batch(self, request: web.Request) -> web.Response:
        refused = self._postmark_auth(request)
        if refused is not None:
            return refused
        messages = await request.json()
        if not isinstance(messages, list) or len(messages) > 500:
            return web.json_response({"ErrorCode": 300, "Message": "Expected a list of at most 500 messages"},
                                     status=422)
        failed = await self.fault()
        if failed is not None:
            return failed
        per_message: list[list[Post]] = [[] for _ in messages]
        results = [self._postmark_one(m, None, posts) for m, posts in zip(messages, per_message, strict=True)]
        return await self.answer_then(request, web.json_response(results), per_message)

    # -- generic webhook and push ---------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        failed = await self.fault()
        if failed is not None:
            return failed
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        data = body.get("data") if isinstance(body, dict) else None
        self.deliveries.record("webhook", request.headers.get("webhook-id") or request.headers.get("Idempotency-Key"), {
            "provider": "webhook", "provider_message_id": None,
            "to": data.get("recipient") if isinstance(data, dict) else None,
            "headers": {k: request.headers.get(k) for k in ("webhook-id", "webhook-timestamp", "webhook-signature")},
            "body": body})
        return web.json_response({"ok": True})

    async def push(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or not body.get("topic"):
            return web.json_response({"code": 40001, "message": "topic required"}, status=400)
        failed = await self.fault()
        if failed is not None:
            return failed
        push_id = uuid.uuid4().hex[:12]
        self.deliveries.record("push", request.headers.get("Idempotency-Key"), {
            "provider": "push", "provider_message_id": push_id, "to": body["topic"], "title": body.get("title"),
            "message": body.get("message")})
        return web.json_response({"id": push_id, "topic": body["topic"]})

    # -- stats ----------------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.deliveries.as_dict(), "callbacks": self.callbacks.as_dict()})

    async def messages(self, request: web.Request) -> web.Response:
        """The messages kept, oldest first; ``?channel=`` and ``?to=`` filter them."""
        wanted = {k: request.query[k] for k in ("channel", "to") if k in request.query}
        found = [m for m in self.deliveries.messages if all(m.get(k) == v for k, v in wanted.items())]
        return web.json_response({"messages": found})

    async def reset(self, request: web.Request) -> web.Response:
        self.deliveries.reset()
        self.callbacks.reset()
        self.outcomes.clear()
        return web.json_response(self.deliveries.as_dict())

    # -- receipts -------------------------------------------------------------------------------

    async def list_callbacks(self, request: web.Request) -> web.Response:
        """The callback attempts kept, oldest first; ``?kind=`` filters them."""
        kind = request.query.get("kind")
        return web.json_response({"callbacks": [a for a in self.callbacks.attempts if kind in (None, a["kind"])]})

    async def set_outcome(self, request: web.Request) -> web.Response:
        document = await json_object(request)
        if isinstance(document, web.Response):
            return document
        to, outcome = document.get("to"), document.get("outcome")
        if not isinstance(to, str) or not to.strip():
            return web.json_response({"error": "to: expected a phone number or an email address"}, status=400)
        if outcome not in OUTCOMES:
            return web.json_response({"error": f"outcome: expected one of {', '.join(sorted(OUTCOMES))}"}, status=400)
        self.outcomes[recipient_key(to)] = outcome
        return web.json_response({"to": to, "outcome": outcome})

    async def twilio_inbound(self, request: web.Request) -> web.Response:
        """A person texts one of the account's numbers: Twilio posts its inbound-message webhook."""
        document = await json_object(request)
        if isinstance(document, web.Response):
            return document
        missing = [k for k in ("url", "account_sid", "from", "to", "body") if not isinstance(document.get(k), str)]
        if missing:
            return web.json_response({"error": f"expected text in {', '.join(missing)}"}, status=400)
        if not is_http_url(document["url"]):
            return web.json_response({"error": "url: expected an absolute http(s) URL"}, status=400)
        token = self.auth_tokens.get(document["account_sid"])
        if token is None:
            return web.json_response({"error": "no API call of that account seen yet: its auth token is unknown"},
                                     status=409)
        sid = "SM" + uuid.uuid4().hex
        fields = {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "SmsStatus": "received",
                  "AccountSid": document["account_sid"], "From": document["from"], "To": document["to"],
                  "Body": document["body"], "NumMedia": "0", "NumSegments": "1", "ApiVersion": TWILIO_API_VERSION}
        status = await self.callbacks.send(twilio_post("twilio.inbound_sms", document["url"], fields, token))
        if isinstance(status, str):
            return web.json_response({"status": None, "error": status}, status=502)
        return web.json_response({"status": status})

    async def configure_postmark_webhook(self, request: web.Request) -> web.Response:
        """Set (or, with ``"url": null``, remove) the server's webhook, as Postmark's settings do."""
        document = await json_object(request)
        if isinstance(document, web.Response):
            return document
        if document.get("url") is None:
            self.postmark_hook = None
            return web.json_response({"url": None, "headers": []})
        try:
            self.postmark_hook = PostmarkHook.parse(document.get("url"), document.get("headers"))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.postmark_hook.describe())


SIMULATOR = web.AppKey("simulator", Simulator)

Handler = Callable[[Simulator, web.Request], Awaitable[web.Response]]

# The POST routes standing in for each provider that speaks HTTP, by the provider's name
# (ground.vocabulary.ProviderName; not imported: the simulator stands outside the project, and
# tests/test_dispatch_tables.py checks these names against the providers that call out over HTTP).
PROVIDER_ROUTES: Mapping[str, Sequence[tuple[str, Handler]]] = {
    "twilio": [("/2010-04-01/Accounts/{sid}/{resource:Messages|Calls}.json", Simulator.twilio)],
    "postmark": [("/email", Simulator.postmark_email), ("/email/batch", Simulator.postmark_batch)],
    "webhook": [("/webhook", Simulator.webhook)],
    "push": [("/push", Simulator.push)],
    # Google's token endpoint stands with FCM: an FCM key file's token_uri points at it
    "fcm": [("/token", simulator_push.google_token),
            ("/v1/projects/{project}/messages:send", simulator_push.fcm_send)],
    "apns": [("/3/device/{token}", simulator_push.apns_send)],
}


def build_simulator_app(latency_ms: float = 0, error_rate: float = 0, rate_429: float = 0,
                        seed: int | None = None, *, postmark_webhook_url: str | None = None,
                        postmark_webhook_headers: Mapping[str, str] | None = None,
                        callback_delay_ms: float = 0) -> web.Application:
    """The simulator's application; ValueError for a Postmark webhook URL or header it cannot use."""
    hook = PostmarkHook.parse(postmark_webhook_url, postmark_webhook_headers) if postmark_webhook_url else None
    sim = Simulator(latency_ms, error_rate, rate_429, seed, hook, callback_delay_ms)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    for routes in PROVIDER_ROUTES.values():
        for path, handler in routes:
            app.router.add_post(path, functools.partial(handler, sim))
    app.router.add_get("/stats", sim.stats)
    app.router.add_get("/messages", sim.messages)
    app.router.add_post("/stats/reset", sim.reset)
    app.router.add_get("/callbacks", sim.list_callbacks)
    app.router.add_post("/simulate/outcome", sim.set_outcome)
    app.router.add_post("/simulate/twilio/inbound", sim.twilio_inbound)
    app.router.add_post("/simulate/postmark/webhook", sim.configure_postmark_webhook)
    app[SIMULATOR] = sim

    async def close_callbacks(app: web.Application) -> None:
        await sim.callbacks.close()

    app.on_cleanup.append(close_callbacks)
    return app


def parse_headers(values: Iterable[str]) -> dict[str, str]:
    """``NAME:VALUE`` strings (the command's --postmark-webhook-header) as a dict; ValueError."""
    headers = {}
    for value in values:
        name, colon, text = value.partition(":")
        if not colon or not name.strip():
            raise ValueError("a header is not NAME:VALUE")  # not echoed: it may be a secret
        headers[name.strip()] = text.strip()
    return headers


def run_simulator(host: str, port: int, latency_ms: float = 0, error_rate: float = 0, rate_429: float = 0, *,
                  postmark_webhook_url: str | None = None, postmark_webhook_headers: Sequence[str] = (),
                  callback_delay_ms: float = 0) -> int:
    """Serve until SIGTERM or SIGINT; exit 0 (2 for a webhook option it cannot use)."""
    try:
        app = build_simulator_app(latency_ms, error_rate, rate_429, postmark_webhook_url=postmark_webhook_url,
                                  postmark_webhook_headers=parse_headers(postmark_webhook_headers),
                                  callback_delay_ms=callback_delay_ms)
    except ValueError as exc:  # the message names the part, never a header's value
        print(f"retentiond: error: --postmark-webhook-url/--postmark-webhook-header: {exc}", file=sys.stderr)
        return 2  # RET_CONFIG

    async def serve() -> None:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        logger.info("provider simulator on http://%s:%d (latency %g ms, 503s %g, 429s %g)",
                    host, port, latency_ms, error_rate, rate_429)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
        logger.info("provider simulator stopped: %s", json.dumps(runner.app[SIMULATOR].deliveries.as_dict()))

    asyncio.run(serve())
    return 0  # RET_OK
