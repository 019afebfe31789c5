"""Twilio: SMS through the Messages API, voice through the Calls API (form-encoded, basic auth).

Settings: RETENTIOND_PROVIDER_TWILIO_ACCOUNT_SID, _AUTH_TOKEN, _FROM, and _URL (default
https://api.twilio.com; point it at the simulator in tests). The send's idempotency key goes in
Twilio's own ``I-Twilio-Idempotency-Token`` header and in ``Idempotency-Key``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import ClassVar
from xml.sax.saxutils import escape

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.http import base_url, close_session, request, required
from ground.channels import ChannelName
from ground.errors import PermanentChannelError
from ground.settings import Secret
from ground.vocabulary import ProviderName


class TwilioProvider:
    name: str = ProviderName.TWILIO
    # The channels it carries, each through its own API resource: a call reads the message aloud.
    resources: ClassVar[Mapping[str, str]] = {ChannelName.SMS: "Messages", ChannelName.CALL: "Calls"}
    channels: ClassVar[tuple[str, ...]] = tuple(resources)

    def __init__(self, channel: str, url: str, account_sid: str, auth_token: str, sender: str) -> None:
        self.channel = channel
        self.spoken = channel == ChannelName.CALL
        resource = self.resources[channel]
        self.endpoint = f"{url}/2010-04-01/Accounts/{account_sid}/{resource}.json"
        # HTTP basic auth (RFC 7617), as Twilio expects it
        self.authorization = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.sender = sender

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> TwilioProvider:
        return cls(channel, base_url(options, cls.name, "https://api.twilio.com"),
                   required(options, cls.name, "account_sid"), required(options, cls.name, "auth_token"),
                   required(options, cls.name, "from"))

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if not message.recipient:
            raise PermanentChannelError("twilio: no recipient number")
        form = {"To": message.recipient, "From": self.sender}
        if self.spoken:
            form["Twiml"] = f"<Response><Say>{escape(message.body or '')}</Say></Response>"
        else:
            form["Body"] = message.body or ""
        answer = await request(self.name, "POST", self.endpoint, data=form,
                               headers={"Authorization": self.authorization,
                                        "I-Twilio-Idempotency-Token": message.idempotency_key,
                                        "Idempotency-Key": message.idempotency_key})
        return ProviderResult(provider_message_id=answer.get("sid"))

    async def close(self) -> None:
        await close_session()
