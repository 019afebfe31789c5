"""The channel table: every channel retentiond sends on, and everything the layers need to know of it.

Settings read the default rates from here, the actor registry the queue and actor names, the
send-time checks the address field and the quiet-hours flag, the campaign files the subject flag,
the send path the List-Unsubscribe flag. A new channel is one row here (and a provider that can
carry it). Code that means one channel in particular names it with ``ChannelName``; where a
behaviour depends on what kind of channel it is, it reads a flag of this table instead
(tests/test_channels.py finds any channel name written out elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

QUEUE_PREFIX = "retentiond."
EVENTS_QUEUE = QUEUE_PREFIX + "events"  # the event processor's queue (actors/events.py)


class ChannelName(StrEnum):
    """A channel's name, for code that means one channel in particular (a provider that carries it)."""

    SMS = "sms"
    EMAIL = "email"
    CALL = "call"
    PUSH = "push"
    WEBHOOK = "webhook"  # ours: a signed POST to the team's own endpoint


@dataclass(frozen=True)
class Channel:
    name: str
    address_field: str  # the Contact field a send on this channel goes to
    quiet_hours: bool  # held back during the contact's quiet hours (a phone that rings or buzzes)
    default_rate: str  # RETENTIOND_RATE_<NAME> when unset; figures from the field (brief, point 5)
    has_subject: bool = False  # a campaign step on it must give a subject (engine/campaign_file.py)
    # a campaign's message carries List-Unsubscribe and RFC 8058 one-click headers (engine/sends.py)
    list_unsubscribe: bool = False
    # the rich part a step on it may have beside its text (Send.markup): an email's HTML, a
    # call's TwiML (made from the step's ``voice`` options, engine/voice.py)
    markup: str | None = None
    # a send on it goes to the contact's push devices (engine/devices.py), not to one address
    devices: bool = False

    @property
    def queue_name(self) -> str:
        """The durable RabbitMQ queue, visible as such in the management UI."""
        return QUEUE_PREFIX + self.name

    @property
    def actor_name(self) -> str:
        return f"send_{self.name}"


class _ChannelTable(dict[str, Channel]):
    """The table by name. ``x in CHANNELS`` is False for anything but a channel's name, even an
    unhashable value from a payload or a YAML file (a plain dict would raise TypeError there)."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key)

    def get(self, key: object, default: Any = None) -> Any:
        return super().get(key, default) if isinstance(key, str) else default


# Names are the enum's plain text (.value), so settings and the table's keys stay plain strings.
CHANNELS: Mapping[str, Channel] = _ChannelTable((c.name, c) for c in (
    Channel(ChannelName.SMS.value, address_field="phone", quiet_hours=True, default_rate="1/s"),
    Channel(ChannelName.EMAIL.value, address_field="email", quiet_hours=False, default_rate="10/s",
            has_subject=True, list_unsubscribe=True, markup="html"),
    Channel(ChannelName.CALL.value, address_field="phone", quiet_hours=True, default_rate="1/s", markup="twiml"),
    Channel(ChannelName.PUSH.value, address_field="external_id", quiet_hours=True, default_rate="5/s", devices=True),
    Channel(ChannelName.WEBHOOK.value, address_field="external_id", quiet_hours=False, default_rate="50/s"),
))


def channel_of_actor(actor_name: str) -> str | None:
    """The channel whose actor is called ``actor_name`` (None for other actors)."""
    for channel in CHANNELS.values():
        if channel.actor_name == actor_name:
            return channel.name
    return None
