"""Provider adapters: each turns an outbound message into one call of a real protocol."""

from __future__ import annotations

from collections.abc import Mapping

from actors.providers.base import OutboundMessage, Provider, ProviderResult
from actors.providers.console import ConsoleProvider
from actors.providers.postmark import PostmarkProvider
from actors.providers.push import PushProvider
from actors.providers.smtp import SmtpProvider
from actors.providers.twilio import TwilioProvider
from actors.providers.webhook import WebhookProvider
from ground.errors import ConfigError
from ground.settings import Secret

__all__ = ["OutboundMessage", "Provider", "ProviderResult", "build_provider"]


def build_provider(name: str, options: Mapping[str, Secret], channel: str) -> Provider:
    """The provider called ``name`` for ``channel``, configured from ``RETENTIOND_PROVIDER_<NAME>_*``."""
    if name == "console":
        return ConsoleProvider.from_options(options)
    if name == "twilio":
        if channel not in ("sms", "call"):
            raise ConfigError(f"RETENTIOND_CHANNEL_{channel.upper()}_PROVIDER", "twilio sends sms and call only")
        return TwilioProvider.from_options(options, channel)
    if name == "postmark":
        return PostmarkProvider.from_options(options, channel)
    if name == "smtp":
        return SmtpProvider.from_options(options, channel)
    if name == "webhook":
        return WebhookProvider.from_options(options, channel)
    if name == "push":
        return PushProvider.from_options(options, channel)
    raise ConfigError(f"RETENTIOND_CHANNEL_{channel.upper()}_PROVIDER", f"unknown provider {name!r}")
