"""Channel isolation: an unlimited channel (email) beside a slow one (sms limited to 20/s with a
backlog of 5,000), on RabbitMQ + PostgreSQL, simulator at 200 ms, 2 processes x 8 threads. A slow
channel's backlog must not take the worker threads or the broker from the others.

    python ops/bench/isolation.py [--emails 20000] [--backlog 5000] [--rate 20] [--seconds 30]

One daemon, three phases. First the anchor: M contacts enrolled at once in a one-step email
campaign, alone; the clock runs from the enrolments' commit to the simulator's M-th email. Then the
5,000 sms enrolments, and once sms is sending, M more email enrolments, timed the same way. Then,
once ``seconds`` of sms are measured, the rest of the sms backlog is cancelled (its planned sends
deleted), and once none is in flight, M more emails alone again. The anchor is the mean of the two
runs alone, which bracket the run beside sms: each run leaves M sent rows (and their dead versions)
behind, and a second run alone measured 0.90 of the first, a drift that is not the sms backlog's.
Reported: email sends/s alone (both) and beside the backlog (and the ratio), sms sends/s over
``seconds`` from its first send (from the send log's finished_at, as ``rate_limit`` measures) and
while the second email run lasted; checks that every email arrived once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench.common import (  # noqa: E402
    Section,
    Target,
    Ticker,
    clean_up_on_sigterm,
    connected,
    log,
    report_alone,
    scratch_services,
)
from ops.harness.daemon import DaemonProcess, base_env, cli  # noqa: E402
from ops.harness.simulator_process import SimulatorProcess  # noqa: E402

TARGET_EMAIL_RATIO = 0.90
TOLERANCE = 0.05
CAMPAIGNS = {"alone": "email", "sms": "sms", "beside": "email", "after": "email"}  # contacts' prefix -> channel


def seed(db_url: str, emails: int, backlog: int) -> dict[str, int]:
    """Contacts for each phase (external ids ``alone-``, ``sms-``, ``beside-``) and a one-step
    campaign for each; returns the campaign ids by phase. Not timed."""
    from db.bulk import insert_many
    from db.models import Campaign, CampaignStep, Contact, database

    ids = {}
    with connected(db_url):
        with database.atomic():
            for phase, channel in CAMPAIGNS.items():
                campaign = Campaign.create(slug=phase, name=phase.title())
                CampaignStep.create(campaign=campaign.id, position=0, channel=channel, delay_s=0,
                                    subject="News" if channel == "email" else None, body="Hi {{ contact.name }}")
                ids[phase] = int(campaign.id)
                n = backlog if channel == "sms" else emails
                rows = [{"external_id": f"{phase}-{i}", "name": f"Person {i}",
                         **({"phone": f"+1415{2_000_000 + i}"} if channel == "sms"
                            else {"email": f"{phase}-{i}@example.com"})} for i in range(n)]
                for start in range(0, n, 2000):
                    insert_many(Contact, rows[start:start + 2000]).execute()
        database.execute_sql("ANALYZE")
    return ids


def enrol(db_url: str, phase: str, campaign_id: int) -> Any:
    """Enrols the phase's contacts at once; returns the commit's time (database clock, UTC)."""
    from peewee import Value

    from db.models import Contact, Enrolment, database, utcnow

    with connected(db_url):
        now = utcnow()
        with database.atomic():
            query = (Contact.select(Contact.id, Value(campaign_id), Value("active"), Value(0), Value(now), Value(now))
                     .where(Contact.external_id.startswith(f"{phase}-")))
            Enrolment.insert_from(query, [Enrolment.contact, Enrolment.campaign, Enrolment.status,
                                          Enrolment.next_position, Enrolment.next_due_at,
                                          Enrolment.enrolled_at]).execute()
        return utcnow()


def wait_channel(simulator: SimulatorProcess, channel: str, count: int, label: str, timeout_s: float = 600) -> float:
    """Seconds until the simulator has received ``count`` messages on ``channel``."""
    started, progress = time.monotonic(), Ticker()
    while True:
        received = simulator.stats()["by_channel"].get(channel, 0)
        if received >= count:
            return time.monotonic() - started
        progress(f"isolation: {label}: {received}/{count} {channel} after {time.monotonic() - started:.0f}s")
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"isolation: {label}: only {received} of {count} {channel} in {timeout_s:.0f}s")
        time.sleep(0.05)


def sms_finished(db_url: str) -> list[Any]:
    from db.models import Send

    with connected(db_url):
        return sorted(s.finished_at for s in Send.select(Send.finished_at)
                      .where(Send.channel == "sms", Send.status == "sent", Send.finished_at.is_null(False)))


def cancel_sms_backlog(db_url: str, timeout_s: float = 60) -> int:
    """Deletes the sms sends still planned and waits until none is in flight; returns how many went."""
    from db.models import Send

    with connected(db_url):
        cancelled = Send.delete().where(Send.channel == "sms", Send.status == "planned").execute()
        deadline = time.monotonic() + timeout_s
        while Send.select().where(Send.channel == "sms", Send.status.in_(("queued", "sending", "retrying"))).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"isolation: sms still in flight {timeout_s:.0f}s after its backlog was cancelled")
            time.sleep(0.1)
    return int(cancelled)


def run(emails: int = 20_000, backlog: int = 5_000, rate: int = 20, seconds: float = 30, processes: int = 2,
        threads: int = 8, latency_ms: float = 200) -> Section:
    from db.models import utcnow

    if backlog < rate * seconds * 1.2:
        raise ValueError(f"a backlog of {backlog} runs dry before {seconds:g} s at {rate}/s")
    with tempfile.TemporaryDirectory(prefix="retentiond-isolation-") as tmp:
        workdir = Path(tmp)
        with scratch_services("postgres", workdir) as (db_url, amqp_url):
            simulator = SimulatorProcess(workdir, latency_ms=latency_ms).start()
            daemon: DaemonProcess | None = None
            try:
                env = base_env(DATABASE_URL=db_url, BROKER_URL=amqp_url, RATE_SMS=f"{rate}/s", RATE_EMAIL="unlimited",
                               CONCURRENCY_EMAIL="512", DAILY_CAP="0", QUIET_HOURS="off", DB_POOL_SIZE="4",
                               **simulator.provider_env())
                assert cli("migrate", env=env).returncode == 0
                campaigns = seed(db_url, emails, backlog)
                log(f"isolation: {emails} + {emails} email and {backlog} sms contacts seeded; starting the daemon")
                daemon = DaemonProcess(env, workdir, "--processes", str(processes), "--threads", str(threads),
                                       name="isolation").start()

                log(f"isolation: anchor, {emails} emails alone")
                enrol(db_url, "alone", campaigns["alone"])
                alone_s = wait_channel(simulator, "email", emails, "email alone")
                log(f"isolation: email alone {emails / alone_s:.0f}/s; the sms backlog of {backlog} at {rate}/s")

                sms_started = time.monotonic()
                enrol(db_url, "sms", campaigns["sms"])
                wait_channel(simulator, "sms", rate, "sms starting")  # the backlog is there and paced
                log(f"isolation: sms sending; {emails} emails beside it")
                beside_from = enrol(db_url, "beside", campaigns["beside"])
                beside_s = wait_channel(simulator, "email", 2 * emails, "email beside sms")
                beside_to = utcnow()
                log(f"isolation: email beside sms {emails / beside_s:.0f}/s")
                while time.monotonic() - sms_started < seconds + 2:  # the sms window, + its first relay
                    time.sleep(0.2)
                times = sms_finished(db_url)
                cancelled = cancel_sms_backlog(db_url)
                log(f"isolation: {cancelled} sms cancelled; {emails} emails alone again")
                enrol(db_url, "after", campaigns["after"])
                after_s = wait_channel(simulator, "email", 3 * emails, "email alone again")
                log(f"isolation: email alone again {emails / after_s:.0f}/s")
                stats = simulator.stats()
                assert daemon.stop() == 0
            finally:
                if daemon is not None:
                    daemon.kill()
                simulator.stop()

    t0 = times[0]
    window = [t for t in times if (t - t0).total_seconds() < seconds]
    sms_per_s = len(window) / seconds
    during = [t for t in times if beside_from <= t <= beside_to]
    sms_during_per_s = len(during) / max((beside_to - beside_from).total_seconds(), 1e-9)
    before_per_s, after_per_s, beside_per_s = emails / alone_s, emails / after_s, emails / beside_s
    alone_per_s = (before_per_s + after_per_s) / 2
    ratio, error = beside_per_s / alone_per_s, (sms_per_s - rate) / rate
    figures = {"emails": emails, "backlog": backlog, "rate": rate, "seconds": seconds, "provider_latency_ms": latency_ms,
               "email_alone_per_s": alone_per_s, "email_alone_before_per_s": before_per_s,
               "email_alone_after_per_s": after_per_s, "email_beside_per_s": beside_per_s, "email_ratio": ratio,
               "sms_per_s": sms_per_s, "sms_error": error, "sms_during_email_per_s": sms_during_per_s,
               "sms_sent": len(times), "sms_cancelled": cancelled, "email_received": stats["by_channel"].get("email", 0),
               "duplicates": stats["duplicates"]}
    table = ["| run | email sends/s | vs email alone | sms sends/s | sms vs configured |",
             "|---|---|---|---|---|",
             f"| email alone before, {emails:,} emails | {before_per_s:.0f} | {before_per_s / alone_per_s:.2f} | - | - |",
             f"| email alone after (the sms backlog cancelled), {emails:,} emails | {after_per_s:.0f} | "
             f"{after_per_s / alone_per_s:.2f} | - | - |",
             f"| anchor: mean of the two runs alone | {alone_per_s:.0f} | 1.00 | - | - |",
             f"| email beside sms at {rate}/s with a {backlog:,} backlog, {emails:,} emails | {beside_per_s:.0f} | "
             f"{ratio:.2f} | {sms_during_per_s:.1f} (while the emails ran) | "
             f"{100 * (sms_during_per_s - rate) / rate:+.1f}% |",
             f"| sms, {seconds:g} s from its first send | - | - | {sms_per_s:.1f} | {100 * error:+.1f}% |"]
    section = Section(name="isolation",
                      title=f"Channel isolation: email unlimited beside sms at {rate}/s with a {backlog:,} backlog, "
                            f"provider latency {latency_ms:g} ms, {processes} processes x {threads} threads",
                      table=table, figures=figures)
    section.checks[f"email received == {3 * emails}"] = figures["email_received"] == 3 * emails
    section.checks["duplicates == 0"] = stats["duplicates"] == 0
    section.checks["the sms backlog outlasted the window"] = len(times) > len(window) and cancelled > 0
    section.targets.append(Target(f"email beside the sms backlog >= {TARGET_EMAIL_RATIO:.0%} of email alone",
                                  f"{beside_per_s:,.0f}/s vs {alone_per_s:,.0f}/s ({ratio:.2f})",
                                  ratio >= TARGET_EMAIL_RATIO))
    section.targets.append(Target(f"sms within ±{TOLERANCE:.0%} of {rate}/s", f"{sms_per_s:.1f}/s ({100 * error:+.1f}%)",
                                  abs(error) <= TOLERANCE))
    return section


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", type=int, default=20_000)
    parser.add_argument("--backlog", type=int, default=5_000)
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--out", default="var/bench-isolation.json")
    args = parser.parse_args()
    section = run(args.emails, args.backlog, args.rate, args.seconds, latency_ms=args.latency_ms)
    return report_alone(section, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
