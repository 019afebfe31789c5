"""Apple Push Notification service, token-based authentication: one call per device token.

Settings: RETENTIOND_PROVIDER_APNS_KEY_FILE (the .p8 signing key Apple gives, PEM), _KEY_ID, _TEAM_ID,
_TOPIC (the app's bundle id) and _URL (default https://api.push.apple.com; the sandbox is
https://api.sandbox.push.apple.com; point it at the simulator in tests).

Each call carries a provider token: a JWT signed ES256 with the key (header ``kid``, claims ``iss``
= team id and ``iat``), kept 50 minutes (Apple refuses one older than an hour, and a new one more
often than every 20 minutes), renewed early when Apple answers 403 ExpiredProviderToken (then the
call is tried once more). ``apns-id`` is derived from the send's idempotency key and the device
(uuid5), so a retry carries the same id.

Apple requires HTTP/2: httpx with ``http2=True`` (one client per event loop). Over a plain
``http://`` URL (the simulator) httpx speaks HTTP/1.1 instead, which the simulator serves alike.

The devices are the contact's ``apns`` tokens (OutboundMessage.devices), sent to concurrently
(actors/providers/devices.py). 410 Unregistered, 400 BadDeviceToken and DeviceTokenNotForTopic say
the token is gone: reported in ``invalid_devices``, not as a failure of the send. Error messages
carry the status and Apple's reason, never the token or the text.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.devices import DeviceGone, send_to_devices
from actors.providers.http import base_url, failure, required
from ground.channels import ChannelName
from ground.errors import ConfigError, TransientChannelError, UnbuildableMessage
from ground.settings import Secret
from ground.vocabulary import ProviderName

PLATFORM = "apns"  # the contact's device addresses this provider reads (OutboundMessage.devices)
JWT_RENEW_AFTER_S = 50 * 60
GONE_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})  # with 400; 410 is always gone
# apns-id = uuid5(this, "<idempotency key>\n<device token>")
APNS_ID_NAMESPACE = uuid.UUID("0c6d2b56-5d5e-4c1f-9a57-6a1f4f0b8f3e")
CONNECTIONS = 100  # per process and event loop: APNs multiplexes many streams on each
TIMEOUT = httpx.Timeout(30, connect=5)

_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


def client() -> httpx.AsyncClient:
    """The running loop's shared HTTP/2 client, created on first use inside that loop."""
    loop = asyncio.get_running_loop()
    current = _clients.get(loop)
    if current is None or current.is_closed:
        current = httpx.AsyncClient(http2=True, timeout=TIMEOUT,
                                    limits=httpx.Limits(max_connections=CONNECTIONS, keepalive_expiry=30))
        _clients[loop] = current
    return current


async def close_client() -> None:
    current = _clients.pop(asyncio.get_running_loop(), None)
    if current is not None and not current.is_closed:
        await current.aclose()


def apns_id(idempotency_key: str, device: str) -> str:
    """The notification's apns-id: the same for every try of a send to a device."""
    return str(uuid.uuid5(APNS_ID_NAMESPACE, f"{idempotency_key}\n{device}"))


class ApnsProvider:
    name: str = ProviderName.APNS
    channels: ClassVar[tuple[str, ...]] = (ChannelName.PUSH,)

    def __init__(self, url: str, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, topic: str) -> None:
        self.url = url
        self.key = key
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self._jwt: tuple[str, float] | None = None  # (token, monotonic time it was made)
        self.jwts_made = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> ApnsProvider:
        path = required(options, cls.name, "key_file")
        key_id, team_id = required(options, cls.name, "key_id"), required(options, cls.name, "team_id")
        topic = required(options, cls.name, "topic")
        setting = "RETENTIOND_PROVIDER_APNS_KEY_FILE"
        try:
            with open(path, "rb") as file:
                pem = file.read()
        except OSError as exc:
            raise ConfigError(setting, f"cannot read the key file ({type(exc).__name__})") from None
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(setting, f"not a PEM private key ({type(exc).__name__})") from None
        if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
            raise ConfigError(setting, "expected Apple's P-256 (ES256) signing key")
        return cls(base_url(options, cls.name, "https://api.push.apple.com"), key, key_id, team_id, topic)

    def provider_token(self, refused: str | None = None) -> str:
        """The JWT for the calls: kept JWT_RENEW_AFTER_S, or made anew when Apple ``refused`` it."""
        if self._jwt is not None:
            token, made_at = self._jwt
            if token != refused and time.monotonic() - made_at < JWT_RENEW_AFTER_S:
                return token
        token = jwt.encode({"iss": self.team_id, "iat": int(time.time())}, self.key, algorithm="ES256",
                           headers={"kid": self.key_id})
        self._jwt = (token, time.monotonic())
        self.jwts_made += 1
        return token

    async def send(self, message: OutboundMessage) -> ProviderResult:
        payload = {"aps": {"alert": {"title": message.subject or "", "body": message.body or ""}}}

        async def send_one(device: str) -> str:
            return await self._send_one(device, apns_id(message.idempotency_key, device), payload)
        return await send_to_devices(self.name, PLATFORM, message, send_one)

    async def _send_one(self, device: str, notification_id: str, payload: Mapping[str, Any]) -> str:
        url = f"{self.url}/3/device/{quote(device, safe='')}"
        token = self.provider_token()
        response = await self._post(url, notification_id, payload, token)
        reason = _reason(response)
        if response.status_code == 403 and reason == "ExpiredProviderToken":
            response = await self._post(url, notification_id, payload, self.provider_token(refused=token))
            reason = _reason(response)
        if 200 <= response.status_code < 300:
            return response.headers.get("apns-id") or notification_id
        if response.status_code == 410 or (response.status_code == 400 and reason in GONE_REASONS):
            raise DeviceGone(reason or "Unregistered")
        raise failure(self.name, response.status_code, reason, response.headers.get("retry-after"))

    async def _post(self, url: str, notification_id: str, payload: Mapping[str, Any], token: str) -> httpx.Response:
        headers = {"authorization": f"bearer {token}", "apns-topic": self.topic, "apns-push-type": "alert",
                   "apns-priority": "10", "apns-id": notification_id}
        try:
            return await client().post(url, json=payload, headers=headers)
        except httpx.TransportError as exc:  # connection, timeout, protocol: worth another try
            raise TransientChannelError(f"apns: {type(exc).__name__}") from exc
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            # the request could not be built (a body JSON cannot carry): the type only
            raise UnbuildableMessage(f"apns: cannot build the request ({type(exc).__name__})") from exc

    async def close(self) -> None:
        await close_client()


def _reason(response: httpx.Response) -> str:
    """Apple's ``reason`` for a failed call ("" on success or when the body has none)."""
    if 200 <= response.status_code < 300:
        return ""
    try:
        data = json.loads(response.text)
    except ValueError:
        return ""
    return str(data.get("reason") or "")[:80] if isinstance(data, dict) else ""
