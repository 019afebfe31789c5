"""The routes the world reaches — exactly the paths ``ops/nginx/retentiond.conf`` passes on:
liveness and readiness for the load balancer, the senders' webhooks, the readers' tracked links
and unsubscribe."""

from __future__ import annotations

from aiohttp import web

from daemon.web import health, links, webhooks
from daemon.web.keys import SETTINGS

routes = web.RouteTableDef()  # liveness and readiness: on both listeners


@routes.get("/health")
async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    probes = await health.readiness(request.app[SETTINGS])
    ok = all(p.ok for p in probes.values())
    body = {"status": "ready" if ok else "unavailable", **{k: p.as_dict() for k, p in probes.items()}}
    return web.json_response(body, status=200 if ok else 503)


HEALTH_ROUTES: tuple[web.AbstractRouteDef, ...] = tuple(routes)
ROUTES: tuple[web.AbstractRouteDef, ...] = (*HEALTH_ROUTES, *links.routes, *webhooks.routes)


def add_routes(app: web.Application) -> None:
    """The public routes on ``app`` (which holds the keys of ``daemon/web/keys.py``)."""
    app.router.add_routes(ROUTES)
