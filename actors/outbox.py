"""The outbox relay: planned sends, already committed to the database, go onto their channel queues.

Order of writes, so that a crash or a broker outage loses nothing and two daemons never enqueue
the same send twice: a chunk is first moved ``planned -> queued`` in one conditional UPDATE (only
the process whose UPDATE matched the rows enqueues them), then enqueued; when the enqueue fails the
chunk goes back to ``planned`` for the next tick. A crash between the two steps leaves ``queued``
rows that were never enqueued: the reconciler re-enqueues those after a timeout, and the actor's
claim makes a duplicate message harmless.

Pacing: a rate-limited channel is relayed only up to its window (``PACING_WINDOW_S`` of its rate,
never less than one message) beyond the sends already in flight on it (queued, retrying,
sending), so its backlog waits in the outbox, not on its queue: worker threads are not parked
waiting for its rate-limit slots, and its queue's depth is the work due now. An unlimited channel
is relayed whole, as before. Each pass reads the counts in flight (one grouped statement) and the
due sends of every channel (one statement) on ``send(status, channel, due_at)``. Two relays at once
(two daemons' jobs) may together exceed a window, never enqueue a send twice: the conditional
UPDATE still decides who publishes. A pass publishes the paced channels before the unlimited ones,
and the scheduling tick relays before it plans as well as after (actors -> daemon/scheduler.py), so a
long planning pass or a large unlimited backlog never leaves a paced channel dry.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping

import dramatiq

from db.database import db_session
from db.models import utcnow
from engine import sends
from ground.send_states import SendStatus
from ground.settings import Settings

MAX_BATCH = 100  # sends per message on an unlimited (or fast) channel
PACING_WINDOW_S = 3.0  # seconds of a rate-limited channel's rate kept in flight


def batch_size(settings: Settings, channel: str) -> int:
    """About one second of the channel's rate per message, so a slow channel's message is short."""
    per_second = settings.rate(channel).per_second
    if per_second is None:
        return MAX_BATCH
    return max(1, min(MAX_BATCH, int(per_second)))


def window(settings: Settings, channel: str) -> int | None:
    """How many sends of ``channel`` may be in flight at once (None: unlimited, relayed whole).
    At least two scheduler ticks of its rate too, so the channel never runs dry between passes."""
    per_second = settings.rate(channel).per_second
    if per_second is None:
        return None
    seconds = max(PACING_WINDOW_S, 2 * settings.scheduler_interval_s)
    return max(batch_size(settings, channel), math.ceil(per_second * seconds))


def _room(settings: Settings, channel: str, window_size: int, busy: Counter[SendStatus]) -> int:
    """How many sends of a paced channel to relay now: what its window has room for, in whole
    messages. Each message holds a worker thread until its last rate-limit slot, so topping the
    window up with a few sends at a time (as the sends of a message half done leave it) spread it
    over many messages and parked as many threads (six of a process's eight, measured), which the
    unlimited channels then lacked. But when none of its messages waits on the queue (the sends in
    flight are all being sent, or waiting to be retried), a part of a message goes too: else a
    window held by retries would leave the channel idle."""
    room = window_size - sum(busy.values())
    size = batch_size(settings, channel)
    whole = room // size * size
    return whole if whole or busy[SendStatus.QUEUED] else max(0, room)


def relay_planned_sends(settings: Settings, actors: Mapping[str, dramatiq.Actor], limit: int = 10_000) -> int:
    """Enqueue the due planned sends, at most ``limit`` per channel and a rate-limited channel only
    up to its window; return how many were enqueued."""
    now = utcnow()
    with db_session():
        windows = {channel: window(settings, channel) for channel in actors}
        busy = sends.in_flight([c for c, w in windows.items() if w is not None])
        room = {c: limit if w is None else min(limit, _room(settings, c, w, busy.get(c, Counter())))
                for c, w in windows.items()}
        by_channel: dict[str, list[int]] = defaultdict(list)
        for send_id, channel in sends.due(now, room):
            by_channel[channel].append(send_id)

        enqueued = 0
        # Paced channels first: publishing a large unlimited backlog takes seconds, longer than a
        # paced window lasts, and the paced channel would run dry meanwhile.
        for channel in sorted(by_channel, key=lambda c: windows[c] is None):
            ids = by_channel[channel]
            size = batch_size(settings, channel)
            for start in range(0, len(ids), size):
                enqueued += _relay_chunk(actors[channel], ids[start:start + size], now)
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
