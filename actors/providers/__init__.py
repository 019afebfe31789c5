"""Provider adapters: each turns an outbound message into one call of a real protocol."""

from __future__ import annotations

from collections.abc import Mapping

from actors.providers.base import OutboundMessage, Provider, ProviderResult
from actors.providers.console import ConsoleProvider
from daemon.config import Secret
from daemon.errors import ConfigError

__all__ = ["OutboundMessage", "Provider", "ProviderResult", "build_provider"]


def build_provider(name: str, options: Mapping[str, Secret]) -> Provider:
    """The provider called ``name``, configured from its ``RETENTIOND_PROVIDER_<NAME>_*`` settings."""
    if name == "console":
        return ConsoleProvider.from_options(options)
    raise ConfigError(f"RETENTIOND_CHANNEL_*_PROVIDER={name}", "this provider is not available yet")
