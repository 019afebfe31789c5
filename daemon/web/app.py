"""The aiohttp side server: two applications on two listeners, one per audience. The public one
(``HTTP_HOST``/``HTTP_PORT``: the routes of ``public.py``, the group commit) is what the reverse
proxy exposes; the operators' one (``ADMIN_HOST``/``ADMIN_PORT``: the routes of ``operators.py``)
never is. Also the runner both are served with, and the body deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from daemon.web import api, operators, public
from daemon.web.group_commit import GroupCommitter
from daemon.web.health_details import CachedDetails
from daemon.web.keys import COMMITTER, HEALTH_DETAILS, READER_WRITES, SETTINGS
from daemon.web.reader_writes import ReaderWrites
from ground.settings import Settings

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_public_app(settings: Settings, wake: Callable[[int], None] | None = None) -> web.Application:
    """The public listener's application. ``wake`` is called after each group commit with the
    number of new events (the daemon passes one that enqueues the event processor's message)."""
    app = web.Application(client_max_size=settings.webhook_max_bytes,
                          middlewares=[body_deadline(settings.http_body_timeout_s)])
    app[SETTINGS] = settings

    async def committer(app: web.Application) -> AsyncIterator[None]:
        # PostgreSQL takes several commits at once; leave one pooled connection for everything else
        concurrency = min(4, settings.db_pool_size - 1) if settings.database_url.startswith("postgres") else 1
        app[COMMITTER] = GroupCommitter(on_commit=wake, concurrency=max(1, concurrency),
                                        max_queued=settings.ingest_queue_max, max_wait_s=settings.ingest_max_wait_s)
        app[COMMITTER].start()
        app[READER_WRITES] = ReaderWrites(settings, group_commit=max(1, concurrency))
        yield
        await app[COMMITTER].stop()

    app.cleanup_ctx.append(committer)
    public.add_routes(app)
    return app


# A campaign file or a contact upsert, not a bulk import (the CLI's `contacts import` does those)
ADMIN_MAX_BODY_BYTES = 1024 * 1024


def build_admin_app(settings: Settings) -> web.Application:
    """The operators' listener's application: the admin API, metrics, detailed health."""
    problems, require_token = api.MIDDLEWARES
    app = web.Application(client_max_size=ADMIN_MAX_BODY_BYTES,
                          middlewares=[problems, body_deadline(settings.http_body_timeout_s), require_token])
    app[SETTINGS] = settings
    app[HEALTH_DETAILS] = CachedDetails(settings)
    operators.add_routes(app)
    return app


# Request line and each header line at most 8 KiB (aiohttp's default, stated here on purpose: the
# longest legitimate line is a token postback's query string or a signature header, far below).
MAX_LINE_BYTES = 8190


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner the daemon serves ``app`` with. The host process owns the signals.

    Slow or idle clients cannot hold connections: ``keepalive_timeout`` closes a connection idle
    between requests, and (aiohttp >= 3.14.4) one that has not finished sending its request's
    headers, after ``HTTP_IDLE_TIMEOUT_S``; a body has ``HTTP_BODY_TIMEOUT_S`` (``body_deadline``).
    The reverse proxy in ``ops/nginx/`` enforces the same in front (and TLS, and the public paths).
    """
    return web.AppRunner(app, handle_signals=False, access_log=None,
                         keepalive_timeout=settings.http_idle_timeout_s,
                         max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES,
                         # after an early answer (408, 413), read the rest of a body this long at most
                         lingering_time=2.0)


class BodyTimeout(TimeoutError):
    """The request body did not arrive within ``HTTP_BODY_TIMEOUT_S``."""


def body_deadline(timeout_s: float) -> Middleware:
    """Middleware: a request body must be complete within ``timeout_s`` of the handler starting,
    else 408 and the connection closes. The handler's own reads fail at the deadline (the payload
    stream gets ``BodyTimeout``), so no handler needs its own timer, and a body that had arrived
    in time does not put a deadline on what the handler does next (its commit)."""

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if not request.body_exists:
            return await handler(request)
        content = request.content

        def expire() -> None:
            if not content.is_eof():
                content.set_exception(BodyTimeout())

        timer = asyncio.get_running_loop().call_later(timeout_s, expire)
        try:
            return await handler(request)
        except BodyTimeout:
            response = web.Response(status=408, text="request body not received in time\n")
            response.force_close()
            return response
        finally:
            timer.cancel()

    return middleware
