"""Twilio: SMS through the Messages API, voice through the Calls API (form-encoded, basic auth).

Settings: RETENTIOND_PROVIDER_TWILIO_ACCOUNT_SID, _AUTH_TOKEN, _FROM, and _URL (default
https://api.twilio.com; point it at the simulator in tests). _STATUS_CALLBACK: the URL of our
Twilio webhook source (``{PUBLIC_URL}/webhooks/<source>``), given on every message and call so
Twilio posts its delivery statuses there. _MACHINE_DETECTION (Enable or DetectMessageEnd): calls
detect an answering machine (Twilio reports ``AnsweredBy`` in the call's status callback). A call
speaks the send's TwiML (engine/voice.py). The send's idempotency key goes in
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
from ground.errors import ConfigError, PermanentChannelError
from ground.settings import Secret
from ground.vocabulary import ProviderName

# Twilio's answering-machine detection modes: Enable (decide at once) or DetectMessageEnd (wait
# for the greeting's end, so a voicemail gets the whole message)
MACHINE_DETECTION = ("Enable", "DetectMessageEnd")
# The call progress events Twilio reports to the status callback (its default is "completed" only)
CALL_EVENTS = ("initiated", "ringing", "answered", "completed")


class TwilioProvider:
    name: str = ProviderName.TWILIO
    # The channels it carries, each through its own API resource: a call reads the message aloud.
    resources: ClassVar[Mapping[str, str]] = {ChannelName.SMS: "Messages", ChannelName.CALL: "Calls"}
    channels: ClassVar[tuple[str, ...]] = tuple(resources)

    def __init__(self, channel: str, url: str, account_sid: str, auth_token: str, sender: str,
                 status_callback: str | None = None, machine_detection: str | None = None) -> None:
        self.channel = channel
        self.status_callback = status_callback
        self.machine_detection = machine_detection
        self.spoken = channel == ChannelName.CALL
        resource = self.resources[channel]
        self.endpoint = f"{url}/2010-04-01/Accounts/{account_sid}/{resource}.json"
        # HTTP basic auth (RFC 7617), as Twilio expects it
        self.authorization = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.sender = sender

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> TwilioProvider:
        callback = str(options.get("status_callback") or "") or None
        if callback is not None and not callback.startswith(("http://", "https://")):
            raise ConfigError("RETENTIOND_PROVIDER_TWILIO_STATUS_CALLBACK", "expected the http(s) URL of a Twilio "
                                                                            "webhook source, e.g. {PUBLIC_URL}/webhooks/twilio")
        detection = str(options.get("machine_detection") or "") or None
        if detection is not None and detection not in MACHINE_DETECTION:
            raise ConfigError("RETENTIOND_PROVIDER_TWILIO_MACHINE_DETECTION", f"expected one of {', '.join(MACHINE_DETECTION)}")
        return cls(channel, base_url(options, cls.name, "https://api.twilio.com"),
                   required(options, cls.name, "account_sid"), required(options, cls.name, "auth_token"),
                   required(options, cls.name, "from"), callback, detection)

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if not message.recipient:
            raise PermanentChannelError("twilio: no recipient number")
        # a list of pairs: a list parameter (StatusCallbackEvent) is repeated, as Twilio's own
        # library sends it
        form: list[tuple[str, str]] = [("To", message.recipient), ("From", self.sender)]
        if self.status_callback:
            form.append(("StatusCallback", self.status_callback))
        if self.spoken:
            # the step's TwiML (engine/voice.py); a send planned before it had none says its text
            form.append(("Twiml", message.markup or f"<Response><Say>{escape(message.body or '')}</Say></Response>"))
            if self.machine_detection:
                form.append(("MachineDetection", self.machine_detection))
            if self.status_callback:
                form += [("StatusCallbackEvent", event) for event in CALL_EVENTS]
        else:
            form.append(("Body", message.body or ""))
        answer = await request(self.name, "POST", self.endpoint, data=form,
                               headers={"Authorization": self.authorization,
                                        "I-Twilio-Idempotency-Token": message.idempotency_key,
                                        "Idempotency-Key": message.idempotency_key})
        return ProviderResult(provider_message_id=answer.get("sid"))

    async def close(self) -> None:
        await close_session()
