"""A server goes away mid-dispatch and comes back: RabbitMQ cut off by the proxy, PostgreSQL cut off
by the proxy, the SQLite database's filesystem full. N leads x an sms + email campaign, provider
at 200 ms, 2 worker processes, default settings (no shortened timeouts).

The fault starts once 10% of the sends went out, lasts ``outage_s``; then the scenario waits up to
30 s (the target) for every send to be delivered, and reads the duplicates a moment later.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ops.bench.common import log
from ops.chaos.rig import RECOVERY_TARGET_S, Rig, Size, Where, hold
from ops.chaos.verdict import Outcome
from ops.harness.small_fs import fill, small_filesystem

SETTLE_S = 0.5  # after the last delivery: time for a late second call to show up in the count


def _dispatch_through(rig: Rig, name: str, fault: str, cut: Callable[[], None], restore: Callable[[], None]) -> Outcome:
    size = rig.size
    campaign = rig.seed_campaign()
    daemon = rig.start_daemon()
    rig.enrol_all(campaign)
    rig.wait_fraction(0.1)
    log(f"{name}: {rig.deliveries()[0]}/{size.expected} delivered; fault on for {size.outage_s:g}s")
    readiness: set[int] = set()
    cut()
    hold(size.outage_s, lambda: readiness.add(daemon.get("/health/ready")[0]))
    restore()
    ended = time.monotonic()
    delivered_at_end, floor_s = rig.deliveries()[0], rig.pace_floor_s()
    log(f"{name}: fault off; {delivered_at_end}/{size.expected} delivered")
    ready_at = rig.wait_ready(daemon, ended + RECOVERY_TARGET_S)
    done_at = rig.wait_delivered(size.expected, ended + RECOVERY_TARGET_S)
    time.sleep(SETTLE_S)
    delivered, duplicates = rig.deliveries()
    statuses = rig.statuses()
    stopped = time.monotonic()
    exit_code = daemon.stop(timeout_s=90)
    outcome = Outcome(
        name=name, fault=fault, expected=size.expected, delivered=delivered, duplicates=duplicates,
        ready_after_s=None if ready_at is None else ready_at - ended,
        recovered_after_s=None if done_at is None else max(0.0, done_at - ended), window_s=RECOVERY_TARGET_S,
        figures={"outage_s": size.outage_s, "delivered_when_fault_ended": delivered_at_end,
                 "rate_floor_after_fault_s": round(floor_s, 1),
                 "readiness_seen_during_fault": sorted(readiness), "send_statuses": dict(statuses),
                 "exit_code": exit_code, "stop_s": round(time.monotonic() - stopped, 1)})
    outcome.checks["the daemon stops with exit 0 afterwards"] = exit_code == 0
    outcome.notes.append(f"{delivered_at_end} delivered when the fault ended; the rest needed at least "
                         f"{floor_s:.1f} s at the configured rates ({size.rate_per_s}/s per channel)")
    if statuses.get("sending"):
        outcome.notes.append(f"{statuses['sending']} send(s) still `sending` at the end (claimed, result not "
                             "written)")
    return outcome


def broker_outage(size: Size, where: Where) -> Outcome:
    with Rig(where, size, proxy_broker=True) as rig:
        proxy = rig.broker_proxy
        assert proxy is not None
        return _dispatch_through(rig, "broker_outage", f"RabbitMQ cut off for {size.outage_s:g} s (proxy)",
                                 proxy.cut, proxy.restore)


def db_outage_sends(size: Size, where: Where) -> Outcome:
    with Rig(where, size, proxy_db=True) as rig:
        proxy = rig.db_proxy
        assert proxy is not None
        return _dispatch_through(rig, "db_outage_sends", f"PostgreSQL cut off for {size.outage_s:g} s during sends "
                                 "(proxy)", proxy.cut, proxy.restore)


def disk_full(size: Size, where: Where) -> Outcome:
    """SQLite on a small filesystem of its own, filled to the last byte mid-run, then freed."""
    with small_filesystem(where.workdir / "small", size_mib=64) as mount:
        filler = mount / "filler"

        def fill_disk() -> None:
            fill(filler)

        def free_disk() -> None:
            os.unlink(filler)

        with Rig(where, size, db="sqlite", db_url=f"sqlite:///{mount / 'chaos.db'}") as rig:
            outcome = _dispatch_through(rig, "disk_full", f"SQLite's filesystem full for {size.outage_s:g} s",
                                        fill_disk, free_disk)
            return outcome
