"""Lead pipeline: N signed ``contact.upsert`` webhooks, each naming a one-step SMS campaign (delay 0s),
posted as fast as the client allows; the clock runs from the first post to the simulator's N-th
delivery (200 ms per call, limits lifted, 2 processes x 8 threads). So it covers the webhook's
verification and group commit, the event processor (upsert, enrolment), planning, the outbox relay,
the channel actor and the provider call: the way leads really arrive.

    python ops/bench/leads.py [--leads 20000] [--db postgres,embedded] [--connections 64]

Runs on RabbitMQ + PostgreSQL (``postgres``) and on the embedded default (``embedded``: SQLite and
the in-process broker ``memory://``). The anchor is the dispatch figure of the same run (N contacts
already enrolled, ``ops/bench/dispatch.py``): the suite passes the dispatch section's figures
(PostgreSQL for the PostgreSQL row, SQLite for the embedded one, the nearest it measures); run alone,
this module measures its own dispatch anchor at the same N first (``--no-anchor`` to skip it).
Reported: posting time and rate, p99 per request, first post -> all enrolled, first post -> all
delivered, leads/s end to end and its ratio to dispatch; checks that 202s == enrolments == received
== N and no duplicates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench import dispatch  # noqa: E402
from ops.bench.common import (  # noqa: E402
    Request,
    RssSampler,
    Section,
    Target,
    Ticker,
    clean_up_on_sigterm,
    connected,
    log,
    post_all,
    report_alone,
    services,
)
from ops.bench.ingress import SECRET  # noqa: E402
from ops.harness.daemon import DaemonProcess, base_env, cli  # noqa: E402
from ops.harness.signing import standard  # noqa: E402
from ops.harness.simulator_process import SimulatorProcess  # noqa: E402

SLUG = "leads"
TARGET_RATIO = 0.75
KINDS = ("postgres", "embedded")
# The dispatch row each lead row is compared with: the embedded default has no dispatch row of its
# own, SQLite (on RabbitMQ) is the nearest the dispatch section measures.
DISPATCH_OF = {"postgres": "postgres", "embedded": "sqlite"}


def seed_campaign(db_url: str, slug: str = SLUG, channel: str = "sms") -> int:
    """A one-step campaign (delay 0s) the leads name; returns its id. Not timed."""
    from db.models import Campaign, CampaignStep, database

    with connected(db_url):
        with database.atomic():
            campaign = Campaign.create(slug=slug, name=slug.title())
            CampaignStep.create(campaign=campaign.id, position=0, channel=channel, delay_s=0,
                                subject="Welcome" if channel == "email" else None,
                                body="Hi {{ contact.name }}, welcome aboard")
        return int(campaign.id)


def signed_leads(n: int, slug: str = SLUG, area_code: int = 415) -> list[Request]:
    """N signed contact.upsert events (Standard Webhooks), each a new contact enrolled in ``slug``; the
    phone numbers are valid ones (exchange 200 onwards), or the events would be refused (400)."""
    run_id, now = uuid.uuid4().hex[:8], dt.datetime.now(dt.UTC)
    requests = []
    for i in range(1, n + 1):
        event = {"type": "contact.upsert", "data": {"external_id": f"lead-{run_id}-{i}",
                                                    "phone": f"+1{area_code}{2_000_000 + i}", "name": f"Lead {i}",
                                                    "campaign": slug}}
        body, headers = standard(event, msg_id=f"lead_{run_id}_{i}", secret=SECRET, at=now)
        requests.append((headers, body.decode()))
    return requests


def enrolled(campaign_id: int) -> int:
    """Enrolments in the campaign, on this thread's open connection."""
    from db.models import Enrolment

    return Enrolment.select().where(Enrolment.campaign == campaign_id).count()


