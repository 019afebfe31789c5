"""Quorum queues: how retentiond declares its queues on RabbitMQ, what an operator meets when a
queue exists with another type, and a 3-node cluster of the suite's own losing the node that leads
the channel queue in the middle of a dispatch."""

from __future__ import annotations

import datetime as dt
import inspect
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from actors.broker import build_broker
from actors.rabbitmq import DELIVERY_LIMIT, QueueTypeRabbitmqBroker, queue_type
from db.bulk import insert_many
from db.database import close_database, init_database
from db.migrate import migrate
from db.models import Send
from ops.harness.daemon import DaemonProcess, base_env, cli, free_port
from tests.support.rabbit_cluster import RabbitCluster, require_cluster_support
from tests.support.sends import console_keys
from tests.support.settings import make_settings
from tests.support.waiting import wait_until

QUEUES = [f"retentiond.{name}" for name in ("sms", "email", "call", "push", "webhook", "events")]


# -- the declaration Dramatiq makes, and ours on top of it -----------------------------------------


class RecordingChannel:
    """Stands in for pika's channel: records each queue declaration."""

    def __init__(self) -> None:
        self.declared: dict[str, dict[str, Any]] = {}

    def queue_declare(self, queue: str, durable: bool = False, arguments: dict[str, Any] | None = None,
                      **_: Any) -> None:
        assert durable, f"{queue} declared non-durable"
        self.declared[queue] = dict(arguments or {})


def declarations(broker: RabbitmqBroker, queue: str) -> dict[str, dict[str, Any]]:
    channel = RecordingChannel()
    broker.state.channel = channel
    broker.declare_queue(queue, ensure=True)  # Dramatiq's own path: _ensure_queue and the three
    return channel.declared


def test_dramatiq_minor_version_and_private_declaration_methods_are_the_ones_we_extend() -> None:
    # Given the Dramatiq we pin (setup.cfg: >= 2.2, < 2.3), the private methods we override keep
    # their shape: one queue name in, the declaration made on self.channel
    assert dramatiq.__version__.startswith("2.2."), dramatiq.__version__
    for name in ("_build_queue_arguments", "_declare_queue", "_declare_dq_queue", "_declare_xq_queue"):
        assert list(inspect.signature(getattr(RabbitmqBroker, name)).parameters) == ["self", "queue_name"], name
    # When Dramatiq ensures a queue, it declares the queue, its .DQ and its .XQ through them
    plain = declarations(RabbitmqBroker(url="amqp://127.0.0.1:1"), "retentiond.sms")
    assert plain == {
        "retentiond.sms": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "retentiond.sms.XQ"},
        "retentiond.sms.DQ": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "retentiond.sms.XQ"},
        "retentiond.sms.XQ": {"x-message-ttl": 7 * 86_400_000},
    }
    # Then ours declares the same three as quorum queues, with a delivery limit where messages are consumed
    quorum = declarations(QueueTypeRabbitmqBroker(url="amqp://127.0.0.1:1", queue_type="quorum"), "retentiond.sms")
    extra = {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
    assert quorum == {
        "retentiond.sms": plain["retentiond.sms"] | extra,
        "retentiond.sms.DQ": plain["retentiond.sms.DQ"] | extra,
        "retentiond.sms.XQ": plain["retentiond.sms.XQ"] | {"x-queue-type": "quorum"},
    }
    # and, classic, exactly what Dramatiq declares (a running installation meets no change)
    assert declarations(QueueTypeRabbitmqBroker(url="amqp://127.0.0.1:1", queue_type="classic"),
                        "retentiond.sms") == plain


def test_quorum_queues_refuse_priorities_which_rabbitmq_3_does_not_have() -> None:
    with pytest.raises(ValueError, match="x-max-priority"):
        QueueTypeRabbitmqBroker(url="amqp://127.0.0.1:1", queue_type="quorum", max_priority=5)


@pytest.mark.parametrize("setting, url, expected", [
    ("auto", "amqp://127.0.0.1:5672/", "classic"),  # one node replicates nothing; upgrades keep their queues
    ("auto", "amqp://a:5672/;amqp://b:5672/;amqp://c:5672/", "quorum"),
    ("quorum", "amqp://127.0.0.1:5672/", "quorum"),  # one URL in front of a cluster (a load balancer)
    ("classic", "amqp://a:5672/;amqp://b:5672/", "classic"),
    ("Quorum", "amqp://127.0.0.1:5672/", "quorum"),
])
def test_the_queue_type_follows_the_setting_and_auto_follows_the_number_of_broker_urls(
        setting: str, url: str, expected: str) -> None:
    settings = make_settings(QUEUE_TYPE=setting, BROKER_URL=url)
    assert queue_type(settings) == expected
    broker = build_broker(settings)
    try:
        assert isinstance(broker, QueueTypeRabbitmqBroker) and broker.queue_type == expected
    finally:
        broker.close()


# -- on the machine's RabbitMQ (a vhost of the suite's own) ---------------------------------------


def queue_types(vhost: str) -> dict[str, str]:
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type"],
                            capture_output=True, text=True, check=True).stdout
    return dict(line.split()[:2] for line in listed.strip().splitlines()[1:])


