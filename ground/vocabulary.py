"""The project's basic words, each defined once: event types and an inbound event's statuses,
webhook schemes, provider names.

(Channels have their own table, ``ground/channels.py``; a send's statuses and decisions are in
``ground/send_states.py``.) StrEnum members compare equal to their text, which is what the database,
the campaign files and the webhook payloads hold.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """A canonical inbound event's ``type`` (contract: "Canonical events"), and a campaign's
    ``trigger``/``exit_on`` event (the public five, ``EVENT_TYPES``)."""

    CONTACT_UPSERT = "contact.upsert"
    CONTACT_UNSUBSCRIBE = "contact.unsubscribe"
    CONVERSION = "conversion"
    DELIVERY = "delivery"
    CLICK = "click"
    # Internal: what an inbound SMS START word means (lifts the sms suppression). A sender cannot
    # post it and a campaign cannot trigger or exit on it, so it is not in EVENT_TYPES.
    CONTACT_RESUBSCRIBE = "contact.resubscribe"


# The public event types: what a webhook sender may post and a campaign file may name.
EVENT_TYPES: tuple[str, ...] = tuple(kind for kind in EventType if kind is not EventType.CONTACT_RESUBSCRIBE)


class InboundStatus(StrEnum):
    """``InboundEvent.status``: where a committed webhook event is in its processing."""

    PENDING = "pending"  # committed, waiting for the event processor
    PROCESSED = "processed"  # its effects applied (its ``error`` may hold notes: "no such contact")
    UNMAPPABLE = "unmappable"  # verified but with no meaning for us; kept with its reason, never processed
    FAILED = "failed"  # applying it raised; its ``error`` says why


# What a provider's delivery receipt can say of a sent message (a `delivery` event's status).
DELIVERY_STATUSES = ("delivered", "failed", "bounced", "complained")


class OutEventType(StrEnum):
    """An event sent out to a destination (engine/events_out.py; RETENTIOND_DESTINATION_<NAME>_EVENTS)."""

    SEND_SENT = "send.sent"
    SEND_DELIVERED = "send.delivered"
    SEND_FAILED = "send.failed"
    LINK_CLICKED = "link.clicked"
    CONVERSION = "conversion"
    CONTACT_UNSUBSCRIBED = "contact.unsubscribed"
    CONTACT_SUPPRESSED = "contact.suppressed"


OUT_EVENT_TYPES: tuple[str, ...] = tuple(OutEventType)


class WebhookScheme(StrEnum):
    """How a webhook source signs (contract: "Webhook schemes"); RETENTIOND_SOURCE_<NAME>_SCHEME.
    daemon/web/signatures.py verifies each (tests/test_dispatch_tables.py holds them together)."""

    STANDARD = "standard"
    STRIPE = "stripe"
    TWILIO = "twilio"
    CALCOM = "calcom"
    TOKEN = "token"


WEBHOOK_SCHEMES: tuple[str, ...] = tuple(WebhookScheme)


class ProviderName(StrEnum):
    """A provider a channel can use (RETENTIOND_CHANNEL_<CHANNEL>_PROVIDER); actors/providers builds
    each (tests/test_dispatch_tables.py holds them together)."""

    CONSOLE = "console"
    SMTP = "smtp"
    TWILIO = "twilio"
    POSTMARK = "postmark"
    WEBHOOK = "webhook"
    PUSH = "push"  # an ntfy-style JSON gateway, to the contact's secret topic
    FCM = "fcm"  # Firebase Cloud Messaging (Android, web; iOS through Firebase)
    APNS = "apns"  # Apple Push Notification service


PROVIDERS: tuple[str, ...] = tuple(ProviderName)
