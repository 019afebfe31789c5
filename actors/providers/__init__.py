"""Provider adapters: each turns an outbound message into one call of a real protocol."""

from __future__ import annotations

from collections.abc import Mapping

from actors.providers.apns import ApnsProvider
from actors.providers.base import OutboundMessage, Provider, ProviderClass, ProviderResult
from actors.providers.console import ConsoleProvider
from actors.providers.fcm import FcmProvider
from actors.providers.postmark import PostmarkProvider
from actors.providers.push import PushProvider
from actors.providers.smtp import SmtpProvider
from actors.providers.twilio import TwilioProvider
from actors.providers.webhook import WebhookProvider
from ground.errors import ConfigError
from ground.settings import Secret
from ground.vocabulary import ProviderName

__all__ = ["OutboundMessage", "Provider", "ProviderResult", "build_provider"]


# Each provider name's adapter (tests/test_dispatch_tables.py keeps the keys equal to ProviderName).
BUILDERS: Mapping[ProviderName, ProviderClass] = {
    ProviderName.CONSOLE: ConsoleProvider,
    ProviderName.SMTP: SmtpProvider,
    ProviderName.TWILIO: TwilioProvider,
    ProviderName.POSTMARK: PostmarkProvider,
    ProviderName.WEBHOOK: WebhookProvider,
    ProviderName.PUSH: PushProvider,
    ProviderName.FCM: FcmProvider,
    ProviderName.APNS: ApnsProvider,
}

# The providers that carry some channels only (the others take any channel's message).
CARRIES: Mapping[ProviderName, tuple[str, ...]] = {
    ProviderName.TWILIO: TwilioProvider.channels,
    ProviderName.FCM: FcmProvider.channels,
    ProviderName.APNS: ApnsProvider.channels,
}


def build_provider(name: str, options: Mapping[str, Secret], channel: str) -> Provider:
    """The provider called ``name`` for ``channel``, configured from ``RETENTIOND_PROVIDER_<NAME>_*``."""
    setting = f"RETENTIOND_CHANNEL_{channel.upper()}_PROVIDER"
    try:
        provider = ProviderName(name)
    except ValueError:
        raise ConfigError(setting, f"unknown provider {name!r}") from None
    carried = CARRIES.get(provider)
    if carried is not None and channel not in carried:
        raise ConfigError(setting, f"{provider} sends {' and '.join(carried)} only")
    return BUILDERS[provider].from_options(options, channel)
