"""What defines a channel: its name, its queue, and which contact field it addresses."""

from __future__ import annotations

from dataclasses import dataclass

QUEUE_PREFIX = "retentiond."


@dataclass(frozen=True)
class Channel:
    name: str
    address_field: str  # the Contact field a send on this channel goes to

    @property
    def queue_name(self) -> str:
        """The durable RabbitMQ queue, visible as such in the management UI."""
        return QUEUE_PREFIX + self.name

    @property
    def actor_name(self) -> str:
        return f"send_{self.name}"
