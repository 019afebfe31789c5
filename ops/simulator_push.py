"""The provider simulator's push services: Firebase Cloud Messaging HTTP v1 (with Google's OAuth
token endpoint) and Apple's APNs, registered in ops/simulator.py's PROVIDER_ROUTES.

* ``POST /token``: Google's OAuth 2.0 token endpoint, JWT-bearer grant. The assertion's claims are
  checked (``iss``, ``aud`` = this route, ``scope`` with firebase.messaging, ``iat``/``exp`` current,
  at most an hour apart); its signature is not (the simulator has no service account's public key).
  Answers an access token good for an hour.
* ``POST /v1/projects/{project}/messages:send``: 401 without an access token /token issued; 400
  INVALID_ARGUMENT for a malformed message; for a token starting with ``unregistered-`` 404
  UNREGISTERED, with ``invalid-`` 400 INVALID_ARGUMENT on ``message.token``; else the message's name.
* ``POST /3/device/{token}``: 403 without a provider token (an ES256 JWT with ``kid``, ``iss`` and an
  ``iat`` of the last hour; its signature is not checked), 403 ExpiredProviderToken for one made
  stale by ``expire_provider_tokens``; 400 for a missing topic, an unknown push type or priority, an
  apns-id that is not a UUID, a payload without ``aps``; 410 Unregistered for a token starting with
  ``unregistered-``, 400 BadDeviceToken with ``bad-``; else 200 with the ``apns-id`` header.

Each notification delivered is recorded as a "push" delivery, one per device: its key is the
apns-id for APNs and "<idempotency key>:<token>" for FCM (a second delivery of a send to the same
device counts as a duplicate, a send to several devices does not). ``sim.fault()`` injects latency,
503s and 429s as on the other routes. The simulator imports nothing of retentiond.
"""

from __future__ import annotations

import json
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web
from yarl import URL

if TYPE_CHECKING:
    from ops.simulator import Simulator

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
ACCESS_TOKEN_LIFETIME_S = 3600
PROVIDER_TOKEN_LIFETIME_S = 3600  # Apple refuses a provider token older than an hour
APNS_PUSH_TYPES = frozenset({"alert", "background", "voip", "complication", "fileprovider", "mdm",
                             "liveactivity", "pushtomain", "location", "widgets", "controls"})
APNS_MAX_PAYLOAD_BYTES = 4096
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@dataclass
class PushState:
    """What the push routes remember of one simulator: the access tokens /token issued (token ->
    expiry, epoch seconds) and the APNs provider tokens made stale."""

    access_tokens: dict[str, float] = field(default_factory=dict)
    expired_provider_tokens: set[str] = field(default_factory=set)
    provider_tokens_seen: set[str] = field(default_factory=set)


_states: weakref.WeakKeyDictionary[Simulator, PushState] = weakref.WeakKeyDictionary()


def state(sim: Simulator) -> PushState:
    found = _states.get(sim)
    if found is None:
        found = _states[sim] = PushState()
    return found


def revoke_access_tokens(sim: Simulator) -> None:
    """Forget every access token issued: FCM answers 401 until a new one is fetched."""
    state(sim).access_tokens.clear()


def expire_provider_tokens(sim: Simulator) -> None:
    """Every APNs provider token seen so far is answered 403 ExpiredProviderToken from now on."""
    pushes = state(sim)
    pushes.expired_provider_tokens |= pushes.provider_tokens_seen


# -- Google OAuth 2.0 token endpoint ------------------------------------------------------------


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


async def google_token(sim: Simulator, request: web.Request) -> web.Response:
    form = await request.post()
    if form.get("grant_type") != JWT_BEARER:
        return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
    assertion = str(form.get("assertion") or "")
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return _oauth_error("invalid_grant", "Invalid JWT.")
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    if header.get("alg") != "RS256" or not isinstance(claims.get("iss"), str) or "@" not in claims["iss"]:
        return _oauth_error("invalid_grant", "Invalid JWT: expected RS256 and an iss that is a service account.")
    # the path only: behind a proxy or under another host name the URL it was sent to differs
    if not isinstance(claims.get("aud"), str) or URL(claims["aud"]).path != request.path:
        return _oauth_error("invalid_grant", "Invalid JWT: aud is not this token endpoint.")
    if FCM_SCOPE not in str(claims.get("scope") or "").split():
        return _oauth_error("invalid_scope", "The firebase.messaging scope is required.")
    if (not isinstance(iat, int | float) or not isinstance(exp, int | float)
            or not iat - 300 <= now < exp or exp - iat > 3600):
        return _oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) "
                                             "and in a reasonable timeframe.")
    failed = await sim.fault()
    if failed is not None:
        return failed
    token = "ya29.sim-" + uuid.uuid4().hex
    state(sim).access_tokens[token] = now + ACCESS_TOKEN_LIFETIME_S
    return web.json_response({"access_token": token, "expires_in": ACCESS_TOKEN_LIFETIME_S,
                              "token_type": "Bearer"})


# -- Firebase Cloud Messaging HTTP v1 -----------------------------------------------------------


def _fcm_error(status: int, code: str, message: str, *details: dict[str, Any]) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "status": code,
                                        "details": list(details)}}, status=status)


