"""The admin API under ``/api/v1``, on the operators' listener: typed resources (pydantic models,
``endpoint.py``), RFC 9457 problems for every error (``problems.py``), keyset cursors on every list
(``types.py``), the bearer token (``auth.py``), and the OpenAPI 3.1 document generated from the
handlers' types at ``/api/v1/openapi.json``. One module per resource."""

from __future__ import annotations

from aiohttp import web

from daemon.web.api import (  # noqa: F401  (they register endpoints)
    analytics,
    campaigns,
    contacts,
    destinations,
    events,
    previews,
    sends,
    stats,
)
from daemon.web.api.auth import token_middleware
from daemon.web.api.problems import problem_middleware
from daemon.web.api.registry import API

ROUTES: tuple[web.RouteDef, ...] = tuple(API.routes())
MIDDLEWARES = (problem_middleware, token_middleware(API.public_paths()))
