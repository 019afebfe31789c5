"""The project's basic words, each defined once: event types, webhook schemes, provider names.

(Channels have their own table, ``ground/channels.py``; a send's statuses and decisions are in
``ground/send_states.py``.) StrEnum members compare equal to their text, which is what the database,
the campaign files and the webhook payloads hold.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """A canonical inbound event's ``type`` (contract: "Canonical events")."""

    CONTACT_UPSERT = "contact.upsert"
    CONTACT_UNSUBSCRIBE = "contact.unsubscribe"
    CONVERSION = "conversion"
    DELIVERY = "delivery"
    CLICK = "click"


EVENT_TYPES: tuple[str, ...] = tuple(EventType)

# What a provider's delivery receipt can say of a sent message (a `delivery` event's status).
DELIVERY_STATUSES = ("delivered", "failed", "bounced", "complained")

# How a webhook source signs (contract: "Webhook schemes"); RETENTIOND_SOURCE_<NAME>_SCHEME.
WEBHOOK_SCHEMES = ("standard", "stripe", "twilio", "calcom", "token")

# Provider names a channel can use (RETENTIOND_CHANNEL_<CHANNEL>_PROVIDER); actors/providers builds them.
PROVIDERS = ("console", "smtp", "twilio", "postmark", "webhook", "push")
