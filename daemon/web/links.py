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
from collections.abc import Callable
from typing import Any, TypeVar

import peewee
from aiohttp import web
from playhouse.pool import MaxConnectionsExceeded

from daemon.web.group_commit import IncomingEvent, Overloaded, StillWriting
from daemon.web.webhooks import COMMITTER, SETTINGS
from db.database import db_session, transaction_waiting_at_most
from db.models import TrackedLink, UnsubscribeToken
from engine import contacts
from engine.templates import TOKEN_BYTES
from ground.metrics import WEBHOOK_EVENTS
from ground.outage_log import OutageLog
from ground.settings import Settings

logger = logging.getLogger(__name__)
routes = web.RouteTableDef()
CLICK_SOURCE = "tracked-link"  # the inbound_event source of clicks on /t/<token>
T = TypeVar("T")
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


class ReaderWrites:
    """The database writes of reader routes outside the group commit (one-click unsubscribe),
    bounded so that a locked table cannot take the pool, the threads or the reader's time:

    * at most ``slots`` run at once — on PostgreSQL what the pool has left beside the group
      commit's connections and one for link lookups and health (at least 1); on SQLite 1 (one
      writer) — and the others wait for a slot on the event loop, holding nothing;
    * a reader waits at most ``max_wait_s`` in all: for a slot, then for the write, which gives up
      on a lock within what is left (SQLite ``busy_timeout``, PostgreSQL ``lock_timeout`` and
      ``statement_timeout``);
    * past that, or when the database refuses, ``Overloaded`` (503 + ``Retry-After``): a write
      still under way may complete after that answer — an unsubscribe is idempotent, so the
      reader's retry is harmless either way.
    """

    GRACE_S = 1.0  # beyond the budget, for a write that is ending on its own lock timeout
    MIN_LOCK_WAIT_MS = 50

    def __init__(self, settings: Settings, group_commit: int) -> None:
        """``group_commit``: the connections the group commit may hold at once."""
        postgres = settings.database_url.startswith("postgres")
        slots = max(1, settings.db_pool_size - group_commit - 1) if postgres else 1
        self.slots = slots
        self.max_wait_s = settings.ingest_max_wait_s
        self.retry_after_s = max(1, math.ceil(settings.ingest_max_wait_s))
        self._slots = asyncio.Semaphore(slots)

    async def run(self, fn: Callable[[str, int], T], arg: str) -> T:
        """``fn(arg, lock_timeout_ms)`` in a thread, within the bounds above."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise Overloaded("too many writes waiting for the database", self.retry_after_s) from None
        lock_wait_ms = max(self.MIN_LOCK_WAIT_MS, int((deadline - loop.time()) * 1000))
        work = asyncio.ensure_future(asyncio.to_thread(fn, arg, lock_wait_ms))
        # The slot is the thread's: it is freed when the write ends, even after the reader got his answer.
        work.add_done_callback(self._settled)
        try:
            async with asyncio.timeout_at(deadline + self.GRACE_S):
                return await asyncio.shield(work)
        except TimeoutError:
            raise Overloaded("waited too long for the database", self.retry_after_s) from None
        except (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded) as exc:
            # a lock or statement timeout, a database away, a pool exhausted: try again shortly
            raise Overloaded(f"the database could not take it: {type(exc).__name__}", self.retry_after_s) from exc

    def _settled(self, work: asyncio.Future[Any]) -> None:
        self._slots.release()
        if not work.cancelled():
            work.exception()  # seen here: a late failure after a 503 is not "never retrieved"


WRITES = web.AppKey("reader_writes", ReaderWrites)


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
    writes = request.app[WRITES]
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
    click = IncomingEvent(CLICK_SOURCE, secrets.token_hex(16), "click",
                          json.dumps({"events": [{"type": "click", "data": {"token": token}}]}))
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
