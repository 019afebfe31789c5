"""Verifying a webhook with its sender's own scheme, through the sender's own library where one
exists. Every failure is one ``InvalidSignature`` (-> 401); comparisons are constant-time.

* ``standard``: Standard Webhooks (``webhook-id``/``webhook-timestamp``/``webhook-signature``, 5 min
  tolerance) — the ``standardwebhooks`` package.
* ``stripe``: ``Stripe-Signature`` (``t=...,v1=...``) — the ``stripe`` package; the tolerance holds
  both ways (the package only refuses old timestamps; a signed ``t`` ten years ahead would make a
  captured request replayable for ten years).
* ``twilio``: ``X-Twilio-Signature`` over the URL as Twilio saw it (``PUBLIC_URL`` + path + query,
  so it holds behind a proxy) and the form parameters — the ``twilio`` package's RequestValidator.
* ``calcom``: ``X-Cal-Signature-256``, hex HMAC-SHA256 of the body.
* ``token``: a shared secret in ``X-Webhook-Token`` or the ``token`` query parameter.

Signature headers are ASCII in every scheme (hex, base64, decimal timestamps): a value that is not
(aiohttp hands undecodable bytes on as lone surrogates) is refused before any library sees it, since
the libraries' comparisons raise on such text (``hmac.compare_digest`` refuses non-ASCII ``str``)
and an unauthenticated request must get a 401, never a 500.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.events import WebhookRequest
from ground.errors import InvalidSignature
from ground.settings import Source
from ground.vocabulary import WebhookScheme


def verify(source: Source, request: WebhookRequest, public_url: str, tolerance_s: int = 300) -> None:
    secret = str(source.secret or "")
    if not secret:
        raise InvalidSignature("no secret configured")
    try:
        # inside the try: a scheme the settings accepted but no check here fails closed, never a 500
        # (tests/test_dispatch_tables.py keeps SCHEMES equal to WebhookScheme)
        SCHEMES[WebhookScheme(source.scheme)](secret, request, public_url, tolerance_s)
    except (TypeError, ValueError, UnicodeError) as exc:
        # Fail closed: input a library could not even compare is not a valid signature.
        raise InvalidSignature(type(exc).__name__) from None


def _standard(secret: str, request: WebhookRequest, public_url: str, tolerance_s: int) -> None:
    from standardwebhooks.webhooks import WebhookVerificationError

    # the id is the sender's to choose (the library refuses what it cannot sign); the rest is ASCII
    headers = {"webhook-id": request.headers.get("webhook-id", ""),
               **{name: _ascii_header(request, name) for name in ("webhook-timestamp", "webhook-signature")}}
    if not all(headers.values()):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        _standard_verifier(secret).verify(request.body, headers, json_parse=False)
    except WebhookVerificationError as exc:
        raise InvalidSignature(str(exc)) from None
    except Exception as exc:  # a malformed secret or header the library cannot read
        raise InvalidSignature(type(exc).__name__) from None


@functools.lru_cache(maxsize=64)
def _standard_verifier(secret: str) -> Any:
    from standardwebhooks import Webhook

    return Webhook(secret)


def _stripe(secret: str, request: WebhookRequest, public_url: str, tolerance_s: int) -> None:
    import stripe

    header = _ascii_header(request, "Stripe-Signature")
    if not header:
        raise InvalidSignature("missing Stripe-Signature")
    try:
        stripe.WebhookSignature.verify_header(request.body.decode("utf-8", "replace"), header, secret,
                                              tolerance=tolerance_s)
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature(str(exc.user_message or "bad signature")) from None
    # the t= the package verified: the first one, read as it reads it (stripe's _get_timestamp)
    try:
        timestamp = next(int(item.split("=", 2)[1]) for item in header.split(",") if item.split("=", 2)[0] == "t")
    except (StopIteration, ValueError, IndexError):
        raise InvalidSignature("unreadable timestamp") from None
    if timestamp > time.time() + tolerance_s:
        raise InvalidSignature("timestamp too far in the future")


def _twilio(secret: str, request: WebhookRequest, public_url: str, tolerance_s: int) -> None:
    from twilio.request_validator import RequestValidator

    signature = _ascii_header(request, "X-Twilio-Signature")
    if not signature:
        raise InvalidSignature("missing X-Twilio-Signature")
    url = public_url.rstrip("/") + request.path_qs
    params = dict(request.form) if request.method == "POST" else {}
    if not RequestValidator(secret).validate(url, params, signature):
        raise InvalidSignature("bad X-Twilio-Signature")


def _calcom(secret: str, request: WebhookRequest, public_url: str, tolerance_s: int) -> None:
    given = _ascii_header(request, "X-Cal-Signature-256")
    expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    if not given or not hmac.compare_digest(_raw(given), expected.encode()):
        raise InvalidSignature("bad X-Cal-Signature-256")


def _token(secret: str, request: WebhookRequest, public_url: str, tolerance_s: int) -> None:
    given = request.headers.get("X-Webhook-Token") or request.query.get("token") or ""
    if not given or not hmac.compare_digest(_raw(given), secret.encode()):
        raise InvalidSignature("bad or missing token")


def _ascii_header(request: WebhookRequest, name: str) -> str:
    """A signature header's value, "" when absent; ``InvalidSignature`` when it is not printable ASCII."""
    value = request.headers.get(name, "")
    if not (value.isascii() and value.isprintable()):
        raise InvalidSignature(f"{name} is not ASCII")
    return value


def _raw(header: str) -> bytes:
    """A header's bytes back: aiohttp decodes undecodable bytes to lone surrogates, which a plain
    ``encode()`` refuses (a 500 on an unauthenticated request)."""
    return header.encode("utf-8", "surrogateescape")


Check = Callable[[str, WebhookRequest, str, int], None]

SCHEMES: Mapping[WebhookScheme, Check] = {
    WebhookScheme.STANDARD: _standard,
    WebhookScheme.STRIPE: _stripe,
    WebhookScheme.TWILIO: _twilio,
    WebhookScheme.CALCOM: _calcom,
    WebhookScheme.TOKEN: _token,
}
