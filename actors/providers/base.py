"""What every provider takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutboundMessage:
    """One send, rendered, ready for a provider. ``idempotency_key`` goes on every provider call."""

    send_id: int
    channel: str
    idempotency_key: str
    recipient: str | None
    subject: str | None
    body: str | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderResult:
    provider_message_id: str | None = None
    provider: str | None = None  # set by a wrapper that chose among providers (failover)


class Provider(Protocol):
    """A provider sends one message per call, concurrently with others on the same event loop.

    Raise ``TransientChannelError`` (retried), ``ProviderRateLimited`` (429: the channel waits) or
    ``PermanentChannelError`` (recorded, never retried).
    """

    name: str

    async def send(self, message: OutboundMessage) -> ProviderResult: ...

    async def close(self) -> None: ...
