"""The admin API under ``/api/v1``: bearer ``RETENTIOND_ADMIN_TOKEN``; without a token configured
it refuses every request. Described by the OpenAPI document at ``/api/v1/openapi.json``."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from daemon.web.keys import SETTINGS
from db.database import db_session
from engine.contacts import InvalidContact, find_contact
from engine.history import contact_history
from engine.stats import overview

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "retentiond admin API", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/stats": {"get": {
            "summary": "Sends by channel and status, enrolments and inbound events by status",
            "responses": {"200": {"description": "counts"}, "401": {"description": "missing or bad token"}}}},
        "/api/v1/contacts/history": {"get": {
            "summary": "A contact's sends and the decision log: why it did or did not get each message",
            "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                           for n in ("external_id", "email", "phone")],
            "responses": {"200": {"description": "history"}, "400": {"description": "no contact key"},
                          "401": {"description": "missing or bad token"}, "404": {"description": "no such contact"}}}},
    },
}


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/v1/") and request.path != "/api/v1/openapi.json":
        expected = request.app[SETTINGS].admin_token
        # surrogateescape: undecodable header bytes come as lone surrogates; compared as the bytes
        # they were (never equal to the token), not a UnicodeEncodeError and a 500
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not expected or not hmac.compare_digest(given, f"Bearer {expected}".encode()):
            raise web.HTTPUnauthorized(text='{"error": "missing or bad bearer token"}', content_type="application/json",
                                       headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def _stats() -> dict[str, Any]:
    with db_session():
        return overview()


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(_stats))


def _history(key: dict[str, str], default_region: str) -> dict[str, Any] | None:
    with db_session():
        contact = find_contact(key, default_region)
        return contact_history(contact) if contact is not None else None


@routes.get("/api/v1/contacts/history")
async def history(request: web.Request) -> web.Response:
    key = {k: v for k, v in request.query.items() if k in ("external_id", "email", "phone") and v}
    if not key:
        raise web.HTTPBadRequest(text='{"error": "give external_id, email or phone"}', content_type="application/json")
    # No contact key holds a NUL (PostgreSQL cannot store one, and refuses it in a query with an error)
    if bad := sorted(k for k, v in key.items() if "\x00" in v):
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{bad[0]}: contains a NUL character"}),
                                 content_type="application/json")
    try:
        found = await asyncio.to_thread(_history, key, request.app[SETTINGS].default_region)
    except InvalidContact as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}), content_type="application/json") from None
    if found is None:
        raise web.HTTPNotFound(text='{"error": "no such contact"}', content_type="application/json")
    return web.json_response(found)
