"""The rig every chaos scenario stands on: a scratch database and RabbitMQ vhost, the provider
simulator, TCP proxies in front of the servers the scenario cuts, real ``retentiond run`` daemons,
N leads enrolled in an sms + email campaign, and the readings a verdict needs (deliveries and
duplicates at the simulator, send statuses in the database, readiness).

The daemon talks to the servers through the proxies; the rig itself reads the database directly,
so it can still count while the daemon's database is cut off.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.bench.common import (
    AMQP_BASE,
    Ticker,
    connected,
    create_database,
    drop_database,
    drop_vhost,
    rabbitmq_vhost,
)
from ops.harness.daemon import DaemonProcess, base_env
from ops.harness.servers import POSTGRES, RABBITMQ
from ops.harness.simulator_process import SimulatorProcess
from ops.harness.tcp_proxy import TcpProxy

RECOVERY_TARGET_S = 30.0  # the target: all delivered within 30 s of the fault's end


@dataclass(frozen=True)
class Size:
    """How big a scenario runs: ``--quick`` keeps the fault mechanics and shrinks the numbers."""

    leads: int
    rate_per_s: int  # sms and email each: the dispatch must outlast the fault's start
    outage_s: float
    latency_ms: float = 200
    processes: int = 2
    quick: bool = False

    @property
    def expected(self) -> int:
        return 2 * self.leads  # one sms and one email per lead


# 100/s: undisturbed, the 2,000 sends would be done before a 15 s fault that starts at 10% ends, so
# what is left after the fault is the fault's doing and the 30 s window measures the recovery.
FULL = Size(leads=1000, rate_per_s=100, outage_s=15)
QUICK = Size(leads=100, rate_per_s=25, outage_s=4, quick=True)


@dataclass(frozen=True)
class Where:
    """A scenario's scratch directory and the suite's RabbitMQ vhost (made once per run: each
    ``rabbitmqctl`` call costs a second or two; a Rig empties the vhost's queues instead)."""

    workdir: Path
    vhost: str


@contextlib.contextmanager
def suite_vhost() -> Iterator[str]:
    vhost, _ = rabbitmq_vhost()
    try:
        yield vhost
    finally:
        drop_vhost(vhost)


def empty_vhost(vhost: str) -> None:
    """Delete every retentiond queue of the vhost: each scenario starts from none."""
    import pika

    from ground.channels import CHANNELS, QUEUE_PREFIX

    connection = pika.BlockingConnection(pika.URLParameters(f"{AMQP_BASE}{vhost}"))
    try:
        channel = connection.channel()
        for name in (*CHANNELS, "events"):
            for suffix in ("", ".DQ", ".XQ"):
                channel.queue_delete(f"{QUEUE_PREFIX}{name}{suffix}")
    finally:
        connection.close()


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False)


