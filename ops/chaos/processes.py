"""The daemon's own processes under load: SIGTERM, kill -9 (daemon and workers), two daemons on one
database. N leads x an sms + email campaign, provider at 200 ms, 2 worker processes per daemon.

SIGTERM and kill -9 hit once 30% of the sends went out; a new daemon starts at once (the fault's
end), and must deliver the rest, with default settings. After a kill -9 the killed workers' claims
are offered again once they miss 3 heartbeats (``HEARTBEAT_INTERVAL_S``, 5 s), at the reconciler's
next pass (every 15 s): the window is that plus 30 s (``--quick``: beats every 1 s, passes every
5 s). The calls the provider accepted but whose result was not yet written at the kill ("on the
wire", measured as the provider's count minus the database's once the calls in flight have
finished) bound the duplicates; results the dead workers had journaled are written at the next
start instead of being sent again.
"""

from __future__ import annotations

import signal
import time

from ops.bench.common import log
from ops.chaos.rig import RECOVERY_TARGET_S, Rig, Size, Where
from ops.chaos.verdict import Outcome

DEAD_WORKER_S = 3 * 5 + 15  # 3 missed heartbeats, then the reconciler's next pass
# --quick: beats every second and a reconciler pass every 5 s, so the dead workers' claims come back
# in seconds rather than half a minute; the same mechanism, faster.
QUICK_DEAD_WORKER = {"HEARTBEAT_INTERVAL_S": "1", "RECONCILE_AFTER_S": "5"}
QUICK_DEAD_WORKER_S = 3 * 1 + 5


def sigterm(size: Size, where: Where) -> Outcome:
    with Rig(where, size) as rig:
        rig.enrol_all(rig.seed_campaign())  # enrolled first: due at once when the daemon starts
        first = rig.start_daemon("first")
        rig.wait_fraction(0.3)
        log(f"sigterm: {rig.deliveries()[0]}/{size.expected} delivered; SIGTERM")
        signalled = time.monotonic()
        first.signal(signal.SIGTERM)
        assert first.process is not None
        exit_code = first.process.wait(timeout=120)
        exit_s = time.monotonic() - signalled
        at_exit = rig.deliveries()[0]
        statuses = rig.statuses()
        ended = time.monotonic()
        second = rig.start_daemon("second")
        ready_at = time.monotonic()
        done_at = rig.wait_delivered(size.expected, ended + RECOVERY_TARGET_S)
        time.sleep(1.0)
        delivered, duplicates = rig.deliveries()
        second_exit = second.stop(timeout_s=90)
    outcome = Outcome(
        name="sigterm", fault="SIGTERM under load, then a new daemon", expected=size.expected,
        delivered=delivered, duplicates=duplicates, ready_after_s=ready_at - ended,
        recovered_after_s=None if done_at is None else done_at - ended, window_s=RECOVERY_TARGET_S,
        figures={"exit_code": exit_code, "exit_s": round(exit_s, 1), "delivered_at_exit": at_exit,
                 "statuses_at_exit": dict(statuses), "second_exit_code": second_exit})
    outcome.checks["exit 0 after SIGTERM"] = exit_code == 0
    outcome.checks["nothing left claimed at exit (no `sending`)"] = statuses.get("sending", 0) == 0
    outcome.notes.append(f"exit {exit_code} {exit_s:.1f} s after SIGTERM, {at_exit} delivered by then")
    return outcome


def kill9(size: Size, where: Where) -> Outcome:
    settings = QUICK_DEAD_WORKER if size.quick else {}
    rig = Rig(where, size)
    rig.settings.update(settings)
    with rig:
        rig.enrol_all(rig.seed_campaign())
        first = rig.start_daemon("first")
        rig.wait_fraction(0.3)
        first.kill()
        ended = time.monotonic()
        statuses = rig.statuses()  # what the database holds at the kill
        # The provider finishes the calls that were on the wire (200 ms); then every delivery the
        # database does not show as sent was accepted by the provider with its result unwritten.
        time.sleep(2 * size.latency_ms / 1000 + 0.5)
        accepted, _ = rig.deliveries()
        on_wire = max(0, accepted - statuses.get("sent", 0))
        log(f"kill9: killed with {statuses.get('sent', 0)} sent in the database, {on_wire} accepted but "
            f"unwritten, {statuses.get('sending', 0)} claimed")
        second = rig.start_daemon("second")
        ready_at = time.monotonic()
        window = (QUICK_DEAD_WORKER_S if size.quick else DEAD_WORKER_S) + RECOVERY_TARGET_S
        done_at = rig.wait_delivered(size.expected, ended + window)
        time.sleep(1.0)
        delivered, duplicates = rig.deliveries()
        exit_code = second.stop(timeout_s=90)
    outcome = Outcome(
        name="kill9", fault="kill -9 of the daemon and its workers under load, then a new daemon",
        expected=size.expected, delivered=delivered, duplicates=duplicates, duplicate_bound=on_wire,
        ready_after_s=ready_at - ended, recovered_after_s=None if done_at is None else done_at - ended,
        window_s=window,
        figures={"calls_on_the_wire_at_kill": on_wire, "claimed_at_kill": statuses.get("sending", 0),
                 "sent_at_kill": statuses.get("sent", 0),
                 "second_exit_code": exit_code})
    outcome.notes.append(f"{on_wire} calls accepted by the provider with their result unwritten at the kill, "
                         f"{statuses.get('sending', 0)} sends claimed; the killed workers' claims are offered again once "
                         "they miss 3 heartbeats, at the reconciler's next pass ("
                         + (", ".join(f"{k}={v}" for k, v in settings.items()) or "default settings") + ")")
    return outcome


def two_daemons(size: Size, where: Where) -> Outcome:
    from db.models import Send

    with Rig(where, size) as rig:
        campaign = rig.seed_campaign()
        rig.start_daemon("a")
        rig.start_daemon("b")
        started = time.monotonic()
        rig.enrol_all(campaign)
        window = 2 * size.leads / size.rate_per_s + RECOVERY_TARGET_S
        done_at = rig.wait_delivered(size.expected, started + window)
        time.sleep(1.0)
        delivered, duplicates = rig.deliveries()

        def sms_rate() -> float:
            times = sorted(s.finished_at for s in Send.select(Send.finished_at)
                           .where(Send.channel == "sms", Send.status == "sent", Send.finished_at.is_null(False))
                           if s.finished_at is not None)
            span = (times[-1] - times[0]).total_seconds() if len(times) > 1 else 0
            return (len(times) - 1) / span if span else 0.0

        rate = rig.query(sms_rate)
        exits = [d.stop(timeout_s=90) for d in rig.daemons]
    outcome = Outcome(
        name="two_daemons", fault=f"two daemons ({size.processes} workers each) on one database", expected=size.expected,
        delivered=delivered, duplicates=duplicates, recovered_after_s=None if done_at is None else 0.0,
        window_s=window, figures={"sms_per_s": round(rate, 2), "configured_per_s": size.rate_per_s,
                                  "exit_codes": exits})
    # a limit that were per daemon would double the rate; 20% leaves room for a short run's jitter
    outcome.checks[f"one sms rate across both daemons (<= {size.rate_per_s}/s + 20%)"] = rate <= size.rate_per_s * 1.2
    outcome.checks["both exit 0"] = exits == [0, 0]
    outcome.notes.append(f"sms at {rate:.1f}/s with both daemons sending, configured {size.rate_per_s}/s")
    return outcome
