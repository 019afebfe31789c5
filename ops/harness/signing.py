"""Requests signed the way each webhook sender signs them (contract: webhook schemes), for the
webhook tests and the fuzzer: a test signs with the sender's own library where there is one."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator

from ground.settings import load_settings

STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STRIPE_SECRET = "whsec_stripe_test_secret"
TWILIO_TOKEN = "twilio-auth-token"
CAL_SECRET = "cal-secret-0123456789"
TOKEN = "tok-0123456789abcdef"
PUBLIC = "https://hooks.example.com"

Signed = tuple[bytes, dict[str, str]]


def settings_for(db_url: str, **extra: str) -> Any:
    """Sources ``app`` (standard), ``stripe``, ``twilio``, ``cal`` (calcom) and ``zap`` (token)."""
    env = dict(
        DATABASE_URL=db_url, PUBLIC_URL=PUBLIC, WEBHOOK_MAX_BYTES="4096",
        SOURCE_APP_SECRET=STANDARD_SECRET, SOURCE_STRIPE_SCHEME="stripe", SOURCE_STRIPE_SECRET=STRIPE_SECRET,
        SOURCE_TWILIO_SCHEME="twilio", SOURCE_TWILIO_SECRET=TWILIO_TOKEN, SOURCE_CAL_SCHEME="calcom",
        SOURCE_CAL_SECRET=CAL_SECRET, SOURCE_ZAP_SCHEME="token", SOURCE_ZAP_SECRET=TOKEN)
    return load_settings(environ={f"RETENTIOND_{k}": v for k, v in {**env, **extra}.items()})


def _raw(body: Any) -> bytes:
    """A body as sent: bytes as they are, text in UTF-8, anything else as JSON."""
    if isinstance(body, bytes):
        return body
    return (body if isinstance(body, str) else json.dumps(body)).encode()


def standard(body: Any, msg_id: str = "msg_1", secret: str = STANDARD_SECRET,
             at: dt.datetime | None = None) -> Signed:
    """Standard Webhooks signs the body as text (UTF-8): so does the sender's library here."""
    raw = _raw(body)
    at = at or dt.datetime.now(dt.UTC)
    signature = Webhook(secret).sign(msg_id, at, raw.decode())
    return raw, {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                 "webhook-signature": signature, "Content-Type": "application/json"}


def stripe_signed(event: Any, secret: str = STRIPE_SECRET, at: int | None = None) -> Signed:
    raw = _raw(event)
    t = at or int(time.time())
    v1 = hmac.new(secret.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()  # Stripe's documented scheme
    return raw, {"Stripe-Signature": f"t={t},v1={v1}", "Content-Type": "application/json"}


def twilio_signed(path: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> Signed:
    signature = RequestValidator(token).compute_signature(PUBLIC + path, params)
    return urlencode(params).encode(), {"X-Twilio-Signature": signature,
                                        "Content-Type": "application/x-www-form-urlencoded"}


def cal_signed(payload: Any, secret: str = CAL_SECRET) -> Signed:
    raw = _raw(payload)
    return raw, {"X-Cal-Signature-256": hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest(),
                 "Content-Type": "application/json"}
