"""Which worker processes are alive: each has an instance id, writes it on its claims, and renews a
heartbeat row every ``HEARTBEAT_INTERVAL_S``.

The reconciler re-offers a ``sending`` send only when its claimant stopped beating (see
engine/reconciler.py), so a worker that merely waits for a slow or absent database — and still
holds results it will write — never sees its sends sent a second time, while the sends of a
worker killed outright are re-offered within seconds instead of ``CLAIM_TIMEOUT_S``.

The instance id is ``host:pid:random``: the host and pid tell an operator which process it is,
the random part keeps a reused pid (a container restarting as pid 7) from inheriting a dead
worker's claims. Each process also owns its journal (engine/journal.py) under the same name.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import threading
from dataclasses import dataclass

from peewee import fn

from db.database import rows
from db.models import Send, WorkerHeartbeat
from engine.journal import Journal
from ground.send_states import SendStatus

_STALE_BEATS = 3  # missed heartbeats before a worker counts as dead


def stale_after_s(interval_s: float) -> float:
    return _STALE_BEATS * interval_s


def new_instance_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass
class ThisProcess:
    """The identity this process claims sends under, and the journal of its unwritten results."""

    instance: str
    journal: Journal


_current: ThisProcess | None = None
_lock = threading.Lock()


def install(journal_dir: str | None) -> ThisProcess:
    """Give this process its identity and journal (a worker process at start)."""
    global _current
    with _lock:
        instance = new_instance_id()
        _current = ThisProcess(instance, Journal(journal_dir, instance))
        return _current


def current() -> ThisProcess:
    """This process's identity; without ``install`` (tests, tools), one with a memory-only journal."""
    global _current
    with _lock:
        if _current is None:
            instance = new_instance_id()
            _current = ThisProcess(instance, Journal(None, instance))
        return _current


def beat(instance: str, now: dt.datetime, alive_since: dt.datetime) -> None:
    """Say this worker is alive (one upsert). ``alive_since``: when its current run of successful
    beats began (a failed beat, a database outage, starts a new run)."""
    (WorkerHeartbeat.insert(instance=instance, started_at=now, beat_at=now, alive_since=alive_since)
     .on_conflict(conflict_target=[WorkerHeartbeat.instance],
                  update={WorkerHeartbeat.beat_at: now, WorkerHeartbeat.alive_since: alive_since})
     .execute())


def dead_claimants(now: dt.datetime, interval_s: float, outer_bound_s: float) -> list[str]:
    """The claimants of ``sending`` sends that are gone: another worker has beaten without a break
    for more than 3 intervals since the claimant's last sign of life (its last beat, or its latest
    claim when it never beat). A database outage breaks every run of beats, so after one, nobody
    looks dead until the live ones had 3 intervals to beat again; a worker killed outright is
    found 3 intervals after its last beat, as long as one other worker lives (the supervisor
    restarts a dead one at once). With no other worker beating, a claimant silent for
    ``outer_bound_s`` (CLAIM_TIMEOUT_S) counts as gone too."""
    stale = dt.timedelta(seconds=stale_after_s(interval_s))
    beats = {i: (b, a) for i, b, a in rows(WorkerHeartbeat.select(
        WorkerHeartbeat.instance, WorkerHeartbeat.beat_at, WorkerHeartbeat.alive_since))}
    claims = rows(Send.select(Send.claimed_by, fn.MAX(Send.claimed_at))
                  .where(Send.status == SendStatus.SENDING, Send.claimed_by.is_null(False)).group_by(Send.claimed_by))
    dead = []
    for claimant, last_claim in claims:
        last_seen = beats[claimant][0] if claimant in beats else _as_dt(last_claim)
        if last_seen is None:
            continue
        if now - last_seen > dt.timedelta(seconds=outer_bound_s) or any(
                other != claimant and beat_at - max(alive_since, last_seen) > stale
                for other, (beat_at, alive_since) in beats.items()):
            dead.append(claimant)
    return dead


def retire(instance: str) -> None:
    """A worker stopping cleanly: its row goes (its claims, if any were left, become re-offerable)."""
    WorkerHeartbeat.delete().where(WorkerHeartbeat.instance == instance).execute()


def forget_dead(now: dt.datetime, older_than_s: float) -> int:
    """Heartbeat rows of workers long gone and holding no claim (one row per worker start)."""
    holding = Send.select(Send.claimed_by).where(Send.status == SendStatus.SENDING, Send.claimed_by.is_null(False))
    return int(WorkerHeartbeat.delete()
               .where(WorkerHeartbeat.beat_at < now - dt.timedelta(seconds=older_than_s),
                      WorkerHeartbeat.instance.not_in(holding))
               .execute())


def _as_dt(value: object) -> dt.datetime | None:
    """SQLite hands an aggregate's datetime back as text."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))
