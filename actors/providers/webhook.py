"""The team's own endpoint: a JSON post signed with Standard Webhooks (the standardwebhooks package).

Settings: RETENTIOND_PROVIDER_WEBHOOK_URL and _SECRET (``whsec_<base64>``). ``webhook-id`` is the
send's idempotency key, so the receiver can drop a repeat.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

from standardwebhooks import Webhook

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.http import base_url, close_session, request, required
from ground.errors import ConfigError
from ground.settings import Secret
from ground.vocabulary import ProviderName


class WebhookProvider:
    name: str = ProviderName.WEBHOOK

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        try:
            self.signer = Webhook(secret)
        except Exception as exc:  # the library raises its own error types for a malformed secret
            raise ConfigError("RETENTIOND_PROVIDER_WEBHOOK_SECRET", "expected whsec_<base64>") from exc

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> WebhookProvider:
        return cls(base_url(options, cls.name, ""), required(options, cls.name, "secret"))

    async def send(self, message: OutboundMessage) -> ProviderResult:
        body = json.dumps({"type": "retentiond.message", "data": {
            "send_id": message.send_id, "channel": message.channel, "recipient": message.recipient,
            "subject": message.subject, "body": message.body}}, separators=(",", ":"))
        now = dt.datetime.now(dt.UTC)
        headers = {"webhook-id": message.idempotency_key, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": self.signer.sign(message.idempotency_key, now, body),
                   "Idempotency-Key": message.idempotency_key, "Content-Type": "application/json"}
        await request(self.name, "POST", self.url, data=body.encode(), headers=headers)
        return ProviderResult(provider_message_id=message.idempotency_key)

    async def close(self) -> None:
        await close_session()
