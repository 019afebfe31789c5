"""The event processor's actor (queue ``retentiond.events``): a message says "there are committed
inbound events to process"; the actor processes whatever is pending (engine/processing.py). Many
messages collapse into one pass; a lost message costs nothing, the scheduler wakes it again."""

from __future__ import annotations

import threading

import dramatiq

from engine.processing import process_pending
from ground.channels import EVENTS_QUEUE
from ground.settings import Settings

QUEUE = EVENTS_QUEUE
ACTOR_NAME = "process_events"


def declare_event_actor(broker: dramatiq.Broker, settings: Settings, stopping: threading.Event) -> dramatiq.Actor:
    def process_events() -> None:
        # between batches, a stopping worker lets the rest wait for the next one
        process_pending(settings, should_stop=stopping.is_set)

    return dramatiq.Actor(process_events, broker=broker, actor_name=ACTOR_NAME, queue_name=QUEUE, priority=0,
                          options={"max_retries": 3, "min_backoff": 1000, "max_backoff": 10_000})
