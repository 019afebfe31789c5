"""The operators' routes, never public (the reverse proxy does not pass them): the admin API
(bearer token, ``admin.require_token``), ``/metrics`` for Prometheus and ``/health/details``.
Served on the one listener beside the public routes for now; kept apart so that they can get a
listener of their own."""

from __future__ import annotations

import asyncio

from aiohttp import web

from daemon.web import admin, health_details
from daemon.web.keys import SETTINGS
from db.database import pool_in_use
from ground import metrics

routes = web.RouteTableDef()


@routes.get("/health/details")
async def ready_details(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(health_details.details, request.app[SETTINGS]))


@routes.get("/metrics")
async def prometheus(request: web.Request) -> web.Response:
    body, content_type = metrics.render(pool_in_use())
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


ROUTES: tuple[web.AbstractRouteDef, ...] = (*routes, *admin.routes)


def add_routes(app: web.Application) -> None:
    """The operators' routes on ``app``, whose middlewares must include ``admin.require_token``."""
    app.router.add_routes(ROUTES)
