"""The global rate limiter's arithmetic, on both engines: distinct, evenly spaced slots for any
number of concurrent reservers, bounded look-ahead, and a 429 that holds the channel."""

from __future__ import annotations

import threading
import time

import pytest

from actors.rate_limit import GlobalRateLimiter, Reservation
from db.database import db_session
from ground.settings import Rate


def _reserve_all(limiter: GlobalRateLimiter, wanted: int, out: list[float], lock: threading.Lock) -> None:
    remaining = wanted
    while remaining:
        with db_session():
            got = limiter.reserve(remaining)
        assert got is not None
        with lock:
            out.extend(got.epoch_slot_at(i) for i in range(got.count))
        remaining -= got.count
        # a sender waits for its slots before reserving more, as the channel actor does
        time.sleep(max(0.0, got.slot_at(got.count - 1) - time.monotonic()))


def test_concurrent_reservers_get_distinct_evenly_spaced_slots(migrated_db: str) -> None:
    # Given a channel limited to 50/s and four threads each wanting 25 sends
    limiter = GlobalRateLimiter("sms", Rate(50))
    slots: list[float] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=_reserve_all, args=(limiter, 25, slots, lock)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then the 100 slots the database handed out are 20 ms apart, never closer, and span 99 intervals
    slots.sort()
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert len(slots) == 100
    assert min(gaps) >= 0.02 * 0.9
    assert slots[-1] - slots[0] == pytest.approx(99 * 0.02, rel=0.05)


def test_reservations_never_reach_past_the_horizon(migrated_db: str) -> None:
    limiter = GlobalRateLimiter("call", Rate(1))  # one per second: horizon of one interval
    with db_session():
        first = limiter.try_reserve(10)
        second = limiter.try_reserve(1)
    assert isinstance(first, Reservation) and first.count == 1
    # The next slot is a second away, beyond the horizon: come back later, ~just under 1 s
    assert isinstance(second, float) and 0.3 < second <= 1.0


def test_a_penalty_holds_the_channel_for_its_duration(migrated_db: str) -> None:
    limiter = GlobalRateLimiter("email", Rate(10))
    with db_session():
        limiter.ensure_row()
        limiter.penalize(5.0)
        wait = limiter.try_reserve(1)
    assert isinstance(wait, float) and wait > 4.0


def test_an_unlimited_channel_needs_no_reservation() -> None:
    assert GlobalRateLimiter("push", Rate(None)).unlimited
