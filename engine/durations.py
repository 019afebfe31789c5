"""Durations as people write them in campaign files: ``0s``, ``90s``, ``15m``, ``2h``, ``1d12h``, ``1w``."""

from __future__ import annotations

import re

from ground.errors import RetentiondError

UNITS_S = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)\s*([wdhms])")
_WHOLE = re.compile(r"(?:\d+\s*[wdhms]\s*)+")


class DurationError(RetentiondError, ValueError):
    """A duration that does not parse; the message says what was expected."""


def parse_duration(text: object) -> int:
    """Seconds in ``text``: whole numbers with a unit (w, d, h, m, s), largest unit first.

    A bare number is refused: ``delay: 90`` could mean seconds or minutes, and a campaign that
    waits 90 days instead of 90 minutes is worse than an error at apply time.
    """
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise DurationError(f"expected a duration such as '90s', '15m', '1d12h', got {text!r}")
    if isinstance(text, int):
        raise DurationError(f"{text} has no unit; write '{text}s', '{text}m', '{text}h' or '{text}d'")
    compact = text.strip().lower()
    if not compact or not _WHOLE.fullmatch(compact):
        raise DurationError(f"expected a duration such as '90s', '15m', '1d12h', got {text!r}")
    seen: list[str] = []
    total = 0
    for amount, unit in _PART.findall(compact):
        if unit in seen or (seen and list(UNITS_S).index(unit) < list(UNITS_S).index(seen[-1])):
            raise DurationError(f"{text!r}: units must appear once each, largest first (e.g. '1d12h')")
        seen.append(unit)
        total += int(amount) * UNITS_S[unit]
    return total


def format_duration(seconds: int) -> str:
    """The shortest text that parses back to ``seconds`` (``0s`` for zero)."""
    if seconds < 0:
        raise DurationError(f"a duration cannot be negative, got {seconds}")
    parts = []
    for unit, size in UNITS_S.items():
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"
