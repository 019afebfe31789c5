"""An operator deletes or purges the sms queue mid-run (``rabbitmqctl delete_queue`` /
``purge_queue``), with its backlog in it.

The messages are gone; the sends stay ``queued`` in the database (the outbox), and the reconciler
offers them again after ``RECONCILE_AFTER_S``. That setting is shortened here to ``RECONCILE_S``
(default 300 s, and the reconciler then runs every 15 s) so that the recovery is measured in a
short run; the window is that plus 30 s.
"""

from __future__ import annotations

import time
from pathlib import Path

from ops.bench.common import log
from ops.chaos.rig import RECOVERY_TARGET_S, Rig, Size, rabbitmqctl
from ops.chaos.verdict import Outcome

RECONCILE_S = 10
QUEUE = "retentiond.sms"


def _queue_fault(size: Size, workdir: Path, action: str) -> Outcome:
    name = f"queue_{action}"
    with Rig(workdir, size, RECONCILE_AFTER_S=str(RECONCILE_S)) as rig:
        campaign = rig.seed_campaign()
        daemon = rig.start_daemon()
        rig.enrol_all(campaign)
        rig.wait_fraction(0.1)
        before = rabbitmqctl("list_queues", "-p", rig.vhost, "name", "messages_ready", "messages_unacknowledged").stdout
        depth = next((line.split()[1:] for line in before.splitlines() if line.split()[:1] == [QUEUE]), ["?", "?"])
        done = rabbitmqctl(f"{action}_queue", "-p", rig.vhost, QUEUE)
        ended = time.monotonic()
        log(f"{name}: {action}_queue {QUEUE} -> exit {done.returncode} {done.stdout.strip()} {done.stderr.strip()}")
        window = RECONCILE_S + RECONCILE_S + RECOVERY_TARGET_S
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
                 "reconcile_after_s": RECONCILE_S,
                 "messages_ready_before": depth[0], "messages_unacked_before": depth[1]})
    outcome.checks[f"rabbitmqctl {action}_queue succeeded"] = done.returncode == 0
    outcome.checks["the daemon stops with exit 0 afterwards"] = exit_code == 0
    outcome.notes.append(f"{QUEUE} held {depth[0]} ready and {depth[1]} unacknowledged (prefetched) messages "
                         f"when it was {action}d; RECONCILE_AFTER_S={RECONCILE_S} (default 300); {QUEUE} "
                         f"{'exists' if QUEUE in listed else 'is missing'} at the end; /health/ready {ready}")
    return outcome


def queue_delete(size: Size, workdir: Path) -> Outcome:
    return _queue_fault(size, workdir, "delete")


def queue_purge(size: Size, workdir: Path) -> Outcome:
    return _queue_fault(size, workdir, "purge")
