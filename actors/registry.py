"""Declares one actor per channel on a broker, each with its provider, rate limit and concurrency."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import dramatiq
from dramatiq.asyncio import get_event_loop_thread

from actors.delivery import ChannelSender
from actors.providers import Provider, build_provider
from actors.providers.destinations import DestinationRouter
from actors.providers.failover import FailoverProvider
from actors.rate_limit import GlobalRateLimiter
from ground.channels import CHANNELS, ChannelName
from ground.errors import PermanentChannelError
from ground.settings import Settings


def _event_loop():
    thread = get_event_loop_thread()
    if thread is None:
        raise RuntimeError("the AsyncIO middleware's event loop is not running (is this a worker?)")
    return thread.loop


# Dramatiq hands a worker thread the lowest priority number first. A rate-limited channel's queue
# holds only its pacing window (actors/outbox.py), a few seconds of its rate, so letting it go first
# costs an unlimited channel at most that rate's worth of threads, while behind an unlimited
# channel's backlog its messages would wait for threads and fall below their rate.
PACED_PRIORITY = 0
UNLIMITED_PRIORITY = 10


def channel_provider(settings: Settings, channel: str, primary: Provider | None = None) -> Provider:
    """The channel's configured provider (``primary`` instead, when given), behind a failover to
    its backup provider when one is configured."""
    provider_name = settings.channel_providers[channel]
    provider = primary or build_provider(provider_name, settings.providers.get(provider_name, {}), channel)
    backup_name = settings.backup_providers.get(channel)
    if backup_name:
        provider = FailoverProvider(channel, provider,
                                    build_provider(backup_name, settings.providers.get(backup_name, {}), channel),
                                    settings.failover_after_errors, settings.failover_cooloff_s)
    if channel == ChannelName.WEBHOOK and settings.destinations:
        provider = DestinationRouter(settings.destinations, provider)  # events out (engine/events_out.py)
    return provider


def declare_channel_actors(broker: dramatiq.Broker, settings: Settings, stopping: threading.Event,
                           providers: Mapping[str, Provider] | None = None) -> dict[str, dramatiq.Actor]:
    """One actor per channel on ``broker``; returns them by channel name.

    ``providers`` replaces the configured provider of some channels (tests use it to put a
    failing or slow provider behind a channel).
    """
    actors = {}
    for name, channel in CHANNELS.items():
        provider = channel_provider(settings, name, (providers or {}).get(name))
        sender = ChannelSender(
            channel=name,
            provider=provider,
            limiter=GlobalRateLimiter(name, settings.rate(name)),
            concurrency=settings.concurrency[name],
            event_loop=_event_loop,
            stopping=stopping,
            settings=settings,
        )
        actors[name] = sender.actor = dramatiq.Actor(
            sender, broker=broker, actor_name=channel.actor_name, queue_name=channel.queue_name,
            priority=PACED_PRIORITY if settings.rate(name).count is not None else UNLIMITED_PRIORITY,
            options={
                "max_retries": settings.max_retries,
                "min_backoff": settings.retry_min_backoff_ms,
                "max_backoff": settings.retry_max_backoff_ms,
                "throws": (PermanentChannelError,),
            },
        )
    return actors


def channel_actors(broker: dramatiq.Broker, settings: Settings) -> dict[str, dramatiq.Actor]:
    """The actors already declared on ``broker`` for the configured channels, by channel name: what
    the relay (actors/outbox.py) publishes to, wherever it runs."""
    return {name: broker.get_actor(CHANNELS[name].actor_name) for name in settings.rates}
