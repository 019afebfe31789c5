"""Quiet hours in the contact's own timezone, DST included: when is the next allowed minute?"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

UTC = dt.UTC


@functools.lru_cache(maxsize=1024)
def zone(name: str | None, default: str) -> zoneinfo.ZoneInfo:
    """The contact's zone; an unknown or missing name falls back to the default zone."""
    try:
        return zoneinfo.ZoneInfo(name or default)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo(default)


def in_window(local: dt.time, start: dt.time, end: dt.time) -> bool:
    if start <= end:  # e.g. 12:00-14:00
        return start <= local < end
    return local >= start or local < end  # across midnight, e.g. 21:00-08:00


def next_allowed(now_utc: dt.datetime, tz: zoneinfo.ZoneInfo, start: dt.time, end: dt.time) -> dt.datetime | None:
    """``None`` when ``now`` is outside the quiet window; else the first UTC minute after it.

    The window's end is a wall-clock time in the contact's zone, so on the night the clocks
    change, 08:00 is still 08:00 local (a different UTC hour than the night before). An end that
    falls in a DST gap (it does not exist that night) resolves to the first minute after the gap.
    """
    aware_now = now_utc.replace(tzinfo=UTC) if now_utc.tzinfo is None else now_utc
    local = aware_now.astimezone(tz)
    if not in_window(local.time().replace(tzinfo=None), start, end):
        return None
    day = local.date()
    if start > end and local.time().replace(tzinfo=None) >= start:
        day += dt.timedelta(days=1)  # the window ends tomorrow morning
    wall = dt.datetime.combine(day, end)
    allowed = wall.replace(tzinfo=tz).astimezone(UTC)
    # A wall time inside a spring-forward gap does not exist that night (it round-trips to
    # another wall time): walk minute by minute from just before the gap to the first real
    # minute outside the window (a gap is at most a couple of hours: a few dozen steps).
    if allowed.astimezone(tz).replace(tzinfo=None) != wall:
        allowed = wall.replace(tzinfo=tz, fold=1).astimezone(UTC).replace(second=0, microsecond=0)
        while in_window(allowed.astimezone(tz).time().replace(tzinfo=None), start, end):
            allowed += dt.timedelta(minutes=1)
    return allowed.replace(tzinfo=None)
