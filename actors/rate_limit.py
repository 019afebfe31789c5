"""A per-channel rate limit that holds across every process and host sharing the database.

Dramatiq's limiter backends need Redis or Memcached; we have only RabbitMQ and the database, so
the limiter is GCRA (the generic cell rate algorithm) kept in one row per channel:

* ``tat`` ("theoretical arrival time") is the epoch second at which the channel's next slot is free.
* A sender reserves ``k`` slots with one atomic UPDATE: ``tat = max(tat, now) + k * interval``. The
  database serialises the UPDATEs, so two senders never get the same slot, whatever process or
  host they are on. Slot ``i`` starts at ``old_tat + i * interval``; the sender sleeps until then.
* Reservations may not reach further than ``horizon`` into the future, so a crashed process wastes
  at most one horizon of slots (the limit errs on the slow side, never the fast side) and a sender
  never holds a message for long. A sender that finds the horizon full sleeps until it opens.
* ``now`` is the database server's clock on PostgreSQL, so hosts with skewed clocks still agree;
  SQLite is one host by construction and uses the local clock.
* A provider's 429 pushes ``tat`` forward for the whole channel (``penalize``).

Spacing is strict (no burst credit is accumulated while idle), which is what providers' limits
mean and what makes the achieved rate accurate over short windows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import peewee

from db.database import database, is_postgres, sql_rows
from db.models import RateLimit
from ground.settings import Rate

# How far ahead slots may be reserved, at least; a slow channel gets one interval.
MIN_HORIZON_S = 0.5
# The best clock-offset sample is replaced at least this often (clocks drift).
OFFSET_REFRESH_S = 60.0
# A sender reserves at most this share of the horizon at once, leaving room for other senders.
RESERVATION_SHARE = 0.25

_PG_RESERVE = """
WITH clock AS (SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now)
UPDATE rate_limit SET tat = GREATEST(rate_limit.tat, clock.now) + %s
FROM clock
WHERE rate_limit.channel = %s AND GREATEST(rate_limit.tat, clock.now) + %s <= clock.now + %s
RETURNING rate_limit.tat, clock.now
"""
_PG_PEEK = "SELECT tat, EXTRACT(EPOCH FROM clock_timestamp())::float8 FROM rate_limit WHERE channel = %s"
_PG_PENALIZE = """
UPDATE rate_limit SET tat = GREATEST(tat, EXTRACT(EPOCH FROM clock_timestamp())::float8 + %s)
WHERE channel = %s
"""
_SQLITE_RESERVE = """
UPDATE rate_limit SET tat = MAX(tat, ?) + ?
WHERE channel = ? AND MAX(tat, ?) + ? <= ? + ?
RETURNING tat
"""


@dataclass(frozen=True)
class Reservation:
    """``count`` slots ``interval_s`` apart, the first at ``first_at`` on the monotonic clock."""

    count: int
    first_at: float  # time.monotonic() of the first slot, in this process
    interval_s: float
    first_epoch: float = 0.0  # the same slot on the database's clock, as every process sees it

    def slot_at(self, index: int) -> float:
        return self.first_at + index * self.interval_s

    def epoch_slot_at(self, index: int) -> float:
        return self.first_epoch + index * self.interval_s


class GlobalRateLimiter:
    """The rate limit of one channel, shared through the database."""

    def __init__(self, channel: str, rate: Rate) -> None:
        self.channel = channel
        self.rate = rate
        self.interval_s = rate.interval_s
        self.horizon_s = max(MIN_HORIZON_S, self.interval_s)
        self.chunk = max(1, int(self.horizon_s * RESERVATION_SHARE / self.interval_s)) if self.interval_s else 0
        self._offset = time.time() - time.monotonic()  # database epoch seconds minus local monotonic
        self._offset_rtt: float | None = None
        self._offset_at = 0.0

    @property
    def unlimited(self) -> bool:
        return self.rate.count is None

    def ensure_row(self) -> None:
        RateLimit.insert(channel=self.channel, tat=0.0).on_conflict_ignore().execute()

    def try_reserve(self, wanted: int) -> Reservation | float:
        """Reserve up to ``wanted`` slots now; or return how many seconds to wait before trying again."""
        count = max(1, min(wanted, self.chunk))
        span = count * self.interval_s
        if is_postgres():
            sent = time.monotonic()
            row = _first(sql_rows(_PG_RESERVE, (span, self.channel, span, self.horizon_s)))
            if row is not None:
                new_tat, db_now = row
                self._learn_offset(db_now, sent, time.monotonic())
                return self._reservation(count, new_tat - span)
            peek = _first(sql_rows(_PG_PEEK, (self.channel,)))
        else:
            now = time.time()
            self._offset = now - time.monotonic()  # one host: the local clocks map exactly
            row = _first(sql_rows(_SQLITE_RESERVE, (now, span, self.channel, now, span, now, self.horizon_s)))
            if row is not None:
                return self._reservation(count, row[0] - span)
            tat = RateLimit.select(RateLimit.tat).where(RateLimit.channel == self.channel).scalar()
            peek = None if tat is None else (tat, now)
        if peek is None:  # first use of this channel on this database
            self.ensure_row()
            return self.try_reserve(wanted)
        tat, db_now = peek
        # The horizon opens for `count` slots once tat + span - horizon is reached.
        return max(0.005, tat + span - self.horizon_s - db_now)

    def reserve(self, wanted: int, deadline: float | None = None) -> Reservation | None:
        """Block until up to ``wanted`` slots are reserved; ``None`` if ``deadline`` (monotonic) passes."""
        while True:
            outcome = self.try_reserve(wanted)
            if isinstance(outcome, Reservation):
                return outcome
            if deadline is not None and time.monotonic() + outcome > deadline:
                return None
            time.sleep(outcome)

    def hold_s(self) -> float:
        """Seconds the channel is still held by a provider's 429 (for an unlimited channel, whose
        sends reserve no slots, this is the one check per batch)."""
        if is_postgres():
            row = _first(sql_rows(_PG_PEEK, (self.channel,)))
        else:
            tat = RateLimit.select(RateLimit.tat).where(RateLimit.channel == self.channel).scalar()
            row = None if tat is None else (tat, time.time())
        return 0.0 if row is None else max(0.0, row[0] - row[1])

    def penalize(self, seconds: float) -> None:
        """Hold the whole channel for ``seconds`` (a provider said 429 / Retry-After)."""
        self.ensure_row()
        if is_postgres():
            database.execute_sql(_PG_PENALIZE, (seconds, self.channel))
        else:
            (RateLimit.update(tat=peewee.fn.MAX(RateLimit.tat, time.time() + seconds))
             .where(RateLimit.channel == self.channel).execute())

    def _learn_offset(self, db_now: float, sent: float, received: float) -> None:
        """Keep the database clock's offset from this process's monotonic clock, NTP-style: from
        the round trip with the smallest delay seen lately (its error is at most half of it). One
        offset for all of a process's reservations keeps their slots exactly spaced, whatever the
        latency of each query."""
        rtt = received - sent
        fresh = received - self._offset_at > OFFSET_REFRESH_S
        if self._offset_rtt is None or rtt <= self._offset_rtt or fresh:
            self._offset = db_now - (sent + received) / 2
            self._offset_rtt = rtt
            self._offset_at = received

    def _reservation(self, count: int, first_slot_epoch: float) -> Reservation:
        # A slot already past (this thread was descheduled) is simply not waited for; it keeps its
        # place, so the spacing of the slots themselves never shrinks.
        return Reservation(count, first_slot_epoch - self._offset, self.interval_s, first_slot_epoch)


def _first(found: list[tuple[Any, ...]]) -> tuple[Any, ...] | None:
    return found[0] if found else None
