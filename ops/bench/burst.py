"""Webhook burst: 10,000 signed click events (Standard Webhooks) for 10,000 tracked links of sent
messages, posted as fast as 64 connections allow; then the time until every one is processed and
attributed to its send, step and campaign (an ``attribution`` row each). Then, on the same daemon,
the burst of leads: 10,000 signed ``contact.upsert`` events naming a one-step SMS campaign, posted
the same way, and the time until all are enrolled and until all first messages reached the provider
simulator (200 ms, limits lifted). PostgreSQL and RabbitMQ.

    python ops/bench/burst.py [--clicks 10000] [--leads 10000] [--connections 64]

The anchor is the same client posting the same 10,000 requests to a bare aiohttp JSON endpoint in
the same run: the posting rate the client and the machine allow when nothing is verified or stored.
Reported: posting time and rate (both), p50/p99 per request, then for retentiond the time from the
first post to the last attribution (to the last enrolment and delivery for the leads), and checks
that 202s == clicks == attributions and 202s == leads == enrolments == delivered, no duplicates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench.common import (  # noqa: E402
    REPO,
    Request,
    Section,
    Ticker,
    clean_up_on_sigterm,
    connected,
    log,
    post_all,
    report_alone,
    scratch_services,
)
from ops.bench.ingress import SECRET, signed_click, wait_port  # noqa: E402
from ops.bench.leads import post_and_watch, seed_campaign, signed_leads  # noqa: E402
from ops.harness.daemon import DaemonProcess, base_env, cli, free_port  # noqa: E402
from ops.harness.simulator_process import SimulatorProcess  # noqa: E402

_SEED_SQL = [
    """INSERT INTO contact (external_id, phone, name, attributes, consent, created_at, updated_at)
       SELECT 'b' || g, '+1203' || lpad(g::text, 7, '0'), 'Person ' || g, '{{}}', '{{}}', %(now)s, %(now)s
       FROM generate_series(1, {n}) AS g""",
    """INSERT INTO send (idempotency_key, channel, status, contact_id, campaign_id, step_id, recipient, body,
                         attempts, deferrals, due_at, created_at, finished_at)
       SELECT 'b' || id, 'sms', 'sent', id, {campaign}, {step}, phone, 'see the offer', 1, 0, %(now)s, %(now)s,
              %(now)s
       FROM contact""",
    """INSERT INTO tracked_link (token, url, contact_id, send_id, campaign_id, step_id, created_at)
       SELECT 'tok' || contact_id, 'https://example.com/offer', contact_id, id, campaign_id, step_id, %(now)s
       FROM send""",
]


def seed(db_url: str, n: int) -> None:
    """N contacts, each sent one message with one tracked link (token ``tok<contact id>``)."""
    from db.database import database
    from db.models import Campaign, CampaignStep, utcnow

    with connected(db_url):
        with database.atomic():
            campaign = Campaign.create(slug="burst", name="Burst")
            step = CampaignStep.create(campaign=campaign.id, position=0, channel="sms", delay_s=0, body="x")
            for sql in _SEED_SQL:
                database.execute_sql(sql.format(n=n, campaign=campaign.id, step=step.id), {"now": utcnow()})
        database.execute_sql("ANALYZE")


def signed_clicks(n: int) -> list[Request]:
    webhook, now, run_id = Webhook(SECRET), dt.datetime.now(dt.UTC), uuid.uuid4().hex[:8]
    requests = []
    for i in range(1, n + 1):
        event_id = f"click_{run_id}_{i}"
        body, signature = signed_click(webhook, event_id, now, f"tok{i}")
        requests.append(({"webhook-id": event_id, "webhook-timestamp": str(int(now.timestamp())),
                          "webhook-signature": signature, "content-type": "application/json"}, body))
    return requests


def processing_state() -> tuple[int, int]:
    """(click attributions, events not yet processed), on this process's open connection."""
    from db.models import Attribution, InboundEvent

    return (Attribution.select().where(Attribution.kind == "click").count(),
            InboundEvent.select().where(InboundEvent.status == "pending").count())


def attributed_to_their_sends(db_url: str) -> int:
    """Attributions whose send is the one that carried the clicked link."""
    from db.models import Attribution, TrackedLink

    with connected(db_url):
        return (Attribution.select().join(TrackedLink, on=(TrackedLink.send == Attribution.send))
                .where(Attribution.kind == "click", TrackedLink.contact == Attribution.contact).count())


def lead_burst(db_url: str, daemon: DaemonProcess, simulator: SimulatorProcess, requests: list[Request],
               connections: int) -> dict[str, Any]:
    """The leads posted at once to a running daemon: posting figures, then the time from the first
    post until all are enrolled and until all first messages are delivered."""
    return post_and_watch(db_url, daemon, simulator, seed_campaign(db_url), requests, connections, "burst/leads")