@pytest.mark.parametrize("existing, asked, hint", [
    ("classic", "quorum", "RETENTIOND_QUEUE_TYPE=classic"),
    ("quorum", "classic", "RETENTIOND_QUEUE_TYPE=quorum"),
])
def test_a_queue_of_the_other_type_stops_the_start_with_exit_2_and_one_line_saying_what_to_do(
        existing: str, asked: str, hint: str, amqp_url: str, rabbitmq_vhost: str,
        rabbitmq_broker: Callable[..., dramatiq.Broker], tmp_path: Path) -> None:
    # Given queues a daemon of the other type left on the broker
    broker = rabbitmq_broker(QUEUE_TYPE=existing)
    for queue in sorted(broker.get_declared_queues()):
        broker.declare_queue(queue, ensure=True)
    assert queue_types(rabbitmq_vhost)["retentiond.sms"] == existing
    # When the operator starts a daemon asking for the other type
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", BROKER_URL=amqp_url,
                   QUEUE_TYPE=asked, HTTP_PORT=str(free_port()))
    assert cli("migrate", env=env, cwd=tmp_path).returncode == 0
    result = cli("run", "--processes", "1", env=env, cwd=tmp_path, timeout_s=60)
    # Then it exits with the bad-setting code and one line naming the setting and the way out
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("retentiond: error: RETENTIOND_QUEUE_TYPE: queue 'retentiond."), lines[0]
    assert f"exists as a {existing} queue" in lines[0] and hint in lines[0]
    assert "delete the retentiond.* queues" in lines[0]
    assert "guest:guest" not in result.stderr
    # and the queues are as they were
    assert queue_types(rabbitmq_vhost)["retentiond.sms"] == existing


def test_a_message_redelivered_past_the_delivery_limit_is_dead_lettered_not_looped(
        amqp_url: str, rabbitmq_vhost: str, rabbitmq_broker: Callable[..., dramatiq.Broker]) -> None:
    # Given the quorum sms queue, and a message on it that never gets acknowledged (a poison message
    # that kills whatever worker takes it)
    rabbitmq_broker(QUEUE_TYPE="quorum").declare_queue("retentiond.sms", ensure=True)
    assert queue_types(rabbitmq_vhost)["retentiond.sms.XQ"] == "quorum"
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.basic_publish("", "retentiond.sms", b"poison", pika.BasicProperties(delivery_mode=2))
        # When it is delivered and handed back again and again
        deliveries = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            method, _, _ = channel.basic_get("retentiond.sms")
            if method is None:
                if channel.queue_declare("retentiond.sms.XQ", passive=True).method.message_count:
                    break
                time.sleep(0.05)
                continue
            deliveries += 1
            channel.basic_reject(method.delivery_tag, requeue=True)
        # Then after the limit it lands in the dead-letter queue instead of coming back forever
        assert deliveries == DELIVERY_LIMIT + 1
        assert channel.queue_declare("retentiond.sms.XQ", passive=True).method.message_count == 1
        assert channel.queue_declare("retentiond.sms", passive=True).method.message_count == 0
    finally:
        connection.close()


