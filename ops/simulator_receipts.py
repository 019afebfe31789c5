"""The provider simulator's receipts: what Twilio and Postmark send back after they accept a
message — status callbacks signed the way Twilio signs them, Postmark's delivery, bounce and
complaint webhooks — and the pieces they are made of (which statuses a recipient's outcome goes
through, the bodies, the posting in order). ops/simulator.py serves the APIs and calls these;
the module docstring there says what each endpoint does.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from multidict import MultiDictProxy
from twilio.request_validator import RequestValidator
from yarl import URL

CALLBACKS_KEPT = 10_000  # GET /callbacks keeps the last ones
CALLBACK_TIMEOUT_S = 10
TWILIO_API_VERSION = "2010-04-01"
# A recipient's fate (POST /simulate/outcome); each channel reads the ones that make sense for it.
OUTCOMES = frozenset({"delivered", "undelivered", "failed", "bounce", "spam_complaint", "busy", "no-answer",
                      "machine"})
# Postmark's test domain: these recipients bounce or complain without configuration.
POSTMARK_TEST_DOMAIN = "bounce-testing.postmarkapp.com"
POSTMARK_TEST_OUTCOMES = {"hardbounce": "bounce", "spamcomplaint": "spam_complaint"}
POSTMARK_SERVER_ID = 1
POSTMARK_DEFAULT_STREAM = "outbound"


@dataclasses.dataclass(frozen=True)
class Post:
    """One callback to send: ``headers`` may carry a secret (Basic auth, a token), so only ``kind``,
    ``url`` and the payload are ever shown."""

    kind: str
    url: str  # without userinfo: that went into an Authorization header
    headers: Mapping[str, str]
    form: Mapping[str, str] | None = None
    body: Mapping[str, Any] | None = None


class Callbacks:
    """Sends the receipts, one background task per message so its callbacks go one after another,
    and keeps every attempt (the last CALLBACKS_KEPT) for GET /callbacks."""

    def __init__(self, delay_s: float = 0) -> None:
        self.delay_s = delay_s
        self.session: ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.attempts: collections.deque[dict[str, Any]] = collections.deque(maxlen=CALLBACKS_KEPT)
        self.sent = 0
        self.failed = 0

    def reset(self) -> None:
        """Forget the attempts and cancel what is still on its way (it belongs to the run before)."""
        for task in self.tasks:
            task.cancel()
        self.attempts.clear()
        self.sent = self.failed = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed}

    def send_later(self, posts: Sequence[Post]) -> None:
        if posts:
            task = asyncio.get_running_loop().create_task(self._in_order(posts))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _in_order(self, posts: Sequence[Post]) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        for post in posts:
            await self.send(post)

    async def send(self, post: Post) -> int | str:
        """Post one callback; its HTTP status, or the error as text (recorded, never raised)."""
        if self.session is None:
            self.session = ClientSession(timeout=ClientTimeout(total=CALLBACK_TIMEOUT_S))
        status: int | str
        try:
            async with self.session.post(post.url, headers=dict(post.headers), data=post.form,
                                         json=post.body) as response:
                await response.read()
                status = response.status
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the receiver does, the simulator carries on
            status = f"{type(exc).__name__}: {exc}"[:300]
        if isinstance(status, int) and 200 <= status < 300:
            self.sent += 1
        else:
            self.failed += 1
        payload = {"fields": dict(post.form)} if post.form is not None else {"body": post.body}
        self.attempts.append({"kind": post.kind, "url": post.url, "status": status, **payload})
        return status

    async def close(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
            self.session = None


def split_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``user:password@`` and the Basic Authorization header those make (the
    way Twilio and Postmark take credentials in a webhook URL); ValueError for a URL that is not
    absolute http(s)."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("expected an absolute http(s) URL")  # not echoed: it may hold a password
    if parsed.user is None and parsed.password is None:
        return url, {}
    credentials = f"{parsed.user or ''}:{parsed.password or ''}".encode()
    return str(parsed.with_user(None)), {"Authorization": "Basic " + base64.b64encode(credentials).decode()}


def is_http_url(url: str) -> bool:
    try:
        split_userinfo(url)
    except ValueError:
        return False
    return True


def basic_password(authorization: str) -> tuple[str, str] | None:
    """(user, password) of a Basic Authorization header, None when there is none to read."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


def recipient_key(address: str) -> str:
    """Outcomes are looked up by address: an email's case does not matter, a phone's is none."""
    address = address.strip()
    return address.lower() if "@" in address else address


def twilio_post(kind: str, url: str, fields: Mapping[str, str], auth_token: str) -> Post:
    """A Twilio webhook: form fields signed as Twilio signs them (HMAC-SHA1 of the URL it posts to
    and the sorted fields, with the account's auth token), and the idempotency token it adds."""
    url, headers = split_userinfo(url)
    headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(url, dict(fields))
    headers["I-Twilio-Idempotency-Token"] = str(uuid.uuid4())
    return Post(kind, url, headers, form=dict(fields))


