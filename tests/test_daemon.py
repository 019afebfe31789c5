"""The daemon as an operator runs it: a real ``retentiond run`` on RabbitMQ and PostgreSQL (or the
embedded defaults), signals, outages through a TCP proxy the test controls."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.migrate import migrate
from db.models import Send
from ops.harness.daemon import DaemonProcess, base_env, cli, free_port
from ops.harness.tcp_proxy import TcpProxy
from tests.support.outage import proxied_postgres
from tests.support.rabbitmq import amqp_url_for, rabbitmq_queue_depths
from tests.support.sends import console_keys, plan_sends, status_counts
from tests.support.services import RABBITMQ
from tests.support.waiting import wait_until


@pytest.fixture
def database(pg_url: str) -> Iterator[str]:
    init_database(pg_url)
    migrate()
    yield pg_url
    close_database()


def test_on_rabbitmq_and_postgres_the_channel_queues_exist_and_sends_go_out(
        database: str, amqp_url: str, rabbitmq_vhost: str, tmp_path: Path, daemons: list) -> None:
    # Given a daemon with two worker processes on RabbitMQ and PostgreSQL
    daemon = DaemonProcess(base_env(DATABASE_URL=database, BROKER_URL=amqp_url, RATE_SMS="unlimited",
                                    RATE_EMAIL="unlimited", SOURCE_STRIPE_SCHEME="stripe",
                                    SOURCE_STRIPE_SECRET="whsec_stripe_0123456789"), tmp_path, "--processes", "2")
    daemons.append(daemon)
    daemon.start()
    # When sends are planned on two channels
    plan_sends(40, "sms", "sms-")
    plan_sends(20, "email", "email-")
    wait_until(lambda: status_counts()["sent"] == 60, 30, "60 sends sent")
    # Then each went out once, and the operator sees one durable queue per channel, with dead letters
    assert console_keys(daemon) == Counter({f"sms-{i}": 1 for i in range(40)} | {f"email-{i}": 1 for i in range(20)})
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", rabbitmq_vhost, "name", "durable"],
                            capture_output=True, text=True, check=True).stdout
    queues = dict(line.split() for line in listed.strip().splitlines()[1:])
    for channel in ("sms", "email", "call", "push", "webhook"):
        assert queues.get(f"retentiond.{channel}") == "true"
        assert queues.get(f"retentiond.{channel}.XQ") == "true"
    # And the operators' paths are on their own listener, never on the public one
    for path in ("/metrics", "/health/details", "/api/v1/stats", "/api/v1/openapi.json"):
        assert daemon.get(path)[0] == 404, path
    assert daemon.admin_get("/api/v1/stats")[0] == 401  # no token configured: the API refuses all
    assert daemon.admin_get("/health") == (200, {"status": "ok"}) == daemon.get("/health")
    assert daemon.admin_get("/health/ready")[0] == 200
    # And /metrics adds up what both worker processes counted
    status, text = daemon.admin_get("/metrics")
    assert status == 200
    assert 'retentiond_sends_total{channel="sms",status="sent"} 40.0' in text
    assert 'retentiond_sends_total{channel="email",status="sent"} 20.0' in text
    # And a configured source's rejections are a series at 0 before the first one (alerts see it)
    assert 'retentiond_webhook_events_total{outcome="unauthorized",source="stripe"} 0.0' in text
    assert daemon.get("/health/ready")[0] == 200
    assert daemon.stop() == 0
    assert re.search(r"stopped after [\d.]+s: .* exit 0", daemon.stderr())


@pytest.mark.slow
def test_sigterm_during_slow_sends_loses_nothing_and_acks_nothing_unfinished(
        database: str, amqp_url: str, rabbitmq_vhost: str, tmp_path: Path, daemons: list) -> None:
    # Given slow sends (1 s each, 4 at a time, batches of 10) with plenty left when SIGTERM comes
    env = base_env(DATABASE_URL=database, BROKER_URL=amqp_url, RATE_SMS="10/s", CONCURRENCY_SMS="4",
                   PROVIDER_CONSOLE_DELAY_MS="1000", SHUTDOWN_TIMEOUT_S="20")
    first = DaemonProcess(env, tmp_path, "--processes", "1", "--threads", "2", name="first")
    daemons.append(first)
    first.start()
    plan_sends(60)
    wait_until(lambda: status_counts()["sent"] >= 6, 30, "the first sends")
    # When the daemon gets SIGTERM mid-run
    stopped_at = time.monotonic()
    first.signal(signal.SIGTERM)
    # it stops taking HTTP at once, while in-flight sends are still finishing
    wait_until(lambda: first.get("/health")[0] == 0, 5, "the side server to close")
    assert first.process is not None and first.process.poll() is None
    assert first.stop(timeout_s=40) == 0
    assert time.monotonic() - stopped_at < 20
    # Then nothing is left half-claimed: each send is sent (once), back in the queue, or still in the
    # outbox (the relay paces the 10/s channel: only a few seconds of its rate are ever queued)
    counts = status_counts()
    assert counts["sending"] == 0 and counts["retrying"] == 0
    assert counts["sent"] + counts["queued"] + counts["planned"] == 60 and counts["queued"] > 0
    sent_keys = {s.idempotency_key for s in Send.select().where(Send.status == "sent")}
    assert console_keys(first) == Counter(dict.fromkeys(sent_keys, 1))
    # and RabbitMQ still holds the messages for every unsent one (nothing unfinished was acked)
    depths = rabbitmq_queue_depths(rabbitmq_vhost)
    assert depths["retentiond.sms"] + depths["retentiond.sms.DQ"] >= 1
    # When the daemon starts again, the rest go out, and nothing went out twice
    second = DaemonProcess(env, tmp_path, "--processes", "1", "--threads", "2", name="second")
    daemons.append(second)
    second.start()
    wait_until(lambda: status_counts()["sent"] == 60, 60, "all 60 sends")
    assert console_keys(first, second) == Counter({f"s{i}": 1 for i in range(60)})
    assert second.stop() == 0


@pytest.mark.slow
def test_readiness_follows_rabbitmq_through_an_outage_without_a_restart(
        database: str, rabbitmq_vhost: str, amqp_url: str, tmp_path: Path, daemons: list) -> None:
    proxy = TcpProxy(RABBITMQ)
    try:
        daemon = DaemonProcess(base_env(DATABASE_URL=database, RATE_SMS="unlimited",
                                        BROKER_URL=amqp_url_for(rabbitmq_vhost, proxy.url_host_port())),
                               tmp_path, "--processes", "1")
        daemons.append(daemon)
        daemon.start()
        daemon.wait_for("/health/ready", 200, 10)
        # When RabbitMQ becomes unreachable
        proxy.cut()
        body = daemon.wait_for("/health/ready", 503, 15)
        assert body["broker"]["ok"] is False and body["database"]["ok"] is True
        assert daemon.get("/health")[0] == 200  # alive all the same
        plan_sends(3, prefix="during-")  # planned while the broker is away: kept, not lost
        # When it comes back, the daemon is ready again and sends flow, with no restart
        proxy.restore()
        daemon.wait_for("/health/ready", 200, 30)
        plan_sends(3, prefix="after-")
        wait_until(lambda: status_counts()["sent"] == 6, 60, "the sends planned during and after the outage")
        assert console_keys(daemon) == Counter({f"{p}{i}": 1 for p in ("during-", "after-") for i in range(3)})
        assert daemon.stop() == 0
    finally:
        proxy.close()


@pytest.mark.slow
def test_readiness_follows_postgresql_through_an_outage(
        pg_url: str, amqp_url: str, tmp_path: Path, daemons: list) -> None:
    with proxied_postgres(pg_url) as (proxied, proxy):
        daemon = DaemonProcess(base_env(DATABASE_URL=proxied, BROKER_URL=amqp_url, DB_TIMEOUT_S="2"),
                               tmp_path, "--processes", "1")
        daemons.append(daemon)
        daemon.start()
        daemon.wait_for("/health/ready", 200, 10)
        proxy.cut()
        body = daemon.wait_for("/health/ready", 503, 15)
        assert body["database"]["ok"] is False and body["broker"]["ok"] is True
        proxy.restore()
        daemon.wait_for("/health/ready", 200, 30)
        assert daemon.stop() == 0


def test_embedded_defaults_run_from_an_empty_directory(tmp_path: Path, daemons: list) -> None:
    # `make run` in a fresh clone: no settings at all, SQLite under ./var, in-process broker
    env = base_env()
    assert cli("migrate", env=env, cwd=tmp_path).returncode == 0
    daemon = DaemonProcess(env, tmp_path)
    daemons.append(daemon)
    daemon.start()
    assert (tmp_path / "var" / "retentiond.db").exists()
    assert daemon.get("/health") == (200, {"status": "ok"})
    assert daemon.get("/health/ready")[0] == 200
    init_database("sqlite:///" + str(tmp_path / "var" / "retentiond.db"))
    try:
        plan_sends(2, "email", "local-")
        wait_until(lambda: status_counts()["sent"] == 2, 20, "the two local sends")
    finally:
        close_database()
    assert console_keys(daemon) == Counter({"local-0": 1, "local-1": 1})
    assert daemon.stop() == 0


@pytest.mark.slow
def test_after_a_kill_9_on_the_embedded_default_a_paced_channel_goes_on_at_once(tmp_path: Path, daemons: list) -> None:
    # Given the embedded default (its queue lives in the daemon's memory) sending a paced sms backlog
    # at 10/s: a window of 30 sends in flight, 3 messages of 10, one worker thread, so one message
    # is being sent and two wait in the in-memory queue
    env = base_env(RATE_SMS="10/s", PROVIDER_CONSOLE_DELAY_MS="100", HEARTBEAT_INTERVAL_S="1")
    assert cli("migrate", env=env, cwd=tmp_path).returncode == 0
    first = DaemonProcess(env, tmp_path, "--threads", "1", name="first")
    daemons.append(first)
    first.start()
    init_database("sqlite:///" + str(tmp_path / "var" / "retentiond.db"))
    try:
        plan_sends(60)
        wait_until(lambda: status_counts()["sent"] >= 10 and status_counts()["queued"] >= 10, 30,
                   "sends going out with messages waiting in memory")
        # When it is killed, its in-memory queue gone with it, and started again
        first.kill()
        sent_before = status_counts()["sent"]
        second = DaemonProcess(env, tmp_path, "--threads", "1", name="second")
        daemons.append(second)
        second.start()
        # Then the channel goes on at once: the sends whose messages were lost are relayed again
        # now, not after RECONCILE_AFTER_S (300 s) while they fill the channel's window
        wait_until(lambda: status_counts()["sent"] >= sent_before + 20, 8, "sends right after the restart")
        wait_until(lambda: status_counts()["sent"] == 60, 60, "the whole backlog")
    finally:
        close_database()


def test_sigterm_repeated_until_the_daemon_is_gone_still_ends_in_a_clean_exit(tmp_path: Path, daemons: list) -> None:
    # Given a running daemon on the embedded defaults (an operator pressing Ctrl-C twice, a
    # supervisor that repeats its stop signal)
    env = base_env()
    assert cli("migrate", env=env, cwd=tmp_path).returncode == 0
    daemon = DaemonProcess(env, tmp_path)
    daemons.append(daemon)
    daemon.start()
    assert daemon.process is not None
    # When SIGTERM keeps coming, every 5 ms, through the whole shutdown and teardown
    deadline = time.monotonic() + 30
    while daemon.process.poll() is None and time.monotonic() < deadline:
        daemon.process.send_signal(signal.SIGTERM)
        time.sleep(0.005)  # the signals' spacing, not a wait for anything
    # Then the shutdown that the first one started ends cleanly: exit 0, never death by signal
    # (asyncio puts SIGTERM back to its default action when its loop closes)
    assert daemon.process.wait(timeout=30) == 0
    assert "stopped after" in daemon.stderr() + daemon.stdout()


@pytest.mark.slow
def test_a_worker_process_that_dies_is_replaced(database: str, amqp_url: str, tmp_path: Path,
                                                daemons: list) -> None:
    daemon = DaemonProcess(base_env(DATABASE_URL=database, BROKER_URL=amqp_url, RATE_SMS="unlimited"),
                           tmp_path, "--processes", "2")
    daemons.append(daemon)
    daemon.start()
    assert daemon.process is not None
    workers = re.findall(r"worker \d \(pid (\d+)\) started", daemon.stderr())
    assert len(workers) == 2
    # When one worker process is killed outright
    subprocess.run(["kill", "-9", workers[0]], check=True)
    wait_until(lambda: "restarting it" in daemon.stderr(), 15, "the supervisor to notice")
    wait_until(lambda: daemon.stderr().count("started with") >= 3, 30, "a replacement worker")
    # Then sends still go out, and the daemon still stops cleanly
    plan_sends(10)
    wait_until(lambda: status_counts()["sent"] == 10, 30, "10 sends after the restart")
    assert daemon.stop() == 0


@pytest.mark.parametrize(("broker", "listener"), [
    ("memory", "HTTP"), ("memory", "ADMIN"), pytest.param("rabbitmq", "ADMIN", marks=pytest.mark.rabbitmq)])
def test_run_on_a_port_already_in_use_exits_2_with_one_line_naming_the_address(
        broker: str, listener: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # Given another program listening on the port of one of the daemon's two listeners
    settings = {"DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "HTTP_PORT": str(free_port()),
                "ADMIN_PORT": str(free_port())}
    if broker == "rabbitmq":
        settings["BROKER_URL"] = request.getfixturevalue("amqp_url")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(**{**settings, f"{listener}_PORT": str(port)})
        assert cli("migrate", env=env, cwd=tmp_path).returncode == 0
        # When the operator runs the daemon (with worker processes on RabbitMQ)
        # cli() waits for the process and for every process holding its output: a worker left
        # behind, or a hang, ends in TimeoutExpired
        result = cli("run", "--processes", "1", env=env, cwd=tmp_path, timeout_s=60)
    # Then it exits promptly with the bad-setting code and one line naming the address, no traceback
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"retentiond: error: RETENTIOND_{listener}_PORT") and "in use" in lines[0]


@pytest.mark.slow
def test_the_start_up_line_masks_the_password_of_every_broker_url(amqp_url: str, tmp_path: Path,
                                                                   daemons: list) -> None:
    # Given several broker URLs (dramatiq tries them in order; the second is never reached here)
    broker = f"{amqp_url};amqp://app:second-secret-pw@127.0.0.1:1/standby"
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path}/r.db", BROKER_URL=broker, PROCESSES="1")
    assert cli("migrate", env=env).returncode == 0
    daemon = DaemonProcess(env, tmp_path)
    daemons.append(daemon)
    daemon.start()
    started = [line for line in daemon.stderr().splitlines() if " started: public listener on " in line]
    assert daemon.stop() == 0
    # Then the start-up line shows both brokers, each password masked, and no log line has either
    assert len(started) == 1
    assert "broker amqp://guest:***@127.0.0.1:5672/" in started[0]
    assert ";amqp://app:***@127.0.0.1:1/standby" in started[0]
    everything = daemon.stderr() + daemon.stdout()
    assert "second-secret-pw" not in everything and "guest:guest" not in everything
