"""The outbox relay: planned sends, already committed to the database, go onto their channel queues.

Order of writes, so that a crash or a broker outage loses nothing and two daemons never enqueue
the same send twice: a chunk is first moved ``planned -> queued`` in one conditional UPDATE (only
the process whose UPDATE matched the rows enqueues them), then enqueued; when the enqueue fails the
chunk goes back to ``planned`` for the next tick. A crash between the two steps leaves ``queued``
rows that were never enqueued: the reconciler re-enqueues those after a timeout, and the actor's
claim makes a duplicate message harmless.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping

import dramatiq

from db.database import db_session
from db.models import utcnow
from engine import sends
from ground.settings import Settings

logger = logging.getLogger(__name__)

MAX_BATCH = 100  # sends per message on an unlimited (or fast) channel


def batch_size(settings: Settings, channel: str) -> int:
    """About one second of the channel's rate per message, so a slow channel's message is short."""
    per_second = settings.rate(channel).per_second
    if per_second is None:
        return MAX_BATCH
    return max(1, min(MAX_BATCH, int(per_second)))


def relay_planned_sends(settings: Settings, actors: Mapping[str, dramatiq.Actor], limit: int = 10_000) -> int:
    """Enqueue up to ``limit`` due planned sends; return how many were enqueued."""
    now = utcnow()
    with db_session():
        by_channel: dict[str, list[int]] = defaultdict(list)
        for send_id, channel in sends.due(now, limit):
            by_channel[channel].append(send_id)

        enqueued = 0
        for channel, ids in by_channel.items():
            actor = actors.get(channel)
            if actor is None:
                logger.error("%d planned send(s) on unknown channel %r left planned", len(ids), channel)
                continue
            size = batch_size(settings, channel)
            for start in range(0, len(ids), size):
                enqueued += _relay_chunk(actor, ids[start:start + size], now)
    return enqueued


def _relay_chunk(actor: dramatiq.Actor, ids: list[int], now) -> int:
    mine = sends.enqueue(ids, now)
    if not mine:
        return 0
    try:
        actor.send(mine)
    except Exception:
        sends.unqueue(mine)
        raise
    return len(mine)