def run(clicks: int = 10_000, connections: int = 64, leads: int | None = None, latency_ms: float = 200) -> Section:
    """``leads`` (default: as many as clicks): the burst of contact.upsert leads with enrolment in a
    one-step SMS campaign posted to the same daemon once the clicks are attributed, its messages sent
    to the simulator (``latency_ms``, limits lifted)."""
    leads = clicks if leads is None else leads
    log(f"burst: signing {clicks} click events and {leads} leads")
    requests = signed_clicks(clicks)
    lead_requests = signed_leads(leads)

    log(f"burst: anchor, the same {clicks} posts to a bare aiohttp endpoint")
    port = free_port()
    bare = subprocess.Popen([sys.executable, str(REPO / "ops" / "bench" / "bare_aiohttp.py"), str(port)])
    try:
        wait_port(port)
        anchor = post_all(f"http://127.0.0.1:{port}/webhooks/bench", requests, connections)
    finally:
        bare.terminate()
        bare.wait(10)
    log(f"burst: anchor posted in {anchor['post_s']:.2f}s ({anchor['posts_per_s']:.0f}/s)")

    with tempfile.TemporaryDirectory(prefix="retentiond-burst-") as tmp:
        workdir = Path(tmp)
        with scratch_services("postgres", workdir) as (db_url, amqp_url):
            simulator = SimulatorProcess(workdir, latency_ms=latency_ms).start()
            daemon = None
            try:
                env = base_env(DATABASE_URL=db_url, SOURCE_BENCH_SECRET=SECRET, BROKER_URL=amqp_url,
                               RATE_SMS="unlimited", CONCURRENCY_SMS="512", DAILY_CAP="0", QUIET_HOURS="off",
                               **simulator.provider_env())
                assert cli("migrate", env=env).returncode == 0
                seed(db_url, clicks)
                daemon = DaemonProcess(env, workdir, "--processes", "2", name="burst").start()
                log(f"burst: {clicks} tracked links seeded; posting the clicks")
                started = time.monotonic()
                ours = post_all(f"http://127.0.0.1:{daemon.port}/webhooks/bench", requests, connections)
                log(f"burst: posted in {ours['post_s']:.2f}s ({ours['posts_per_s']:.0f}/s); waiting for processing")
                progress = Ticker()
                with connected(db_url):  # one connection for the whole poll, not one per look
                    while True:
                        attributed, pending = processing_state()
                        if attributed >= clicks and pending == 0:
                            break
                        progress(f"burst: {attributed}/{clicks} attributed, {pending} pending")
                        if time.monotonic() - started > 300:
                            raise RuntimeError(f"only {attributed} of {clicks} clicks attributed in 5 minutes")
                        time.sleep(0.05)
                ours["all_attributed_s"] = time.monotonic() - started
                ours["attributed"] = attributed
                ours["attributed_to_their_send"] = attributed_to_their_sends(db_url)
                log(f"burst: all {clicks} attributed {ours['all_attributed_s']:.2f}s after the first post; "
                    f"posting {leads} leads")
                lead_run = lead_burst(db_url, daemon, simulator, lead_requests, connections)
                assert daemon.stop() == 0
            finally:
                if daemon is not None:
                    daemon.kill()
                simulator.stop()
    log(f"burst: all {leads} leads enrolled {lead_run['all_enrolled_s']:.2f}s, delivered "
        f"{lead_run['all_delivered_s']:.2f}s after the first post")

    table = ["| run | posting time | posts/s | vs anchor | p50 | p99 | first post -> all processed (attributed, "
             "enrolled) | -> all first messages delivered | processed/s overall | answers |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| bare aiohttp JSON endpoint (anchor, {clicks:,} clicks, nothing stored) | {anchor['post_s']:.2f} s | "
             f"{anchor['posts_per_s']:.0f} | 1.00 | {anchor['p50_ms']:.1f} ms | {anchor['p99_ms']:.1f} ms | - | - | - | "
             f"{anchor['statuses']} |",
             f"| retentiond + postgres, {clicks:,} clicks | {ours['post_s']:.2f} s | {ours['posts_per_s']:.0f} | "
             f"{ours['posts_per_s'] / anchor['posts_per_s']:.2f} | {ours['p50_ms']:.1f} ms | {ours['p99_ms']:.1f} ms "
             f"| {ours['all_attributed_s']:.2f} s | - | {clicks / ours['all_attributed_s']:.0f} | {ours['statuses']} |",
             f"| retentiond + postgres, {leads:,} contact.upsert leads with enrolment | {lead_run['post_s']:.2f} s | "
             f"{lead_run['posts_per_s']:.0f} | {lead_run['posts_per_s'] / anchor['posts_per_s']:.2f} | "
             f"{lead_run['p50_ms']:.1f} ms | {lead_run['p99_ms']:.1f} ms | {lead_run['all_enrolled_s']:.2f} s | "
             f"{lead_run['all_delivered_s']:.2f} s | {leads / lead_run['all_delivered_s']:.0f} | "
             f"{lead_run['statuses']} |"]
    section = Section(name="burst", title=f"Webhook burst: {clicks:,} click events, then {leads:,} leads, "
                                          f"{connections} connections",
                      table=table, figures={"anchor_bare_aiohttp": anchor, "retentiond": ours, "clicks": clicks,
                                            "leads": lead_run, "connections": connections,
                                            "provider_latency_ms": latency_ms})
    section.checks[f"202s == {clicks}"] = ours["statuses"] == {"202": clicks}
    section.checks[f"attributions == {clicks}"] = ours["attributed"] == clicks
    section.checks["each attributed to the send that carried its link"] = ours["attributed_to_their_send"] == clicks
    section.checks[f"leads: 202s == {leads}"] = lead_run["statuses"] == {"202": leads}
    section.checks[f"leads: enrolments == {leads}"] = lead_run["enrolments"] == leads
    section.checks[f"leads: simulator received == {leads}"] = lead_run["simulator_received"] == leads
    section.checks["leads: duplicates == 0"] = lead_run["duplicates"] == 0
    return section


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--leads", type=int, default=None, help="leads posted after the clicks (default: as many)")
    parser.add_argument("--out", default="var/bench-burst.json")
    args = parser.parse_args()
    section = run(args.clicks, args.connections, args.leads)
    return report_alone(section, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
