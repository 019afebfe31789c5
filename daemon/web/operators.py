"""The operators' routes, on their own listener (``ADMIN_HOST``/``ADMIN_PORT``), never public:
the admin API (``api/``: bearer token, problem+json), ``/metrics`` for Prometheus,
``/health/details``, the console (``console/``: ``/``, ``/campaigns/...``, ``/contacts``, ``/login``),
and liveness and readiness as on the public listener."""

from __future__ import annotations

from aiohttp import web

from daemon.web import api, console, public
from daemon.web.keys import HEALTH_DETAILS
from db.database import pool_in_use
from ground import metrics

routes = web.RouteTableDef()


@routes.get("/health/details")
async def ready_details(request: web.Request) -> web.Response:
    return web.json_response(await request.app[HEALTH_DETAILS].get())


@routes.get("/metrics")
async def prometheus(request: web.Request) -> web.Response:
    body, content_type = metrics.render(pool_in_use())
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


OPERATORS_ONLY: tuple[web.AbstractRouteDef, ...] = (*routes, *api.ROUTES, *console.routes)
ROUTES: tuple[web.AbstractRouteDef, ...] = (*public.HEALTH_ROUTES, *OPERATORS_ONLY)


def add_routes(app: web.Application) -> None:
    """The operators' routes on ``app``, whose middlewares must include ``api.MIDDLEWARES``."""
    app.router.add_routes(ROUTES)
