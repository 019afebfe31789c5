"""Events out, posted: the ``webhook`` channel's sends addressed ``destination:<name>`` go to that
destination's URL, signed with its own secret by the standardwebhooks package (``webhook-id`` =
the send's idempotency key, the receiver's deduplication key); every other send on the channel
goes to the channel's provider as before. What an event holds is engine/events_out.py's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from standardwebhooks import Webhook

from actors.providers.base import OutboundMessage, Provider, ProviderResult
from actors.providers.http import close_session, request
from engine.events_out import destination_of, is_event_send
from ground.errors import ConfigError, PermanentChannelError
from ground.settings import Destination


class DestinationRouter:
    """The webhook channel's provider when destinations are configured."""

    def __init__(self, destinations: Mapping[str, Destination], inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.targets: dict[str, tuple[str, Webhook]] = {}
        for name, destination in destinations.items():
            try:
                self.targets[name] = (destination.url, Webhook(str(destination.secret)))
            except Exception as exc:  # the library raises its own types for a malformed secret
                raise ConfigError(f"RETENTIOND_DESTINATION_{name.upper()}_SECRET", "expected whsec_<base64>") from exc

    async def send(self, message: OutboundMessage) -> ProviderResult:
        # only an event send goes to a destination: a contact whose external id reads
        # "destination:crm" gets a campaign's webhook step at the channel's own endpoint
        name = destination_of(message.recipient) if is_event_send(message.idempotency_key) else None
        if name is None:
            return await self.inner.send(message)
        target = self.targets.get(name)
        if target is None:  # configured when the event was made, gone since
            raise PermanentChannelError(f"events out: no destination {name[:40]!r} is configured")
        url, signer = target
        body = message.body or "{}"
        now = dt.datetime.now(dt.UTC)
        headers = {"webhook-id": message.idempotency_key, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signer.sign(message.idempotency_key, now, body),
                   "Content-Type": "application/json"}
        await request(f"destination {name}", "POST", url, data=body.encode(), headers=headers)
        return ProviderResult(provider_message_id=message.idempotency_key, provider=f"destination:{name}"[:32])

    async def close(self) -> None:
        await self.inner.close()
        await close_session()
