"""The event processor's actor (queue ``retentiond.events``): a message says "there are committed
inbound events to process"; the actor processes whatever is pending (engine/processing.py). Many
messages collapse into one pass; a lost message costs nothing, the scheduler wakes it again.

Processing plans the first steps its leads made due; after each batch the actor relays them onto
their channel queues at once (actors/outbox.py, the relay the scheduler's tick runs too), so a lead's first
message does not wait for the next tick. Both relays move a send ``planned -> queued`` with one
conditional UPDATE, so a send is never enqueued by both."""

from __future__ import annotations

import logging
import threading

import dramatiq
import dramatiq.errors
import peewee

from actors.outbox import relay_planned_sends
from actors.registry import channel_actors
from engine.processing import process_pending
from ground.channels import EVENTS_QUEUE
from ground.settings import Settings

logger = logging.getLogger(__name__)

# What an outage looks like to the relay (anything else is a bug and is raised: the message retries
# and the traceback is logged): the database's errors, and the broker's connection errors.
_AWAY = (peewee.OperationalError, peewee.InterfaceError, dramatiq.errors.BrokerConnectionError)

QUEUE = EVENTS_QUEUE
ACTOR_NAME = "process_events"


def declare_event_actor(broker: dramatiq.Broker, settings: Settings, stopping: threading.Event) -> dramatiq.Actor:
    def process_events() -> None:
        # between batches, a stopping worker lets the rest wait for the next one
        relay = _RelayAfterBatches(settings, channel_actors(broker, settings))
        process_pending(settings, should_stop=stopping.is_set, after_batch=relay)

    return dramatiq.Actor(process_events, broker=broker, actor_name=ACTOR_NAME, queue_name=QUEUE, priority=0,
                          options={"max_retries": 3, "min_backoff": 1000, "max_backoff": 10_000})


class _RelayAfterBatches:
    """Relays after each processed batch, so its leads' first sends are on their queues while the
    next batch is processed. Once the broker or database is away, not again in this pass (one
    warning): the sends stay planned and the scheduler's tick relays them."""

    def __init__(self, settings: Settings, actors: dict[str, dramatiq.Actor]) -> None:
        self.settings, self.actors, self.away = settings, actors, False

    def __call__(self) -> None:
        if self.away:
            return
        try:
            relay_planned_sends(self.settings, self.actors)
        except _AWAY as exc:
            self.away = True
            logger.warning("relaying the sends planned for new leads failed (%s); the scheduler's tick will",
                           type(exc).__name__)
