"""Builds the Dramatiq broker from the settings: RabbitMQ, or the in-process broker for a try-out."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    Callbacks,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from actors.delivery import ChannelSender
from actors.events import declare_event_actor
from actors.middleware import CloseProviders, DeadLetterSends, StopFlag
from actors.providers import Provider
from actors.rabbitmq import rabbitmq_broker
from actors.registry import declare_channel_actors
from ground.settings import Settings

# An actor runs for a batch of sends; ten minutes is far above any sane batch.
TIME_LIMIT_MS = 10 * 60 * 1000


def build_broker(settings: Settings, providers: Mapping[str, Provider] | None = None) -> dramatiq.Broker:
    """A broker with the channel actors declared on it, and set as Dramatiq's global broker."""
    stopping = threading.Event()
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=settings.max_retries, min_backoff=settings.retry_min_backoff_ms,
                max_backoff=settings.retry_max_backoff_ms),
        AsyncIO(),
        DeadLetterSends(),
        StopFlag(stopping),
    ]
    broker: dramatiq.Broker
    if settings.is_memory_broker:
        broker = StubBroker(middleware=middleware)
    else:
        # Publisher confirms: an enqueue returns once RabbitMQ has the message (and Dramatiq can
        # re-declare a queue an operator deleted). Messages carry batches, so the cost is small.
        # Classic or quorum queues (replicated over a cluster): actors/rabbitmq.py.
        broker = rabbitmq_broker(settings, middleware, confirm_delivery=True)
    channel_actors = declare_channel_actors(broker, settings, stopping, providers)
    senders = [a.fn for a in channel_actors.values() if isinstance(a.fn, ChannelSender)]
    in_use = list({id(sender.provider): sender.provider for sender in senders}.values())
    broker.add_middleware(CloseProviders(in_use), after=AsyncIO)
    declare_event_actor(broker, settings, stopping)
    dramatiq.set_broker(broker)
    return broker
