"""Routes a message's reader hits: tracked links (``/t/<token>``) and unsubscribe (``/u/<token>``).

``GET /u/<token>`` shows a confirmation page with one button; ``POST /u/<token>`` unsubscribes
(RFC 8058 one-click from a mail client, or that button). A GET never unsubscribes: mail scanners
fetch links before people do.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import re
import secrets

import peewee
from aiohttp import web

from daemon.web.group_commit import IncomingEvent, Overloaded, StillWriting
from daemon.web.keys import COMMITTER, READER_WRITES, SETTINGS
from db.database import db_session, transaction_waiting_at_most
from db.models import TrackedLink, UnsubscribeToken
from engine import contacts
from engine.templates import TOKEN_BYTES
from ground.metrics import WEBHOOK_EVENTS
from ground.outage_log import OutageLog
from ground.vocabulary import EventType

logger = logging.getLogger(__name__)
routes = web.RouteTableDef()
CLICK_SOURCE = "tracked-link"  # the inbound_event source of clicks on /t/<token>
# Every token is ``secrets.token_urlsafe(TOKEN_BYTES)`` (links and unsubscribe alike): unpadded
# base64url of a fixed length. Anything else is unknown without asking the database — a NUL
# (which PostgreSQL refuses with an error) or a megabyte of path never reaches a query.
_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{{math.ceil(TOKEN_BYTES * 4 / 3)}}}")


def _token(request: web.Request, unknown: str) -> str:
    """The path's token, or 404 when it cannot be one."""
    token = request.match_info["token"]
    if not _TOKEN.fullmatch(token):
        raise web.HTTPNotFound(text=unknown)
    return token


def _unsubscribe(token: str, lock_timeout_ms: int) -> str | None:
    """Unsubscribe the token's contact from its channel as a ``contact.unsubscribe`` event does
    (``engine.contacts.unsubscribe``: suppression and campaign exits, one transaction); return the
    channel, or None for an unknown token. Waits at most ``lock_timeout_ms`` for a lock (else a
    ``peewee.OperationalError``)."""
    with db_session(), transaction_waiting_at_most(lock_timeout_ms):
        row = UnsubscribeToken.get_or_none(UnsubscribeToken.token == token)
        if row is None:
            return None
        for note in contacts.unsubscribe([row.contact_id], row.channel):
            # no event row to keep it on: a campaign triggered by unsubscribes that cannot take anyone
            logger.warning("link unsubscribe: %s", note)
        return str(row.channel)


def _known_unsubscribe(token: str) -> bool:
    with db_session():
        return UnsubscribeToken.select().where(UnsubscribeToken.token == token).exists()


@routes.get("/u/{token}")
async def unsubscribe_page(request: web.Request) -> web.Response:
    token = _token(request, "unknown or expired link")
    if not await asyncio.to_thread(_known_unsubscribe, token):
        raise web.HTTPNotFound(text="unknown or expired link")
    action = html.escape(request.path, quote=True)
    return web.Response(content_type="text/html", text=(
        "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
        "<p>Stop receiving these messages?</p>"
        f"<form method=post action=\"{action}\"><button type=submit>Unsubscribe</button></form>"))


@routes.post("/u/{token}")
async def unsubscribe(request: web.Request) -> web.Response:
    """Unsubscribe at once (the suppression is written before the answer), or 503 with
    ``Retry-After`` within about ``INGEST_MAX_WAIT_S`` when the database cannot take it
    (``ReaderWrites``): never a 500, never a request left hanging on a lock."""
    token = _token(request, "unknown or expired link")
    writes = request.app[READER_WRITES]
    try:
        channel = await writes.run(_unsubscribe, token)
    except Overloaded as exc:
        _unsubscribes.failed(exc.__cause__ or exc, expected=True)
        raise web.HTTPServiceUnavailable(text="could not unsubscribe right now; try again shortly",
                                         headers={"Retry-After": str(exc.retry_after_s)}) from None
    _unsubscribes.succeeded()
    if channel is None:
        raise web.HTTPNotFound(text="unknown or expired link")
    return web.Response(content_type="text/html",
                        text="<!doctype html><meta charset=utf-8><title>Unsubscribed</title>"
                             "<p>You are unsubscribed.</p>")


def _link_url(token: str) -> str | None:
    with db_session():
        url = TrackedLink.select(TrackedLink.url).where(TrackedLink.token == token).scalar()
        return str(url) if url is not None else None


@routes.get("/t/{token}")
async def tracked_link(request: web.Request) -> web.Response:
    """Record the click durably (group commit, like a webhook), then redirect to the URL recorded
    for the token — never one taken from the request.

    Degraded mode: the reader is never kept waiting on the click record longer than
    ``CLICK_MAX_WAIT_S``; then the reader is redirected all the same, and the click:

    * is dropped — never written later — when its group commit had not started (queue full, the
      committer busy with a locked or absent database);
    * is left to its batch when that commit had started: the batch may still write it (within
      ``INGEST_MAX_WAIT_S``, its lock timeout), and a click written late is a click recorded.

    ``retentiond_webhook_events_total{source="tracked-link",outcome="dropped"}`` counts the clicks
    that were really not written, once that is known. Only when the link itself cannot be looked up
    (database unreachable) is the answer 503 with ``Retry-After``.
    """
    token = _token(request, "unknown link")
    committer = request.app[COMMITTER]
    try:
        url = await asyncio.to_thread(_link_url, token)
    except peewee.PeeweeException as exc:
        _lookups.failed(exc)
        raise web.HTTPServiceUnavailable(text="try again shortly",
                                         headers={"Retry-After": str(committer.retry_after_s)}) from None
    _lookups.succeeded()
    if url is None:
        raise web.HTTPNotFound(text="unknown link")
    click = IncomingEvent(CLICK_SOURCE, secrets.token_hex(16), EventType.CLICK,
                          json.dumps({"events": [{"type": EventType.CLICK, "data": {"token": token}}]}))
    settings = request.app[SETTINGS]
    try:
        await committer.submit_within(click, settings.click_max_wait_s)
    except StillWriting as writing:
        writing.outcome.add_done_callback(_click_settled)  # counted when its batch settles
    except Exception as exc:
        _click_dropped(exc)
    else:
        _drops.succeeded()
    raise web.HTTPFound(url)


def _click_dropped(exc: BaseException) -> None:
    # Overloaded: never written. A failed commit: written by nothing either (rolled back), and
    # logged by the group commit itself (with its traceback if it is a bug): not twice.
    WEBHOOK_EVENTS.labels(CLICK_SOURCE, "dropped").inc()
    _drops.failed(exc, expected=True)


def _click_settled(outcome: asyncio.Future[bool]) -> None:
    """The late outcome of a click whose reader was already redirected."""
    if outcome.cancelled():  # the committer stopped before answering: nothing was written
        _click_dropped(asyncio.CancelledError())
    elif (exc := outcome.exception()) is not None:
        _click_dropped(exc)
    else:
        _drops.succeeded()


# A database outage under heavy traffic must not turn into a log line per reader: one line when
# lookups or click records start failing, a summary a minute, one line when they work again.
_lookups = OutageLog(logger, "tracked-link lookups (readers answered 503)")
_drops = OutageLog(logger, "click records (readers redirected, clicks not recorded)")
_unsubscribes = OutageLog(logger, "one-click unsubscribes (readers answered 503)")
