"""Who may see the console: the admin token, given once in a login form, then a session cookie.

Chosen over the bearer token alone because a browser cannot send one; over putting the token in
the cookie because a cookie is kept on disk: the cookie holds an expiry time and its HMAC, keyed
by a hash of the admin token, so rotating the token ends every session and the token itself is
never stored by the browser. The cookie is HttpOnly and SameSite=Strict (no other site can make the
browser use it: the console's only forms are log in and log out); it is not ``Secure`` because the
operators' listener is plain HTTP on a private address (put TLS in front to use it elsewhere).
A script may send ``Authorization: Bearer <token>`` instead.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from aiohttp import web

from daemon.web.keys import SETTINGS

COOKIE = "retentiond_console"
SESSION_S = 12 * 3600


def _key(token: str) -> bytes:
    return hashlib.sha256(b"retentiond console session\x00" + token.encode()).digest()


def _signature(token: str, expires: int) -> str:
    return hmac.new(_key(token), str(expires).encode(), hashlib.sha256).hexdigest()


def new_session(token: str, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_S)
    return f"{expires}.{_signature(token, expires)}"


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


def signed_in(request: web.Request) -> bool:
    token = request.app[SETTINGS].admin_token
    if not token:
        return False
    bearer = request.headers.get("Authorization", "")
    if bearer.startswith("Bearer ") and token_matches(bearer.removeprefix("Bearer "), token):
        return True
    expires, _, signature = request.cookies.get(COOKIE, "").partition(".")
    # ASCII digits, and few: "²" is a digit to isdigit() and not to int(); a 5,000-digit number
    # is more than int() converts (both were 500s)
    if not (0 < len(expires) <= 12 and expires.isascii() and expires.isdigit()) or int(expires) < time.time():
        return False
    return hmac.compare_digest(signature.encode("utf-8", "surrogateescape"), _signature(token, int(expires)).encode())
