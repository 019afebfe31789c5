"""Twilio: SMS through the Messages API, voice through the Calls API (form-encoded, basic auth).

Settings: RETENTIOND_PROVIDER_TWILIO_ACCOUNT_SID, _AUTH_TOKEN, _FROM, and _URL (default
https://api.twilio.com; point it at the simulator in tests). The send's idempotency key goes in
Twilio's own ``I-Twilio-Idempotency-Token`` header and in ``Idempotency-Key``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from xml.sax.saxutils import escape

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.http import base_url, close_session, request, required
from ground.errors import PermanentChannelError
from ground.settings import Secret


class TwilioProvider:
    name = "twilio"

    def __init__(self, channel: str, url: str, account_sid: str, auth_token: str, sender: str) -> None:
        self.channel = channel
        resource = "Calls" if channel == "call" else "Messages"
        self.endpoint = f"{url}/2010-04-01/Accounts/{account_sid}/{resource}.json"
        # HTTP basic auth (RFC 7617), as Twilio expects it
        self.authorization = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.sender = sender

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> TwilioProvider:
        return cls(channel, base_url(options, "twilio", "https://api.twilio.com"),
                   required(options, "twilio", "account_sid"), required(options, "twilio", "auth_token"),
                   required(options, "twilio", "from"))

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if not message.recipient:
            raise PermanentChannelError("twilio: no recipient number")
        form = {"To": message.recipient, "From": self.sender}
        if self.channel == "call":
            form["Twiml"] = f"<Response><Say>{escape(message.body or '')}</Say></Response>"
        else:
            form["Body"] = message.body or ""
        answer = await request("twilio", "POST", self.endpoint, data=form,
                               headers={"Authorization": self.authorization,
                                        "I-Twilio-Idempotency-Token": message.idempotency_key,
                                        "Idempotency-Key": message.idempotency_key})
        return ProviderResult(provider_message_id=answer.get("sid"))

    async def close(self) -> None:
        await close_session()
