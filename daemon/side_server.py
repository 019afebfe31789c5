"""The aiohttp side server: health, metrics, tracked links and unsubscribe, the admin API."""

from __future__ import annotations

from aiohttp import web

from daemon import health, metrics, routes_admin, routes_links
from daemon.config import Settings

SETTINGS_KEY = web.AppKey("settings", Settings)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    probes = await health.readiness(request.app[SETTINGS_KEY])
    ok = all(p.ok for p in probes.values())
    body = {"status": "ready" if ok else "unavailable", **{k: p.as_dict() for k, p in probes.items()}}
    return web.json_response(body, status=200 if ok else 503)


async def prometheus(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def build_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=256 * 1024, middlewares=[routes_admin.require_token])
    app[SETTINGS_KEY] = settings
    app[routes_admin.SETTINGS] = settings
    app.router.add_get("/health", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", prometheus)
    app.router.add_routes(routes_links.routes)
    app.router.add_routes(routes_admin.routes)
    return app
