"""Database leases: who runs a periodic job now, until when — the same on every process and host.

Taking a lease is ONE atomic statement: insert the row, or take it over only if it has expired
(``INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE expires_at < now RETURNING holder``) — even
its last holder waits for that, since a periodic job holds its lease until its next due time. The database serialises those statements (a row lock on PostgreSQL, the
single writer on SQLite), so two processes can never both hold a lease. A holder renews while it
works; a holder that dies simply stops renewing, and the lease is free once its TTL has passed.
Times are the hosts' UTC clocks: keep them in sync (NTP), and keep TTLs well above any skew.
"""

from __future__ import annotations

import datetime as dt

from db.database import rows
from db.models import Lease, utcnow


def try_acquire(name: str, holder: str, ttl_s: float, now: dt.datetime | None = None) -> bool:
    """Take the lease for ``ttl_s`` seconds if it is free or expired."""
    now = now or utcnow()
    expires = now + dt.timedelta(seconds=ttl_s)
    taken = rows(Lease.insert(name=name, holder=holder, expires_at=expires, acquired_at=now, renewed_at=now)
                 .on_conflict(conflict_target=[Lease.name],
                              update={Lease.holder: holder, Lease.expires_at: expires, Lease.acquired_at: now,
                                      Lease.renewed_at: now},
                              where=(Lease.expires_at < now))
                 .returning(Lease.holder))
    return bool(taken) and taken[0][0] == holder


def renew(name: str, holder: str, ttl_s: float, now: dt.datetime | None = None) -> bool:
    """Extend our lease; False when it is no longer ours (it expired and someone took it)."""
    now = now or utcnow()
    return bool(Lease.update(expires_at=now + dt.timedelta(seconds=ttl_s), renewed_at=now)
                .where(Lease.name == name, Lease.holder == holder).execute())


def hold_until(name: str, holder: str, until: dt.datetime) -> bool:
    """Keep the lease (ours) until ``until``: a periodic job holds it to its next due time, so the
    tick it just ran cannot run again elsewhere."""
    return bool(Lease.update(expires_at=until).where(Lease.name == name, Lease.holder == holder).execute())


def holder_of(name: str, now: dt.datetime | None = None) -> str | None:
    lease = Lease.get_or_none(Lease.name == name)
    if lease is None or lease.expires_at is None or lease.expires_at < (now or utcnow()):
        return None
    return str(lease.holder)