def message_statuses(outcome: str | None) -> list[tuple[str, str | None]]:
    """(MessageStatus, ErrorCode) in the order Twilio reports them for a recipient's outcome."""
    if outcome == "undelivered":
        return [("sent", None), ("undelivered", "30003")]  # 30003: unreachable destination handset
    if outcome == "failed":
        return [("failed", "30008")]  # failed: never left Twilio (30008: unknown error)
    return [("sent", None), ("delivered", None)]


CALL_PROGRESS = {  # the statuses a call goes through, by outcome; the last one is its end
    "busy": ["initiated", "ringing", "busy"],
    "no-answer": ["initiated", "ringing", "no-answer"],
    "failed": ["initiated", "failed"],
}
ANSWERED_STATUSES = frozenset({"in-progress", "completed"})
# StatusCallbackEvent names -> the CallStatus they report ("completed" stands for any end).
CALL_EVENTS = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress"}


def call_statuses(outcome: str | None, events: Iterable[str]) -> list[str]:
    """The CallStatus values Twilio posts: those the call asked for with StatusCallbackEvent
    (initiated, ringing, answered, completed), or only the final one when it asked for none."""
    progress = CALL_PROGRESS.get(outcome or "", ["initiated", "ringing", "in-progress", "completed"])
    asked = {word for value in events for word in value.replace(",", " ").split()}
    if not asked:
        return progress[-1:]
    wanted = {CALL_EVENTS[name] for name in asked if name in CALL_EVENTS}
    return [status for i, status in enumerate(progress)
            if status in wanted or (i == len(progress) - 1 and "completed" in asked)]


def answered_by(outcome: str | None, machine_detection: str | None) -> str | None:
    """AnsweredBy, when the call asked for answering machine detection."""
    if machine_detection not in ("Enable", "DetectMessageEnd"):
        return None
    if outcome != "machine":
        return "human"
    return "machine_end_beep" if machine_detection == "DetectMessageEnd" else "machine_start"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class PostmarkHook:
    """The server's webhook, as configured in Postmark: a URL and custom headers (the URL's userinfo
    already turned into Basic auth)."""

    url: str
    headers: Mapping[str, str]

    @classmethod
    def parse(cls, url: Any, headers: Any) -> PostmarkHook:
        if not isinstance(url, str):
            raise ValueError("url: expected text")
        bare, auth = split_userinfo(url)
        if headers is None:
            headers = {}
        if not isinstance(headers, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in headers.items()):
            raise ValueError("headers: expected an object of text values")
        for name, value in headers.items():
            if not name.strip() or any(c in name + value for c in "\r\n") or ":" in name:
                raise ValueError(f"headers: {name!r} is not a header name and value")
        return cls(bare, {**{k.strip(): v.strip() for k, v in headers.items()}, **auth})

    def describe(self) -> dict[str, Any]:
        """What it is, without the secrets: the URL and the names of the headers sent."""
        return {"url": self.url, "headers": sorted(self.headers)}

    def post(self, kind: str, body: Mapping[str, Any]) -> Post:
        return Post(kind, self.url, {**self.headers, "Content-Type": "application/json"}, body=body)


def postmark_records(message: Mapping[str, Any], message_id: str, recipient: str,
                     outcome: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The webhooks Postmark posts for one recipient of an accepted message: (kind, body)."""
    common = {"MessageID": message_id, "ServerID": POSTMARK_SERVER_ID, "Tag": message.get("Tag") or "",
              "MessageStream": message.get("MessageStream") or POSTMARK_DEFAULT_STREAM,
              "Metadata": message.get("Metadata") or {}}
    delivery = ("postmark.delivery", {"RecordType": "Delivery", "Recipient": recipient, "DeliveredAt": now_iso(),
                                      "Details": "smtp;250 2.0.0 OK", **common})
    if outcome not in ("bounce", "spam_complaint"):
        return [delivery]
    bounce = outcome == "bounce"
    record = {"RecordType": "Bounce" if bounce else "SpamComplaint",
              "ID": uuid.uuid4().int >> 66,  # Postmark's bounce ids are integers
              "Type": "HardBounce" if bounce else "SpamComplaint", "TypeCode": 1 if bounce else 512,
              "Name": "Hard bounce" if bounce else "Spam complaint",
              "Description": ("The server was unable to deliver your message (ex: unknown user, mailbox not found)."
                              if bounce else "The subscriber explicitly marked this message as spam."),
              "Details": ("smtp;550 5.1.1 The email account that you tried to reach does not exist." if bounce
                          else "Spam complaint received from the recipient's mailbox provider (simulated)."),
              "Email": recipient, "From": message.get("From") or "", "Subject": message.get("Subject") or "",
              "BouncedAt": now_iso(), "DumpAvailable": False, "Inactive": True,
              "CanActivate": bounce,  # a spam complaint cannot be reactivated
              **common}
    if bounce:
        return [("postmark.bounce", record)]
    return [delivery, ("postmark.spam_complaint", record)]  # a complaint comes about a delivered message


def form_text(form: MultiDictProxy[Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object, or the 400 to answer."""
    try:
        document = await request.json()
    except ValueError:
        return web.json_response({"error": "expected a JSON object"}, status=400)
    if not isinstance(document, dict):
        return web.json_response({"error": "expected a JSON object"}, status=400)
    return document