class Watcher(threading.Thread):
    """While the client posts, notes when every lead is enrolled and when the simulator has received
    them all (seconds after ``started``), polling the database and the simulator's /stats."""

    def __init__(self, db_url: str, campaign_id: int, simulator: SimulatorProcess, n: int, started: float,
                 label: str, timeout_s: float = 300, channel: str = "sms") -> None:
        super().__init__(daemon=True)
        self.db_url, self.campaign_id, self.simulator, self.n = db_url, campaign_id, simulator, n
        self.started, self.label, self.timeout_s, self.channel = started, label, timeout_s, channel
        self.enrolled_s: float | None = None
        self.delivered_s: float | None = None
        self.error: str | None = None
        self.base = simulator.stats()["by_channel"].get(channel, 0)  # what the channel received before

    def run(self) -> None:
        progress = Ticker()
        with connected(self.db_url):
            while self.delivered_s is None or self.enrolled_s is None:
                now = time.monotonic() - self.started
                if self.enrolled_s is None and enrolled(self.campaign_id) >= self.n:
                    self.enrolled_s = now
                received = self.simulator.stats()["by_channel"].get(self.channel, 0) - self.base
                if self.delivered_s is None and received >= self.n:
                    self.delivered_s = now
                progress(f"{self.label}: {received}/{self.n} delivered after {now:.0f}s")
                if now > self.timeout_s:
                    self.error = f"only {received} of {self.n} delivered in {self.timeout_s:.0f}s"
                    return
                time.sleep(0.05)

    def result(self) -> tuple[float, float]:
        self.join()
        if self.error is not None:
            raise RuntimeError(f"{self.label}: {self.error}")
        assert self.enrolled_s is not None and self.delivered_s is not None
        return self.enrolled_s, self.delivered_s


def post_and_watch(db_url: str, daemon: DaemonProcess, simulator: SimulatorProcess, campaign_id: int,
                   requests: list[Request], connections: int, label: str) -> dict[str, Any]:
    """Post the signed leads to a running daemon while a Watcher notes when all are enrolled and
    when the simulator has them all; the posting figures, those two times (seconds after the first
    post), the enrolments and the simulator's counts. Raises when a lead is refused (it would never
    be delivered) or when the deliveries do not all come."""
    n = len(requests)
    started = time.monotonic()
    watcher = Watcher(db_url, campaign_id, simulator, n, started, label, timeout_s=max(300, n / 20))
    watcher.start()
    posted = post_all(f"http://127.0.0.1:{daemon.port}/webhooks/bench", requests, connections)
    log(f"{label}: {n} leads posted in {posted['post_s']:.2f}s ({posted['posts_per_s']:.0f}/s); waiting for delivery")
    if posted["statuses"] != {"202": n}:  # refused leads are never delivered: no point waiting
        raise RuntimeError(f"{label}: lead answers {posted['statuses']}, expected {n} x 202")
    enrolled_s, delivered_s = watcher.result()
    stats = simulator.stats()
    with connected(db_url):
        enrolments = enrolled(campaign_id)
    return {**posted, "all_enrolled_s": enrolled_s, "all_delivered_s": delivered_s, "enrolments": enrolments,
            "simulator_received": stats["received"], "duplicates": stats["duplicates"]}


def pipeline(n: int, kind: str, processes: int, threads: int, latency_ms: float, connections: int,
             workdir: Path) -> dict[str, Any]:
    log(f"leads/{kind}: signing {n} contact.upsert events")
    requests = signed_leads(n)
    with services(kind, workdir) as (db_url, broker):
        simulator = SimulatorProcess(workdir, latency_ms=latency_ms).start()
        daemon: DaemonProcess | None = None
        try:
            env = base_env(DATABASE_URL=db_url, SOURCE_BENCH_SECRET=SECRET, RATE_SMS="unlimited",
                           CONCURRENCY_SMS="512", DAILY_CAP="0", QUIET_HOURS="off", DB_POOL_SIZE="4",
                           **broker, **simulator.provider_env())
            assert cli("migrate", env=env).returncode == 0
            campaign_id = seed_campaign(db_url)
            daemon = DaemonProcess(env, workdir, "--processes", str(processes), "--threads", str(threads),
                                   name=f"leads-{kind}").start()
            assert daemon.process is not None
            sampler = RssSampler(daemon.process.pid)
            sampler.start()
            log(f"leads/{kind}: posting {n} leads, {connections} connections")
            result = post_and_watch(db_url, daemon, simulator, campaign_id, requests, connections, f"leads/{kind}")
            peak_rss_mib = sampler.stop()
            assert daemon.stop() == 0
        finally:
            if daemon is not None:
                daemon.kill()
            simulator.stop()
    delivered_s = result["all_delivered_s"]
    log(f"leads/{kind}: all {n} delivered {delivered_s:.2f}s after the first post ({n / delivered_s:.0f} leads/s)")
    return {**result, "kind": kind, "leads": n, "leads_per_s": n / delivered_s, "peak_rss_mib": peak_rss_mib}


def dispatch_anchor(n: int, processes: int, threads: int, latency_ms: float, workdir: Path) -> dict[str, float]:
    """Dispatch at the same N on the rows' databases, when no dispatch section ran in the same run."""
    return {db: dispatch.retentiond(n, db, processes, threads, latency_ms, workdir)["sends_per_s"]
            for db in ("postgres", "sqlite")}


