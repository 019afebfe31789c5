"""A JSON push gateway in the style of ntfy: POST {"topic", "title", "message"} with an optional
bearer token. Settings: RETENTIOND_PROVIDER_PUSH_URL (required: the gateway the app listens to; a
public default would publish to anyone who guesses the topic) and _TOKEN.

The topic is the contact's own secret topic, its ``ntfy`` device address (OutboundMessage.devices,
from the contact's ``ntfy_topic`` attribute), never its external id, which others may know or guess.
"""

from __future__ import annotations

from collections.abc import Mapping

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.http import base_url, close_session, request, required
from ground.errors import PermanentChannelError
from ground.settings import Secret
from ground.vocabulary import ProviderName

PLATFORM = "ntfy"  # the contact's device addresses this provider reads (OutboundMessage.devices)


class PushProvider:
    name: str = ProviderName.PUSH

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> PushProvider:
        token = options.get("token")
        url = base_url(options, cls.name, required(options, cls.name, "url"))
        return cls(url, str(token) if token else None)

    async def send(self, message: OutboundMessage) -> ProviderResult:
        topic = next(iter(message.devices.get(PLATFORM, ())), None)
        if not topic:
            raise PermanentChannelError("push: the contact has no ntfy topic")
        headers = {"Idempotency-Key": message.idempotency_key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        answer = await request(self.name, "POST", self.url, headers=headers,
                               json={"topic": topic, "title": message.subject or "",
                                     "message": message.body or ""})
        return ProviderResult(provider_message_id=str(answer.get("id") or message.idempotency_key))

    async def close(self) -> None:
        await close_session()