def _fcm_message_problem(body: Any) -> str | None:
    """What is wrong with a messages:send body, as FCM would say it (None if nothing)."""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict):
        return "Invalid JSON payload received. Expected a message."
    if sum(key in message for key in ("token", "topic", "condition")) != 1:
        return "Exactly one of token, topic or condition must be specified."
    if "token" in message and (not isinstance(message["token"], str) or not message["token"]):
        return "The registration token is not a valid FCM registration token"
    notification = message.get("notification", {})
    if not isinstance(notification, dict) or not all(
            isinstance(notification.get(k, ""), str) for k in ("title", "body")):
        return "Invalid value at 'message.notification'."
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return "Invalid value at 'message.data': every value must be a string."
    return None


async def fcm_send(sim: Simulator, request: web.Request) -> web.Response:
    scheme, _, access = request.headers.get("Authorization", "").partition(" ")
    expiry = state(sim).access_tokens.get(access) if scheme == "Bearer" else None
    if expiry is None or expiry <= time.time():
        return _fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected "
                                                  "OAuth 2 access token.")
    try:
        body = await request.json()
    except ValueError:
        body = None
    problem = _fcm_message_problem(body)
    if problem is not None:
        return _fcm_error(400, "INVALID_ARGUMENT", problem,
                          {"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"})
    message = body["message"]
    failed = await sim.fault()
    if failed is not None:
        return failed
    token = message.get("token")
    if isinstance(token, str) and token.startswith("unregistered-"):
        return _fcm_error(404, "NOT_FOUND", "Requested entity was not found.",
                          {"@type": FCM_ERROR, "errorCode": "UNREGISTERED"})
    if isinstance(token, str) and token.startswith("invalid-"):
        return _fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                          {"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"},
                          {"@type": BAD_REQUEST, "fieldViolations": [
                              {"field": "message.token",
                               "description": "The registration token is not a valid FCM registration token"}]})
    project = request.match_info["project"]
    data = message.get("data", {})
    key = data.get("idempotency_key")
    notification = message.get("notification", {})
    sim.deliveries.record("push", f"{key}:{token}" if key else None, {
        "provider": "fcm", "to": token, "title": notification.get("title"), "body": notification.get("body"),
        "data": data, "project": project, "authorization_scheme": scheme,
        "authorization": f"{scheme} {access}"})
    return web.json_response({"name": f"projects/{project}/messages/{uuid.uuid4().hex}"})


# -- Apple Push Notification service ------------------------------------------------------------


def _apns_error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"reason": reason, **extra}, status=status)


def _provider_token_problem(sim: Simulator, authorization: str) -> str | None:
    """Why APNs would refuse this provider token (None if it would not)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "MissingProviderToken"
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "InvalidProviderToken"
    if header.get("alg") != "ES256" or not header.get("kid") or not claims.get("iss"):
        return "InvalidProviderToken"
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or iat > time.time() + 60:
        return "InvalidProviderToken"
    pushes = state(sim)
    if token in pushes.expired_provider_tokens or time.time() - iat > PROVIDER_TOKEN_LIFETIME_S:
        return "ExpiredProviderToken"
    pushes.provider_tokens_seen.add(token)
    return None


def _apns_request_problem(request: web.Request, raw: bytes) -> tuple[int, str] | None:
    if not request.headers.get("apns-topic"):
        return 400, "MissingTopic"
    if request.headers.get("apns-push-type") not in APNS_PUSH_TYPES:
        return 400, "InvalidPushType"
    if request.headers.get("apns-priority", "10") not in ("1", "5", "10"):
        return 400, "BadPriority"
    if "apns-id" in request.headers:
        try:
            uuid.UUID(request.headers["apns-id"])
        except ValueError:
            return 400, "BadMessageId"
    if len(raw) > APNS_MAX_PAYLOAD_BYTES:
        return 413, "PayloadTooLarge"
    try:
        body = json.loads(raw)
    except ValueError:
        return 400, "BadPayload"  # not one of Apple's reasons, which has none for a broken body
    if not isinstance(body, dict) or not isinstance(body.get("aps"), dict):
        return 400, "PayloadEmpty"
    return None


async def apns_send(sim: Simulator, request: web.Request) -> web.Response:
    raw = await request.read()
    authorization = request.headers.get("authorization", "")
    refused = _provider_token_problem(sim, authorization)
    if refused is not None:
        return _apns_error(403, refused)
    problem = _apns_request_problem(request, raw)
    if problem is not None:
        return _apns_error(*problem)
    failed = await sim.fault()
    if failed is not None:
        return failed
    device = request.match_info["token"]
    if device.startswith("unregistered-"):
        return _apns_error(410, "Unregistered", timestamp=int(time.time() * 1000))
    if device.startswith("bad-"):
        return _apns_error(400, "BadDeviceToken")
    notification_id = request.headers.get("apns-id") or str(uuid.uuid4()).upper()
    alert = json.loads(raw)["aps"].get("alert")
    alert = alert if isinstance(alert, dict) else {"body": alert}
    sim.deliveries.record("push", notification_id, {
        "provider": "apns", "to": device, "title": alert.get("title"), "body": alert.get("body"),
        "apns_id": notification_id, "topic": request.headers["apns-topic"],
        "push_type": request.headers["apns-push-type"], "priority": request.headers.get("apns-priority"),
        "authorization_scheme": "Bearer", "authorization": authorization})
    return web.Response(status=200, headers={"apns-id": notification_id})
