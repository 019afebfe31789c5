"""What every provider takes and returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ground.errors import UnbuildableMessage
from ground.settings import Secret


@dataclass(frozen=True)
class OutboundMessage:
    """One send, rendered, ready for a provider. ``idempotency_key`` goes on every provider call."""

    send_id: int
    channel: str
    idempotency_key: str
    recipient: str | None
    subject: str | None
    body: str | None  # the text: an SMS, an email's text part, what a call says, a push's body
    headers: dict[str, str] = field(default_factory=dict)
    # The rich part, when the step has one: an email's HTML part, a call's TwiML document.
    markup: str | None = None
    # A push send's device addresses, by platform ("fcm", "apns" tokens; "ntfy" topic), read from
    # the contact's attributes when the send is checked (engine/devices.py).
    devices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def has_line_break(text: str) -> bool:
    """True if ``text`` would be more than one line (CR, LF, or any break ``str.splitlines`` knows)."""
    return len(f"{text}x".splitlines()) > 1


def refuse_header_line_breaks(message: OutboundMessage, provider: str) -> None:
    """Raise UnbuildableMessage if the subject or a header value of ``message`` has a line break.

    Rendering already puts subjects on one line; this guards every other way a send gets its text
    (a fallback copy, a row written by hand or by an older version) for providers that put the
    recipient, subject or headers in a header. The message names the field, never its content.
    """
    if message.recipient and has_line_break(message.recipient):
        raise UnbuildableMessage(f"{provider}: cannot build the message: the recipient contains a line break")
    if message.subject and has_line_break(message.subject):
        raise UnbuildableMessage(f"{provider}: cannot build the message: the subject contains a line break")
    for name, value in message.headers.items():
        if has_line_break(name) or has_line_break(value):
            raise UnbuildableMessage(f"{provider}: cannot build the message: header {next(iter(name.splitlines()), '')[:40]!r} "
                                     "contains a line break")


@dataclass(frozen=True)
class ProviderResult:
    provider_message_id: str | None = None
    provider: str | None = None  # set by a wrapper that chose among providers (failover)
    # device addresses the push service says are gone (FCM UNREGISTERED, APNs 410): the engine
    # removes them from the contact, with a decision
    invalid_devices: tuple[str, ...] = ()


class Provider(Protocol):
    """A provider sends one message per call, concurrently with others on the same event loop.

    Raise ``TransientChannelError`` (retried), ``ProviderRateLimited`` (429: the channel waits) or
    ``PermanentChannelError`` (recorded, never retried).
    """

    name: str

    async def send(self, message: OutboundMessage) -> ProviderResult: ...

    async def close(self) -> None: ...


class ProviderClass(Protocol):
    """A provider's class, as ``build_provider`` uses it."""

    def from_options(self, options: Mapping[str, Secret], channel: str) -> Provider:
        """The provider for ``channel``, configured from its ``RETENTIOND_PROVIDER_<NAME>_*`` settings."""
        ...
