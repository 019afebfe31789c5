"""The admin API's bearer token (``RETENTIOND_ADMIN_TOKEN``): without one configured, every
request is refused; the OpenAPI document is readable without it (it holds no data)."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from daemon.web.api.problems import API_PREFIX, Handler, Problem
from daemon.web.keys import SETTINGS


def token_middleware(public_paths: frozenset[str]) -> Middleware:
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX + "/") and request.path not in public_paths:
            expected = request.app[SETTINGS].admin_token
            # surrogateescape: undecodable header bytes come as lone surrogates; compared as the
            # bytes they were (never equal to the token), not a UnicodeEncodeError and a 500
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not expected or not hmac.compare_digest(given, f"Bearer {expected}".encode()):
                raise Problem(401, "missing or bad bearer token" if expected else
                              "the admin API is off: no RETENTIOND_ADMIN_TOKEN is configured",
                              headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)
    return require_token
