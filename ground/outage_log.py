"""Logging a failure that repeats — a broker or database away — once per outage, not once per attempt.

A loop that retries every second, with a dozen Dramatiq consumers and pika each logging every
reconnect, turned a 13 s broker outage into 2,379 lines and 197 tracebacks, and hid everything
else. Instead, each failing thing says when it starts failing (one line), how it goes while it
lasts (one summary per ``SUMMARY_EVERY_S``), and when it works again (one line):

* ``OutageLog`` for our own loops, which know when an attempt succeeds;
* ``CollapseRepeats``, a handler filter for third-party loggers that only ever log failures
  (pika's connection attempts, Dramatiq's consumer restarts): a burst ends after a quiet spell.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

SUMMARY_EVERY_S = 60.0
# Third-party burst: over once nothing was logged for this long (a reconnect loop retries in seconds).
QUIET_S = 30.0

Clock = Callable[[], float]


def is_connection_error(exc: BaseException | None) -> bool:
    """True for a server that cannot be reached (its traceback tells nothing), along the chain of
    causes; False for anything else, which keeps its traceback."""
    import dramatiq.errors
    import peewee
    import pika.exceptions

    # Dramatiq 2 renamed its ConnectionError (the old name warns); 1.x has only the old one.
    broker_error = getattr(dramatiq.errors, "BrokerConnectionError", None) or dramatiq.errors.ConnectionError
    kinds = (OSError, peewee.OperationalError, peewee.InterfaceError, pika.exceptions.AMQPConnectionError,
             pika.exceptions.StreamLostError, broker_error)
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kinds):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class OutageLog:
    """One line when ``what`` starts failing, a summary every ``summary_every_s`` while it keeps
    failing, one line when it works again. Thread-safe; ``succeeded()`` is cheap when all is well."""

    def __init__(self, logger: logging.Logger, what: str, summary_every_s: float = SUMMARY_EVERY_S,
                 clock: Clock = time.monotonic) -> None:
        self.logger = logger
        self.what = what
        self.summary_every_s = summary_every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # start of the current outage
        self._failures = 0  # in the whole outage
        self._since_summary = 0
        self._last_summary = 0.0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException, level: int = logging.WARNING, expected: bool = False) -> None:
        """An attempt failed. The first failure of an outage is logged (with its traceback unless
        the server simply cannot be reached, or the failure is ``expected``, such as load being
        shed); later ones are counted into the summaries."""
        now = self.clock()
        with self._lock:
            self._failures += 1
            self._since_summary += 1
            if self._since is None:
                self._since, self._last_summary, self._since_summary = now, now, 0
                first, summary = True, None
            elif now - self._last_summary >= self.summary_every_s:
                first, summary = False, (now - self._since, self._since_summary)
                self._last_summary, self._since_summary = now, 0
            else:
                return
        if first:
            self.logger.log(level, "%s failed: %s (logged once until it works again, with a summary every %.0f s)",
                            self.what, _describe(exc), self.summary_every_s,
                            exc_info=None if expected or is_connection_error(exc) else exc)
        elif summary is not None:
            self.logger.log(level, "%s still failing after %.0f s: %d more failure(s) in the last %.0f s; latest: %s",
                            self.what, summary[0], summary[1], self.summary_every_s, _describe(exc))

    def succeeded(self) -> None:
        """An attempt worked: if an outage was running, say it is over."""
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            lasted, failures = self.clock() - self._since, self._failures
            self._since, self._failures, self._since_summary = None, 0, 0
        self.logger.warning("%s recovered after %.0f s (%d failed attempt(s))", self.what, lasted, failures)


@dataclass
class _Burst:
    started: float
    last: float
    last_summary: float
    suppressed: int = 0


@dataclass(frozen=True)
class Family:
    """Records collapsed together: a logger-name prefix, the level from which it applies, and
    whether only records carrying a connection error count (a bug must still be told each time)."""

    prefix: str
    level: int = logging.INFO
    connection_errors_only: bool = False

    def matches(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix) or record.levelno < self.level:
            return False
        return not self.connection_errors_only or (
            record.exc_info is not None and is_connection_error(record.exc_info[1]))


# Loggers that log each failed attempt of a retry loop, and never that it worked again. A
# channel's WARNINGs (a queue probed before it is declared, one per queue at start) are a burst of
# their own, apart from pika's connection ERRORs; a consumer's INFO "restarting in 3 s" is part of
# an outage; an actor failing on a lost database or broker connection is, once per message and
# retry, but an actor's other failures are each told in full. The first matching family counts.
NOISY_LOGGERS: tuple[Family, ...] = (
    Family("pika.channel", logging.WARNING),
    Family("pika", logging.ERROR),
    Family("dramatiq.worker.ConsumerThread"),
    Family("dramatiq.brokers.rabbitmq", logging.WARNING),
    Family("dramatiq.worker.WorkerThread", logging.ERROR, connection_errors_only=True),
    Family("dramatiq.middleware.retries"),
)


class CollapseRepeats(logging.Filter):
    """For records of the ``families``: the first of a burst passes (its first line only, without
    a connection error's traceback), the rest are counted, and a summary passes every
    ``summary_every_s`` while the burst lasts. A burst ends after ``quiet_s`` without records."""

    def __init__(self, families: tuple[Family, ...] = NOISY_LOGGERS, summary_every_s: float = SUMMARY_EVERY_S,
                 quiet_s: float = QUIET_S, clock: Clock = time.monotonic) -> None:
        super().__init__()
        self.families = families
        self.summary_every_s = summary_every_s
        self.quiet_s = quiet_s
        self.clock = clock
        self._lock = threading.Lock()
        self._bursts: dict[str, _Burst] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        family = next((f.prefix for f in self.families if f.matches(record)), None)
        if family is None:
            return True
        now = self.clock()
        with self._lock:
            burst = self._bursts.get(family)
            if burst is None or now - burst.last >= self.quiet_s:
                self._bursts[family] = _Burst(started=now, last=now, last_summary=now)
                summary = None
            else:
                burst.last = now
                if now - burst.last_summary < self.summary_every_s:
                    burst.suppressed += 1
                    return False
                summary = (now - burst.started, burst.suppressed)
                burst.last_summary, burst.suppressed = now, 0
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_connection_error(exc):
            record.exc_info, record.exc_text = None, None
        # pika puts a whole stack inside some messages ("Caller's stack: ..."): the first line says it
        lines = record.getMessage().strip().splitlines()
        message = lines[0] if lines else ""
        if summary is None:
            record.msg = f"{message} (repeats of {family} lines are summarised every {self.summary_every_s:.0f} s)"
        else:
            record.msg = (f"{message} ({summary[1]} similar {family} line(s) in the last "
                          f"{self.summary_every_s:.0f} s; repeating for {summary[0]:.0f} s)")
        record.args = ()
        return True
