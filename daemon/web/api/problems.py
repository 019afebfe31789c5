"""RFC 9457 problem details: every 4xx and 5xx of ``/api/v1`` is ``application/problem+json``,
unknown routes and refused tokens included (``problem_middleware``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
API_PREFIX = "/api/v1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    """Raised by a handler: the request is refused with ``status`` and a sentence saying why."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None,
                 **extensions: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(status: int, detail: str, *, headers: dict[str, str] | None = None,
                     **extensions: Any) -> web.Response:
    """``{"type": "about:blank", "title": <the status phrase>, "status", "detail", ...}``."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
            **extensions}
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_JSON, headers=headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under ``/api/v1``: a ``Problem``, aiohttp's own HTTP errors (404 unknown route, 405, 413...)
    and any unexpected exception become problem+json. An unexpected one is logged with its traceback
    (and so reaches Sentry, scrubbed) and answered 500 without detail."""
    if not request.path.startswith(API_PREFIX + "/") and request.path != API_PREFIX:
        return await handler(request)
    try:
        response = await handler(request)
    except Problem as problem:
        return problem_response(problem.status, problem.detail, headers=problem.headers, **problem.extensions)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        return problem_response(exc.status, _aiohttp_detail(exc), headers=headers)
    except Exception:
        logger.exception("the admin API failed on %s %s", request.method, request.rel_url.path)
        return problem_response(500, "the server failed; the error is in its log")
    if response.status >= 400 and response.content_type != PROBLEM_JSON:  # e.g. the body deadline's 408
        converted = problem_response(response.status, HTTPStatus(response.status).phrase.lower())
        if response.keep_alive is False:
            converted.force_close()
        return converted
    return response


def _aiohttp_detail(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "no such resource"
    if exc.status == 405:
        return f"method not allowed; allowed: {exc.headers.get('Allow', '')}"
    if exc.status == 413:
        return "the request body is too large"
    return exc.reason
