"""The console: a few server-rendered, read-only pages at the operators' listener's ``/``
(Jinja2, plain HTML and CSS, no JavaScript): campaigns with their step funnels drawn as bars, the
channels' queues and rates, the health components, recent failures, and one contact's decision
log. Signed in with the admin token (``session.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
import peewee
from aiohttp import web

from daemon.web.console import session, views
from daemon.web.keys import HEALTH_DETAILS, SETTINGS

_HERE = Path(__file__).parent
_TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                                undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_TEMPLATES.filters["percent"] = lambda v: "-" if v is None else f"{v:.1%}"
_TEMPLATES.filters["utc"] = lambda t: "-" if t is None else f"{t:%Y-%m-%d %H:%M:%S} UTC"
CSS = (_HERE / "console.css").read_text()

# No script at all, styles from our stylesheet only, forms only to ourselves, never framed
CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

routes = web.RouteTableDef()
Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _page(template: str, status: int = 200, **context: Any) -> web.Response:
    return web.Response(status=status, text=_TEMPLATES.get_template(template).render(**context),
                        content_type="text/html", headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP,
                                                           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})


def signed_in_only(handler: Page) -> Page:
    """The page for a signed-in operator; the database away is a 503 page (the console is read
    from it), not a traceback."""
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not request.app[SETTINGS].admin_token:
            return _page("off.html", status=401)
        if not session.signed_in(request):
            raise web.HTTPSeeOther("/login")
        try:
            return await handler(request)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            response = _page("unavailable.html", status=503, problem=type(exc).__name__)
            response.headers["Retry-After"] = "5"
            return response
    return guarded


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].admin_token:
        return _page("off.html", status=401)
    return _page("login.html", problem=None)


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    token = request.app[SETTINGS].admin_token
    if not token:
        return _page("off.html", status=401)
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not session.token_matches(given, token):
        return _page("login.html", status=401, problem="That is not the admin token.")
    response = web.HTTPSeeOther("/")
    response.set_cookie(session.COOKIE, session.new_session(token), max_age=session.SESSION_S, httponly=True,
                        samesite="Strict", path="/")
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login")
    # Only a request that carries the session ends it: the SameSite=Strict cookie is not sent by a
    # form on another site, which could otherwise log the operator out
    if session.signed_in(request):
        response.del_cookie(session.COOKIE, path="/")
    raise response


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})  # none: asked by every browser


@routes.get("/console.css")
async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(text=CSS, content_type="text/css", headers={"Cache-Control": "max-age=300"})


@routes.get("/")
@signed_in_only
async def overview(request: web.Request) -> web.Response:
    data = await asyncio.to_thread(views.overview, request.app[SETTINGS])
    health = await request.app[HEALTH_DETAILS].get()
    return _page("overview.html", health=health, **data)


@routes.get("/campaigns/{slug}")
@signed_in_only
async def campaign(request: web.Request) -> web.Response:
    report = await asyncio.to_thread(views.campaign_page, request.match_info["slug"])
    if report is None:
        return _page("missing.html", status=404, what=f"campaign {request.match_info['slug']!r}")
    return _page("campaign.html", report=report)


@routes.get("/contacts")
@signed_in_only
async def contact(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(views.contact_page, request.query.get("q", "")[:320].replace("\x00", ""),
                                    request.app[SETTINGS])
    return _page("contact.html", **found)