def run(leads: int = 20_000, kinds: tuple[str, ...] = KINDS, dispatch_per_s: dict[str, float] | None = None,
        own_anchor: bool = True, processes: int = 2, threads: int = 8, latency_ms: float = 200,
        connections: int = 64) -> Section:
    """``dispatch_per_s``: the same run's dispatch figures by database (``postgres``, ``sqlite``);
    without them, ``own_anchor`` measures them here at the same N, else the ratio is n/a."""
    runs = []
    anchor_source = "the dispatch section of this run"
    with tempfile.TemporaryDirectory(prefix="retentiond-leads-") as tmp:
        if dispatch_per_s is None and own_anchor:
            log(f"leads: no dispatch figures from this run; measuring dispatch at {leads} sends")
            dispatch_per_s = dispatch_anchor(leads, processes, threads, latency_ms, Path(tmp))
            anchor_source = f"dispatch measured in this section at {leads:,} sends"
        for kind in kinds:
            runs.append(pipeline(leads, kind, processes, threads, latency_ms, connections, Path(tmp)))

    table = ["| run | posting time | posts/s | p99 per post | first post -> all enrolled | -> all delivered | "
             "leads/s end to end | vs dispatch | peak RSS | received | duplicates |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for db, per_s in (dispatch_per_s or {}).items():
        table.append(f"| dispatch, RabbitMQ + {db} (anchor, contacts already enrolled) | - | - | - | - | - | "
                     f"{per_s:.0f} sends/s | 1.00 | - | - | - |")
    section = Section(
        name="leads",
        title=f"Lead pipeline: {leads:,} signed contact.upsert leads, one-step SMS campaign, provider latency "
              f"{latency_ms:g} ms, {processes} processes x {threads} threads",
        table=table, figures={"dispatch_per_s": dispatch_per_s, "dispatch_source": anchor_source, "runs": runs,
                              "provider_latency_ms": latency_ms, "connections": connections})
    for r in runs:
        label = "RabbitMQ + PostgreSQL" if r["kind"] == "postgres" else "embedded (SQLite + memory://)"
        anchor = (dispatch_per_s or {}).get(DISPATCH_OF[r["kind"]])
        r["vs_dispatch"] = r["leads_per_s"] / anchor if anchor else None
        ratio = f"{r['vs_dispatch']:.2f}" if r["vs_dispatch"] is not None else "n/a"
        table.append(f"| retentiond, {label} | {r['post_s']:.2f} s | {r['posts_per_s']:.0f} | {r['p99_ms']:.1f} ms | "
                     f"{r['all_enrolled_s']:.2f} s | {r['all_delivered_s']:.2f} s | {r['leads_per_s']:.0f} | {ratio} | "
                     f"{r['peak_rss_mib']:.0f} MiB | {r['simulator_received']} | {r['duplicates']} |")
        section.checks[f"{r['kind']}: 202s == {leads}"] = r["statuses"] == {"202": leads}
        section.checks[f"{r['kind']}: enrolments == {leads}"] = r["enrolments"] == leads
        section.checks[f"{r['kind']}: simulator received == {leads}"] = r["simulator_received"] == leads
        section.checks[f"{r['kind']}: duplicates == 0"] = r["duplicates"] == 0
        section.targets.append(Target(
            f"leads/s end to end >= {TARGET_RATIO} x dispatch ({r['kind']}, vs dispatch {DISPATCH_OF[r['kind']]})",
            f"{r['leads_per_s']:,.0f} leads/s, " + (f"{ratio} x {anchor:,.0f} sends/s" if anchor else "ratio n/a"),
            r["vs_dispatch"] is not None and r["vs_dispatch"] >= TARGET_RATIO))
    if dispatch_per_s is None:
        section.notes.append("dispatch did not run in this suite run: the ratio is n/a")
    else:
        section.notes.append(f"anchor: {anchor_source}")
    return section


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--db", default=",".join(KINDS), help="comma-separated: postgres, embedded")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--no-anchor", action="store_true", help="skip the dispatch anchor (ratio n/a)")
    parser.add_argument("--out", default="var/bench-leads.json")
    args = parser.parse_args()
    kinds = tuple(k for k in args.db.split(",") if k)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown --db {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    section = run(args.leads, kinds, own_anchor=not args.no_anchor, latency_ms=args.latency_ms,
                  connections=args.connections)
    return report_alone(section, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