class Rig:
    """One scenario's world; use as a context manager, everything is removed at the end."""

    def __init__(self, where: Where, size: Size, *, db: str = "postgres", proxy_db: bool = False,
                 proxy_broker: bool = False, db_url: str | None = None, **settings: str) -> None:
        self.workdir, self.vhost, self.size, self.kind = where.workdir, where.vhost, size, db
        self._db_url_given = db_url
        self._proxy_db, self._proxy_broker = proxy_db, proxy_broker
        self.settings = settings
        self.daemons: list[DaemonProcess] = []
        self.db_proxy: TcpProxy | None = None
        self.broker_proxy: TcpProxy | None = None
        self._stack = contextlib.ExitStack()

    # -- set up and tear down --------------------------------------------------------------------

    def __enter__(self) -> Rig:
        stack = self._stack
        empty_vhost(self.vhost)
        amqp_url = f"{AMQP_BASE}{self.vhost}"
        self.db_url = self._db_url_given or create_database(self.kind, self.workdir)
        if self._db_url_given is None:
            stack.callback(drop_database, self.db_url)
        daemon_db_url, daemon_amqp_url = self.db_url, amqp_url
        if self._proxy_db:
            self.db_proxy = TcpProxy(POSTGRES)
            stack.callback(self.db_proxy.close)
            daemon_db_url = self.db_url.replace(f"{POSTGRES[0]}:{POSTGRES[1]}", self.db_proxy.url_host_port())
        if self._proxy_broker:
            self.broker_proxy = TcpProxy(RABBITMQ)
            stack.callback(self.broker_proxy.close)
            daemon_amqp_url = amqp_url.replace(f"{RABBITMQ[0]}:{RABBITMQ[1]}", self.broker_proxy.url_host_port())
        self.simulator = SimulatorProcess(self.workdir, latency_ms=self.size.latency_ms).start()
        stack.callback(self.simulator.stop)
        stack.callback(self._kill_daemons)
        rate = f"{self.size.rate_per_s}/s"
        self.env = base_env(DATABASE_URL=daemon_db_url, BROKER_URL=daemon_amqp_url, RATE_SMS=rate, RATE_EMAIL=rate,
                            DAILY_CAP="0", QUIET_HOURS="off", **self.simulator.provider_env(), **self.settings)
        from db.migrate import migrate

        with connected(self.db_url):
            migrate()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _kill_daemons(self) -> None:
        for daemon in self.daemons:
            daemon.kill()

    def start_daemon(self, name: str = "daemon", *, environ: dict[str, str] | None = None,
                     **settings: str) -> DaemonProcess:
        env = {**self.env, **(environ or {}), **{f"RETENTIOND_{k}": v for k, v in settings.items()}}
        daemon = DaemonProcess(env, self.workdir, "--processes", str(self.size.processes), name=name)
        self.daemons.append(daemon)
        return daemon.start()

    # -- the campaign ----------------------------------------------------------------------------

    def seed_campaign(self, *, trigger_event: str | None = None, leads: int | None = None,
                      email_step: bool = True) -> int:
        """An sms step then an email step (no delay), and ``leads`` contacts (none when triggered by
        webhooks: those bring their own). Returns the campaign id."""
        from db.bulk import insert_many
        from db.models import Campaign, CampaignStep, Contact, database

        count = self.size.leads if leads is None else leads
        with connected(self.db_url), database.atomic():
            campaign = Campaign.create(slug="chaos", name="Chaos", trigger_event=trigger_event)
            CampaignStep.create(campaign=campaign.id, position=0, channel="sms", delay_s=0,
                                body="Hi {{ contact.name }}, your code is {{ contact.attributes.code | default('-') }}")
            if email_step:
                CampaignStep.create(campaign=campaign.id, position=1, channel="email", delay_s=0,
                                    subject="Your code", body="Hello {{ contact.name }}, code {{ contact.attributes.code | default('-') }}")
            rows = [{"external_id": f"lead{i}", "phone": f"+1201{i:07d}", "email": f"lead{i}@example.com",
                     "name": f"Lead {i}", "attributes": {"code": i}} for i in range(count)]
            for start in range(0, len(rows), 1000):
                insert_many(Contact, rows[start:start + 1000]).execute()
            return int(campaign.id)

    def enrol_all(self, campaign_id: int) -> None:
        from db.models import Campaign, Contact
        from engine.enrolments import enrol

        with connected(self.db_url):
            enrol([c.id for c in Contact.select(Contact.id)], Campaign.get_by_id(campaign_id))

    # -- readings --------------------------------------------------------------------------------

    def deliveries(self) -> tuple[int, int]:
        """(distinct sends the provider accepted, second deliveries of one send) at the simulator."""
        stats = self.simulator.stats()
        return stats["received"] - stats["duplicates"], stats["duplicates"]

    def pace_floor_s(self) -> float:
        """How long the sends not yet delivered need at the configured rates, at the least (sms and
        email run side by side): a recovery time is read against it."""
        by_channel = self.simulator.stats()["by_channel"]
        left = max(self.size.leads - by_channel.get("sms", 0), self.size.leads - by_channel.get("email", 0), 0)
        return left / self.size.rate_per_s

    def statuses(self) -> Counter:
        from db.models import Send

        with connected(self.db_url):
            return Counter(s.status for s in Send.select(Send.status))

    def query(self, fn: Callable[[], Any]) -> Any:
        with connected(self.db_url):
            return fn()

    def wait_delivered(self, expected: int, deadline: float, what: str = "delivered") -> float | None:
        """Poll until ``expected`` distinct deliveries or the monotonic ``deadline``; the time reached,
        or None."""
        progress = Ticker()
        while True:
            delivered, duplicates = self.deliveries()
            if delivered >= expected:
                return time.monotonic()
            if time.monotonic() >= deadline:
                return None
            progress(f"  {delivered}/{expected} {what}, {duplicates} duplicates")
            time.sleep(0.1)

    def wait_fraction(self, fraction: float, timeout_s: float = 120) -> None:
        """Block until a share of the expected deliveries went out: the fault then hits mid-run."""
        target = max(1, int(self.size.expected * fraction))
        if self.wait_delivered(target, time.monotonic() + timeout_s, "before the fault") is None:
            raise RuntimeError(f"fewer than {target} deliveries in {timeout_s:.0f}s before the fault")

    def wait_ready(self, daemon: DaemonProcess, deadline: float) -> float | None:
        while time.monotonic() < deadline:
            if daemon.get("/health/ready")[0] == 200:
                return time.monotonic()
            time.sleep(0.1)
        return None


def hold(seconds: float, during: Callable[[], None] | None = None) -> None:
    """Keep a fault on for ``seconds`` (the stimulus's length, not a synchronisation), calling
    ``during`` about four times a second meanwhile."""
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if during is not None:
            during()
        time.sleep(min(0.25, max(0.0, ends - time.monotonic())))
