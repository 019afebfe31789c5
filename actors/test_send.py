"""A test send: one campaign step rendered for an address an operator gives and sent through the
channel's real provider (its failover included), at once, outside the outbox: no cap, no quiet
hours, no rate limit (one message), never counted in analytics. The result is a ``send`` row of
its own (``test-`` key, no contact, campaign or step, no text), written once the provider has
answered. No database connection is held during the provider's call."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from actors.providers import Provider
from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.http import close_session
from actors.registry import channel_provider
from db.database import db_session
from db.models import Campaign, CampaignStep, Contact, utcnow
from engine.contacts import normalise_email, normalise_phone
from engine.preview import Preview, preview
from engine.sends import TEST_KEY_PREFIX, record_test_send
from ground.channels import CHANNELS
from ground.errors import RetentiondError
from ground.settings import Settings


@dataclass(frozen=True)
class SentTest:
    send_id: int
    preview: Preview
    provider: str
    provider_message_id: str | None
    error: str | None  # the provider's refusal, when it failed


def send_test(settings: Settings, campaign: Campaign, step: CampaignStep, to: str,
              contact: Contact | None = None) -> SentTest:
    """Render ``step`` for ``contact`` (None: the sample contact) with ``to`` as its address on the
    step's channel, and send it. Raises ``TemplateError`` (nothing sent) and ``InvalidContact``
    for an address that is none."""
    field = CHANNELS[step.channel].address_field
    normalise = {"email": normalise_email, "phone": lambda text: normalise_phone(text, settings.default_region)}
    address = normalise.get(field, str.strip)(to)
    with db_session():  # the sample contact's attributes come from the database
        message = preview(step, contact, settings.public_url, overrides={field: address})
    key = f"{TEST_KEY_PREFIX}{uuid.uuid4().hex}"
    provider = channel_provider(settings, step.channel)
    outbound = OutboundMessage(send_id=0, channel=step.channel, idempotency_key=key, recipient=message.recipient,
                               subject=message.subject, body=message.body, markup=message.html,
                               headers={"X-Retentiond-Test": "true"})
    # no database connection held while the provider answers (up to its timeout, and a failover's)
    result, error = asyncio.run(_send(provider, outbound))
    with db_session():
        send_id = record_test_send(key, step.channel, result.provider or provider.name, message.recipient,
                                   result.provider_message_id, error,
                                   f"test send of {campaign.slug!r} step {step.position}", utcnow())
    return SentTest(send_id, message, result.provider or provider.name, result.provider_message_id, error)


async def _send(provider: Provider, message: OutboundMessage) -> tuple[ProviderResult, str | None]:
    try:
        return await provider.send(message), None
    except RetentiondError as exc:  # transient or permanent: a test send is not retried
        return ProviderResult(), str(exc)[:2000]
    finally:
        await provider.close()
        await close_session()
