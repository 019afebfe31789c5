"""A JSON push gateway in the style of ntfy: POST {"topic", "title", "message"} with an optional
bearer token. Settings: RETENTIOND_PROVIDER_PUSH_URL and _TOKEN. The topic is the contact's
external id (the app subscribes each user to their own topic)."""

from __future__ import annotations

from collections.abc import Mapping

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.http import base_url, close_session, request
from ground.errors import PermanentChannelError
from ground.settings import Secret
from ground.vocabulary import ProviderName


class PushProvider:
    name: str = ProviderName.PUSH

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> PushProvider:
        token = options.get("token")
        return cls(base_url(options, cls.name, "https://ntfy.sh"), str(token) if token else None)

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if not message.recipient:
            raise PermanentChannelError("push: no topic for this contact")
        headers = {"Idempotency-Key": message.idempotency_key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        answer = await request(self.name, "POST", self.url, headers=headers,
                               json={"topic": message.recipient, "title": message.subject or "",
                                     "message": message.body or ""})
        return ProviderResult(provider_message_id=str(answer.get("id") or message.idempotency_key))

    async def close(self) -> None:
        await close_session()
