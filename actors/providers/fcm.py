"""Firebase Cloud Messaging, HTTP v1 API: one ``messages:send`` call per device token.

Settings: RETENTIOND_PROVIDER_FCM_CREDENTIALS (the path of a Google service-account JSON key,
required), _PROJECT_ID (default: the key file's ``project_id``) and _URL (default
https://fcm.googleapis.com; point it at the simulator in tests, with a key file whose
``token_uri`` is the simulator's /token).

Authentication is OAuth 2.0: google-auth signs a JWT with the service account's key and trades it
at the key file's ``token_uri`` for an access token (scope firebase.messaging). That exchange is a
blocking HTTP call, so it runs in a thread, one at a time behind a lock; the token is kept until
five minutes before it expires, and a 401 gets a new one and one more try.

The devices are the contact's ``fcm`` tokens (OutboundMessage.devices), sent to concurrently
(actors/providers/devices.py). A token FCM says is gone (404 UNREGISTERED, or 400 INVALID_ARGUMENT
about the registration token) is reported in ``invalid_devices``, not as a failure of the send.
Error messages carry the status and FCM's codes, never the token or the text.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2 import service_account

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.devices import DeviceGone, send_to_devices
from actors.providers.http import Answer, base_url, call, close_session, failure, required
from ground.channels import ChannelName
from ground.errors import ConfigError, PermanentChannelError, TransientChannelError
from ground.settings import Secret
from ground.vocabulary import ProviderName

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
PLATFORM = "fcm"  # the contact's device addresses this provider reads (OutboundMessage.devices)
RENEW_BEFORE_EXPIRY_S = 300
TOKEN_TIMEOUT_S = 30  # google-auth's own default is 120 s
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


class _TokenRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with our timeout."""

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: Any = None, **kwargs: Any) -> Any:
        return super().__call__(url, method, body, headers, timeout or TOKEN_TIMEOUT_S, **kwargs)


class FcmProvider:
    name: str = ProviderName.FCM
    channels: ClassVar[tuple[str, ...]] = (ChannelName.PUSH,)

    def __init__(self, url: str, project_id: str, credentials: service_account.Credentials) -> None:
        self.endpoint = f"{url}/v1/projects/{quote(project_id, safe='')}/messages:send"
        self.credentials = credentials
        self._transport = _TokenRequest()
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}  # one per event loop that sends
        self._access: tuple[str, float] | None = None  # (token, monotonic time to renew it)
        self.token_refreshes = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> FcmProvider:
        path = required(options, cls.name, "credentials")
        setting = "RETENTIOND_PROVIDER_FCM_CREDENTIALS"
        try:
            credentials = service_account.Credentials.from_service_account_file(path, scopes=[SCOPE])
        except OSError as exc:
            raise ConfigError(setting, f"cannot read the key file ({type(exc).__name__})") from None
        except (ValueError, KeyError, TypeError) as exc:
            # the message may quote the key: the type only
            raise ConfigError(setting, f"not a Google service-account key file ({type(exc).__name__})") from None
        project_id = str(options.get("project_id") or credentials.project_id or "")
        if not project_id:
            raise ConfigError("RETENTIOND_PROVIDER_FCM_PROJECT_ID", "required: the key file has no project_id")
        return cls(base_url(options, cls.name, "https://fcm.googleapis.com"), project_id, credentials)

    async def send(self, message: OutboundMessage) -> ProviderResult:
        payload = {"notification": {"title": message.subject or "", "body": message.body or ""},
                   "data": {"idempotency_key": message.idempotency_key}}

        async def send_one(token: str) -> str:
            return await self._send_one(token, payload)
        return await send_to_devices(self.name, PLATFORM, message, send_one)

    async def _send_one(self, token: str, payload: Mapping[str, Any]) -> str:
        body = {"message": {"token": token, **payload}}
        access = await self._access_token()
        answer = await self._post(body, access)
        if answer.status == 401:  # revoked or expired early: a new token, one more try
            access = await self._access_token(refused=access)
            answer = await self._post(body, access)
        if answer.ok:
            try:
                return str(json.loads(answer.text)["name"])
            except (ValueError, KeyError, TypeError) as exc:
                raise TransientChannelError("fcm: unreadable answer") from exc
        codes, gone = _read_error(answer)
        if gone:
            raise DeviceGone(codes)
        raise failure(self.name, answer.status, codes, answer.headers.get("Retry-After"))

    async def _post(self, body: Mapping[str, Any], access: str) -> Answer:
        return await call(self.name, "POST", self.endpoint, json=body,
                          headers={"Authorization": f"Bearer {access}"})

    async def _access_token(self, refused: str | None = None) -> str:
        """The current access token; a new one when it is near its expiry or was ``refused``.
        One refresh at a time: the callers waiting meanwhile take the token it brought."""
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop) or self._locks.setdefault(loop, asyncio.Lock())
        async with lock:
            if self._access is not None:
                token, renew_at = self._access
                if token != refused and time.monotonic() < renew_at:
                    return token
            self._access = await self._refresh()
            return self._access[0]

    async def _refresh(self) -> tuple[str, float]:
        try:
            await asyncio.to_thread(self.credentials.refresh, self._transport)
        except google.auth.exceptions.TransportError as exc:
            raise TransientChannelError(f"fcm: token endpoint unreachable ({type(exc).__name__})") from exc
        except google.auth.exceptions.RefreshError as exc:
            # the error code only: the rest of the answer may quote the service account
            data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], Mapping) else {}
            code = str(data.get("error") or type(exc).__name__)[:80]
            problem = TransientChannelError if exc.retryable else PermanentChannelError
            raise problem(f"fcm: the token endpoint refused the service account ({code})") from exc
        self.token_refreshes += 1
        token = str(self.credentials.token)
        expiry = self.credentials.expiry  # naive UTC, as google-auth keeps it
        lifetime_s = 3600.0
        if expiry is not None:
            lifetime_s = (expiry - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)).total_seconds()
        return token, time.monotonic() + lifetime_s - RENEW_BEFORE_EXPIRY_S

    async def close(self) -> None:
        self._transport.session.close()
        await close_session()


def _read_error(answer: Answer) -> tuple[str, bool]:
    """FCM's codes for a failed call (``status`` and the FcmError ``errorCode``, never its free
    text), and whether they say the token is gone."""
    try:
        error = json.loads(answer.text).get("error") or {}
        details = [d for d in error.get("details") or () if isinstance(d, dict)]
        status = str(error.get("status") or "")
    except (ValueError, AttributeError, TypeError):
        return "", False
    fcm_codes = [str(d.get("errorCode")) for d in details if d.get("@type") == FCM_ERROR and d.get("errorCode")]
    codes = " ".join(code for code in dict.fromkeys([status, *fcm_codes]) if code)[:200]
    if answer.status == 404 and "UNREGISTERED" in fcm_codes:
        return codes, True
    if answer.status == 400 and status == "INVALID_ARGUMENT":
        about_token = any(violation.get("field") == "message.token"
                          for d in details if d.get("@type") == BAD_REQUEST
                          for violation in d.get("fieldViolations") or () if isinstance(violation, dict))
        if about_token or "registration token" in str(error.get("message") or "").lower():
            return codes, True
    return codes, False
