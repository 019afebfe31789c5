"""``ReaderWrites``: the reader routes' database writes outside the group commit (one-click
unsubscribe), bounded, and sized beside the group commit whose connections it leaves alone."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, TypeVar

import peewee
from playhouse.pool import MaxConnectionsExceeded

from daemon.web.group_commit import Overloaded
from ground.settings import Settings

T = TypeVar("T")


class ReaderWrites:
    """The database writes of reader routes outside the group commit (one-click unsubscribe),
    bounded so that a locked table cannot take the pool, the threads or the reader's time:

    * at most ``slots`` run at once — on PostgreSQL what the pool has left beside the group
      commit's connections and one for link lookups and health (at least 1); on SQLite 1 (one
      writer) — and the others wait for a slot on the event loop, holding nothing;
    * a reader waits at most ``max_wait_s`` in all: for a slot, then for the write, which gives up
      on a lock within what is left (SQLite ``busy_timeout``, PostgreSQL ``lock_timeout`` and
      ``statement_timeout``);
    * past that, or when the database refuses, ``Overloaded`` (503 + ``Retry-After``): a write
      still under way may complete after that answer — an unsubscribe is idempotent, so the
      reader's retry is harmless either way.
    """

    GRACE_S = 1.0  # beyond the budget, for a write that is ending on its own lock timeout
    MIN_LOCK_WAIT_MS = 50

    def __init__(self, settings: Settings, group_commit: int) -> None:
        """``group_commit``: the connections the group commit may hold at once."""
        postgres = settings.database_url.startswith("postgres")
        slots = max(1, settings.db_pool_size - group_commit - 1) if postgres else 1
        self.slots = slots
        self.max_wait_s = settings.ingest_max_wait_s
        self.retry_after_s = max(1, math.ceil(settings.ingest_max_wait_s))
        self._slots = asyncio.Semaphore(slots)

    async def run(self, fn: Callable[[str, int], T], arg: str) -> T:
        """``fn(arg, lock_timeout_ms)`` in a thread, within the bounds above."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise Overloaded("too many writes waiting for the database", self.retry_after_s) from None
        lock_wait_ms = max(self.MIN_LOCK_WAIT_MS, int((deadline - loop.time()) * 1000))
        work = asyncio.ensure_future(asyncio.to_thread(fn, arg, lock_wait_ms))
        # The slot is the thread's: it is freed when the write ends, even after the reader got his answer.
        work.add_done_callback(self._settled)
        try:
            async with asyncio.timeout_at(deadline + self.GRACE_S):
                return await asyncio.shield(work)
        except TimeoutError:
            raise Overloaded("waited too long for the database", self.retry_after_s) from None
        except (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded) as exc:
            # a lock or statement timeout, a database away, a pool exhausted: try again shortly
            raise Overloaded(f"the database could not take it: {type(exc).__name__}", self.retry_after_s) from exc

    def _settled(self, work: asyncio.Future[Any]) -> None:
        self._slots.release()
        if not work.cancelled():
            work.exception()  # seen here: a late failure after a 503 is not "never retrieved"
