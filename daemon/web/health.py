"""Readiness probes: can this process reach its database and its broker right now?

Each probe opens what it checks (a pooled database connection, a fresh AMQP connection) with a
short timeout, so an outage is seen on the next probe and a recovery too, with no restart.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import peewee
import pika
import pika.exceptions

from db.database import database, db_session
from ground.settings import Settings

PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str
    latency_ms: float

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail, "latency_ms": round(self.latency_ms, 1)}


def _timed(check) -> Probe:
    started = time.perf_counter()
    try:
        detail = check()
        ok = True
    except (peewee.PeeweeException, pika.exceptions.AMQPError, OSError) as exc:
        # Name the kind of failure only: driver messages can carry hosts and user names.
        ok, detail = False, f"unreachable ({type(exc).__name__})"
    return Probe(ok, detail, (time.perf_counter() - started) * 1000)


def probe_database() -> Probe:
    def check() -> str:
        with db_session():
            database.execute_sql("SELECT 1").fetchone()
        return "reachable"
    return _timed(check)


def broker_parameters(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> list[pika.URLParameters]:
    """Connection parameters for each node of ``BROKER_URL`` (nodes separated by ';', as Dramatiq
    reads it), one attempt each, bounded in time: pika tries them in order."""
    nodes = []
    for url in settings.broker_url.split(";"):
        params = pika.URLParameters(url.strip())
        params.socket_timeout = params.stack_timeout = params.blocked_connection_timeout = timeout_s
        params.connection_attempts = 1
        nodes.append(params)
    return nodes


def probe_broker(settings: Settings) -> Probe:
    if settings.is_memory_broker:
        return Probe(True, "in-process broker", 0.0)

    def check() -> str:
        pika.BlockingConnection(broker_parameters(settings)).close()
        return "reachable"
    return _timed(check)


async def readiness(settings: Settings) -> dict[str, Probe]:
    """Both probes, concurrently, each in a thread (they block), each bounded in time."""
    async def bounded(fn, *args) -> Probe:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), PROBE_TIMEOUT_S + 1)
        except TimeoutError:
            return Probe(False, "timed out", (PROBE_TIMEOUT_S + 1) * 1000)
    db, broker = await asyncio.gather(bounded(probe_database), bounded(probe_broker, settings))
    return {"database": db, "broker": broker}
