"""The channel table: every channel retentiond sends on, and everything the layers need to know of it.

Settings read the default rates from here, the actor registry the queue and actor names, the
send-time checks the address field and the quiet-hours flag. A new channel is one row here (and a
provider that can carry it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

QUEUE_PREFIX = "retentiond."
EVENTS_QUEUE = QUEUE_PREFIX + "events"  # the event processor's queue (actors/events.py)


@dataclass(frozen=True)
class Channel:
    name: str
    address_field: str  # the Contact field a send on this channel goes to
    quiet_hours: bool  # held back during the contact's quiet hours (a phone that rings or buzzes)
    default_rate: str  # RETENTIOND_RATE_<NAME> when unset; figures from the field (brief, point 5)

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


CHANNELS: Mapping[str, Channel] = _ChannelTable((c.name, c) for c in (
    Channel("sms", address_field="phone", quiet_hours=True, default_rate="1/s"),
    Channel("email", address_field="email", quiet_hours=False, default_rate="10/s"),
    Channel("call", address_field="phone", quiet_hours=True, default_rate="1/s"),
    Channel("push", address_field="external_id", quiet_hours=True, default_rate="5/s"),
    Channel("webhook", address_field="external_id", quiet_hours=False, default_rate="50/s"),  # ours
))


def channel_of_actor(actor_name: str) -> str | None:
    """The channel whose actor is called ``actor_name`` (None for other actors)."""
    for channel in CHANNELS.values():
        if channel.actor_name == actor_name:
            return channel.name
    return None
