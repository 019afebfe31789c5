"""/health/details: each component turns warning and critical at its thresholds; a critical
finding is recorded once as an ops alert and resolved when the component recovers."""

from __future__ import annotations

import datetime as dt

import pika

from daemon.web import health_details as hd
from db.database import close_database, init_database
from db.models import Decision, JobRun, Lease, OpsAlert, utcnow
from ops.harness.daemon import free_port
from tests.support.rabbitmq import amqp_url_for
from tests.support.settings import make_settings
from tests.support.waiting import wait_until


def decisions(sent: int, failed: int, retried: int) -> None:
    now = utcnow()
    rows = ([{"outcome": "sent", "created_at": now}] * sent + [{"outcome": "failed", "created_at": now}] * failed
            + [{"outcome": "retried", "created_at": now}] * retried)
    Decision.insert_many(rows).execute()


def test_provider_error_rate(migrated_db: str) -> None:
    decisions(10, 0, 0)
    assert hd.provider_errors_finding(utcnow()).status == "healthy"  # too few calls to judge
    decisions(80, 5, 5)
    assert hd.provider_errors_finding(utcnow()).status == "warning"  # 10 of 100
    decisions(0, 30, 10)
    assert hd.provider_errors_finding(utcnow()).status == "critical"  # 50 of 140


def test_scheduling_tick_age(migrated_db: str) -> None:
    now = utcnow()
    assert hd.tick_finding(now).status == "warning"  # none yet
    JobRun.create(job="scheduling-tick", instance="x", started_at=now - dt.timedelta(seconds=200),
                  finished_at=now - dt.timedelta(seconds=200), outcome="ok")
    assert hd.tick_finding(now).status == "critical"
    JobRun.create(job="scheduling-tick", instance="x", started_at=now - dt.timedelta(seconds=60),
                  finished_at=now - dt.timedelta(seconds=60), outcome="ok")
    assert hd.tick_finding(now).status == "warning"
    JobRun.create(job="scheduling-tick", instance="x", started_at=now, finished_at=now, outcome="ok")
    assert hd.tick_finding(now).status == "healthy"


def test_stale_leases(migrated_db: str) -> None:
    now = utcnow()
    Lease.create(name="reconciler", holder="x", expires_at=now - dt.timedelta(minutes=1))
    assert hd.lease_finding(now).status == "healthy"
    Lease.create(name="scheduling-tick", holder="x", expires_at=now - dt.timedelta(minutes=20))
    finding = hd.lease_finding(now)
    assert finding.status == "warning" and "scheduling-tick" in finding.detail


def test_database_and_broker_reachability(migrated_db: str) -> None:
    assert hd.database_finding().status == "healthy"
    assert hd.broker_finding(make_settings()).status == "healthy"  # in-process broker
    dead = make_settings(BROKER_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    assert hd.broker_finding(dead).status == "critical"
    close_database()
    init_database(f"postgresql://postgres@127.0.0.1:{free_port()}/none", timeout_s=1)
    try:
        assert hd.database_finding().status == "critical"
    finally:
        close_database()


def test_queue_depth_and_dead_letters(migrated_db: str, amqp_url: str, rabbitmq_vhost: str) -> None:
    settings = make_settings(BROKER_URL=amqp_url)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url_for(rabbitmq_vhost)))
    channel = connection.channel()
    for name in ("retentiond.sms", "retentiond.sms.XQ"):
        channel.queue_declare(name, durable=True)

    def publish(queue: str, count: int) -> None:
        for _ in range(count):
            channel.basic_publish("", queue, b"{}")
    assert [f.status for f in hd.queue_findings(settings)] == ["healthy", "healthy"]
    publish("retentiond.sms.XQ", 1)
    publish("retentiond.sms", 10_001)
    # the broker counts published messages a moment later: poll with a deadline
    wait_until(lambda: [f.status for f in hd.queue_findings(settings)] == ["warning", "warning"], 15,
               "queue depth and dead letters to turn warning")
    publish("retentiond.sms.XQ", 100)
    connection.close()
    wait_until(lambda: hd.queue_findings(settings)[1].status == "critical", 15, "dead letters to turn critical")


def test_a_critical_finding_is_an_ops_alert_once_until_it_recovers(migrated_db: str) -> None:
    dead = make_settings(DATABASE_URL=migrated_db, BROKER_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    first = hd.details(dead)
    assert first["status"] == "critical"
    assert first["components"]["broker"]["status"] == "critical"
    hd.details(dead)
    alerts = list(OpsAlert.select().where(OpsAlert.component == "broker"))
    assert len(alerts) == 1 and alerts[0].resolved_at is None
    healthy = hd.details(make_settings(DATABASE_URL=migrated_db))
    assert healthy["components"]["broker"]["status"] == "healthy"
    assert OpsAlert.get(OpsAlert.component == "broker").resolved_at is not None


def test_a_broker_list_is_probed_node_by_node(migrated_db: str, amqp_url: str) -> None:
    # Given BROKER_URL naming two nodes, the first one down (as a cluster's URL list does)
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/{amqp_url.rsplit('/', 1)[1]}"
    settings = make_settings(BROKER_URL=f"{down};{amqp_url}")
    # When the probes run, Then the broker is reachable through the second node
    assert hd.broker_finding(settings).status == "healthy"
    assert hd.queue_depths(settings)["retentiond.sms"] == 0
