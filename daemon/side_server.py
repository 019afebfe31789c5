"""The aiohttp side server: health, metrics, webhooks, tracked links and unsubscribe, the admin API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from daemon import health, health_details, metrics, routes_admin, routes_links, routes_webhooks
from daemon.config import Settings
from daemon.ingest import GroupCommitter

SETTINGS_KEY = web.AppKey("settings", Settings)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    probes = await health.readiness(request.app[SETTINGS_KEY])
    ok = all(p.ok for p in probes.values())
    body = {"status": "ready" if ok else "unavailable", **{k: p.as_dict() for k, p in probes.items()}}
    return web.json_response(body, status=200 if ok else 503)


async def ready_details(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(health_details.details, request.app[SETTINGS_KEY]))


async def prometheus(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def build_app(settings: Settings, wake: Callable[[int], None] | None = None) -> web.Application:
    """The side server. ``wake`` is called after each group commit with the number of new events
    (the daemon passes one that enqueues the event processor's message)."""
    app = web.Application(client_max_size=settings.webhook_max_bytes, middlewares=[routes_admin.require_token])
    app[SETTINGS_KEY] = settings
    app[routes_admin.SETTINGS] = settings
    app[routes_webhooks.SETTINGS] = settings

    async def committer(app: web.Application) -> AsyncIterator[None]:
        # PostgreSQL takes several commits at once; leave one pooled connection for everything else
        concurrency = min(4, settings.db_pool_size - 1) if settings.database_url.startswith("postgres") else 1
        app[routes_webhooks.COMMITTER] = GroupCommitter(on_commit=wake, concurrency=max(1, concurrency),
                                                        max_queued=settings.ingest_queue_max,
                                                        max_wait_s=settings.ingest_max_wait_s)
        app[routes_webhooks.COMMITTER].start()
        yield
        await app[routes_webhooks.COMMITTER].stop()

    app.cleanup_ctx.append(committer)
    app.router.add_get("/health", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health/details", ready_details)
    app.router.add_get("/metrics", prometheus)
    app.router.add_routes(routes_links.routes)
    app.router.add_routes(routes_admin.routes)
    app.router.add_routes(routes_webhooks.routes)
    return app