# -- a cluster of our own --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    require_cluster_support()
    started = RabbitCluster(size=3)
    try:
        yield started.start()
    finally:
        started.stop()


def plan_sends(first: int, count: int) -> None:
    rows = [{"idempotency_key": f"q{i}", "channel": "sms", "recipient": f"+1555{i:07d}", "body": f"message {i}"}
            for i in range(first, first + count)]
    insert_many(Send, rows).execute()


def sent_count() -> int:
    return int(Send.select().where(Send.status == "sent").count())


def utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).replace(tzinfo=None)


TOTAL, WAVE, WAVE_S = 1000, 25, 0.25  # 100 sends/s planned for 10 s


@pytest.mark.slow
def test_killing_the_node_that_leads_the_channel_queue_mid_dispatch_loses_and_repeats_nothing(
        cluster: RabbitCluster, pg_url: str, tmp_path: Path, daemons: list,
        record_property: Any) -> None:
    # Given a daemon on the 3-node cluster (quorum queues: BROKER_URL lists the nodes), a provider
    # that takes 50 ms a call, and sms planned steadily (100/s for 10 s), so that messages keep
    # being published and consumed across the node loss, not only acknowledged
    init_database(pg_url)
    migrate()
    try:
        env = base_env(DATABASE_URL=pg_url, BROKER_URL=cluster.broker_url, RATE_SMS="unlimited",
                       PROVIDER_CONSOLE_DELAY_MS="50", PROCESSES="2")
        daemon = DaemonProcess(env, tmp_path)
        daemons.append(daemon)
        daemon.start()
        queues = cluster.queues()
        assert {name: queues[name]["type"] for name in QUEUES} == dict.fromkeys(QUEUES, "quorum")
        assert len(queues["retentiond.sms"]["members"]) == 3
        leader = cluster.leader("retentiond.sms")
        killed_at = after_kill = None
        for wave in range(TOTAL // WAVE):
            plan_sends(wave * WAVE, WAVE)
            if wave == 15:  # ~40% planned, sends under way
                wait_until(lambda: sent_count() > 0, 30, "the first sends", interval_s=0.05)
                # When the node leading retentiond.sms dies (kill -9) mid-dispatch
                cluster.kill(leader)
                killed_at, after_kill = time.time(), (wave + 1) * WAVE
            time.sleep(WAVE_S)  # pacing the load, not waiting for an outcome
        assert killed_at is not None and after_kill is not None
        # Then every send goes out, on the nodes left, without the daemon restarting
        wait_until(lambda: sent_count() == TOTAL, 120, f"all {TOTAL} sends", interval_s=0.05)
        assert cluster.leader("retentiond.sms").name != leader.name
        assert daemon.process is not None and daemon.process.poll() is None
        assert "restarting it" not in daemon.stderr()
        # and each exactly once
        assert console_keys(daemon) == Counter({f"q{i}": 1 for i in range(TOTAL)})
        # How long it took: the first send planned after the kill, and the longest pause in sending
        finished = sorted(s.finished_at for s in Send.select(Send.finished_at))
        planned_later = Send.select(Send.finished_at).where(
            Send.idempotency_key.in_([f"q{i}" for i in range(after_kill, after_kill + WAVE)]))
        first_after_s = (min(s.finished_at for s in planned_later) - utc(killed_at)).total_seconds()
        around = [t for t in finished if t >= utc(killed_at - 1)]
        pause_s = max((b - a).total_seconds() for a, b in zip(around, around[1:], strict=False))
        done_s = (finished[-1] - utc(killed_at)).total_seconds()
        record_property("first_send_planned_after_the_kill_s", round(first_after_s, 2))
        record_property("longest_pause_in_sending_s", round(pause_s, 2))
        print(f"\nnode loss ({leader.name}, leader of retentiond.sms): first send planned after the kill out "
              f"{first_after_s:.1f}s after it, longest pause in sending {pause_s:.1f}s, last of {TOTAL} sent "
              f"{done_s:.1f}s after the kill; 0 lost, 0 duplicates")
        assert daemon.stop() == 0
    finally:
        close_database()
