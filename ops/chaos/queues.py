"""An operator deletes or purges the sms queue mid-run (``rabbitmqctl delete_queue`` /
``purge_queue``), with its backlog in it.

The messages are gone; the sends stay ``queued`` in the database (the outbox), and the reconciler
offers them again after ``RECONCILE_AFTER_S``. That setting is shortened here to ``RECONCILE_S``
(10 s, 5 s in a quick run; default 300 s, and the reconciler then runs every 15 s) so that the recovery is measured in a
short run; the window is the time the rest needs at the rate limits, plus that twice (the
reconciler's period is as long), plus 30 s.
"""

from __future__ import annotations

import time

from ops.bench.common import log
from ops.chaos.rig import RECOVERY_TARGET_S, Rig, Size, Where, rabbitmqctl
from ops.chaos.verdict import Outcome

RECONCILE_S, QUICK_RECONCILE_S = 10, 5
# Dramatiq prefetches 2 messages per worker thread (16 per process here), about as many as a short
# run's whole sms backlog (a message per second of the rate): with 1 (Dramatiq's own environment
# knob, read by every worker process) the queue holds ready messages for the operator to remove.
PREFETCH = 1
QUEUE = "retentiond.sms"


def _queue_fault(size: Size, where: Where, action: str) -> Outcome:
    name = f"queue_{action}"
    reconcile_s = QUICK_RECONCILE_S if size.quick else RECONCILE_S
    with Rig(where, size, RECONCILE_AFTER_S=str(reconcile_s)) as rig:
        campaign = rig.seed_campaign()
        daemon = rig.start_daemon(environ={"dramatiq_queue_prefetch": str(PREFETCH)})
        rig.enrol_all(campaign)
        rig.wait_fraction(0.1)
        before = rabbitmqctl("list_queues", "-p", rig.vhost, "name", "messages_ready", "messages_unacknowledged").stdout
        depth = next((line.split()[1:] for line in before.splitlines() if line.split()[:1] == [QUEUE]), ["?", "?"])
        done = rabbitmqctl(f"{action}_queue", "-p", rig.vhost, QUEUE)
        ended = time.monotonic()
        floor_s = rig.pace_floor_s()
        log(f"{name}: {action}_queue {QUEUE} -> exit {done.returncode} {done.stdout.strip()} {done.stderr.strip()}")
        window = floor_s + reconcile_s + reconcile_s + RECOVERY_TARGET_S
        done_at = rig.wait_delivered(size.expected, ended + window)
        time.sleep(1.0)
        delivered, duplicates = rig.deliveries()
        listed = rabbitmqctl("list_queues", "-p", rig.vhost, "name").stdout.split()
        statuses = rig.statuses()
        ready = daemon.get("/health/ready")[0]
        exit_code = daemon.stop(timeout_s=90)
    outcome = Outcome(
        name=name, fault=f"`rabbitmqctl {action}_queue {QUEUE}` mid-run", expected=size.expected, delivered=delivered,
        duplicates=duplicates, recovered_after_s=None if done_at is None else done_at - ended, window_s=window,
        figures={"rabbitmqctl_exit": done.returncode, "queue_exists_afterwards": QUEUE in listed,
                 "send_statuses": dict(statuses), "ready_at_end": ready, "exit_code": exit_code,
                 "reconcile_after_s": reconcile_s,
                 "messages_ready_before": depth[0], "messages_unacked_before": depth[1],
                 "rate_per_s": size.rate_per_s, "prefetch": PREFETCH, "rate_floor_after_fault_s": round(floor_s, 1)})
    outcome.checks[f"rabbitmqctl {action}_queue succeeded"] = done.returncode == 0
    outcome.checks["the daemon stops with exit 0 afterwards"] = exit_code == 0
    outcome.notes.append(f"{QUEUE} held {depth[0]} ready and {depth[1]} unacknowledged (prefetched) messages "
                         f"when it was {action}d (the rest needed at least {floor_s:.1f} s at {size.rate_per_s}/s "
                         f"per channel; prefetch {PREFETCH} message per worker); RECONCILE_AFTER_S={reconcile_s} (default 300); {QUEUE} "
                         f"{'exists' if QUEUE in listed else 'is missing'} at the end; /health/ready {ready}")
    return outcome


def queue_delete(size: Size, where: Where) -> Outcome:
    return _queue_fault(size, where, "delete")


def queue_purge(size: Size, where: Where) -> Outcome:
    return _queue_fault(size, where, "purge")
