"""Scale: the same due work (1,000 enrolment steps) on databases of 10k, 100k and 1M contacts, each
contact enrolled, each with a send in its history (half of them within the last 24 h, so the daily
cap query has rows to count). PostgreSQL, the production engine.

    python ops/bench/scale.py [--sizes 10000,100000,1000000] [--due 1000]

For each size, a real daemon (2 worker processes) runs on the seeded database with the provider
simulator; from its own job history (``job_run``):

* idle tick: a scheduling tick with nothing due (median) - what every tick costs, all day long;
* busy tick: the tick that planned and relayed the due steps, and its cost per due step;
* daemon RSS: the peak resident memory of the daemon's process tree while it ran.

In the benchmark's own process, on the same database: cap checks per second (the send-time checks:
suppressions, consent, daily cap, weekly cap, cooldown, quiet hours) for batches of 500 sends to
random contacts, and the database size. The anchor is the smallest size: the ratios show whether
the cost per tick follows the due work (flat) or the number of contacts (it would grow 100x).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench.common import (  # noqa: E402
    RssSampler,
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

CHECK_BATCH = 500
CHECK_BATCHES = 10

# Set-based seeding: one INSERT ... SELECT per table, so that 1M contacts take seconds, not minutes.
# Due enrolments are spread over the id range (every k-th contact), not packed at its start.
_SEED_SQL = [
    """INSERT INTO contact (external_id, email, phone, name, timezone, attributes, consent, created_at, updated_at)
       SELECT 'c' || g, 'c' || g || '@example.com', '+1202' || lpad(g::text, 7, '0'), 'Person ' || g,
              (ARRAY['UTC', 'Europe/Paris', 'America/New_York'])[1 + g %% 3], '{{}}', '{{}}', %(now)s, %(now)s
       FROM generate_series(1, {n}) AS g""",
    """INSERT INTO enrolment (contact_id, campaign_id, status, next_position, next_due_at, enrolled_at)
       SELECT id, {campaign}, 'active', 0,
              CASE WHEN id %% {every} = 0 THEN %(now)s - interval '1 second'
                   ELSE %(now)s + interval '1 hour' + (id %% 5000) * interval '1 minute' END,
              %(now)s
       FROM contact""",
    """INSERT INTO send (idempotency_key, channel, status, contact_id, campaign_id, step_id, recipient, body,
                         attempts, deferrals, due_at, created_at, finished_at)
       SELECT 'h' || id, 'sms', 'sent', id, {campaign}, {step}, phone, 'earlier', 1, 0,
              %(now)s - (id %% 172800) * interval '1 second', %(now)s - (id %% 172800) * interval '1 second',
              %(now)s - (id %% 172800) * interval '1 second'
       FROM contact""",
]


def seed(db_url: str, n: int, due: int) -> tuple[int, int]:
    """N contacts, each enrolled and with one earlier send; ``due`` of the enrolments due now."""
    from db.database import database
    from db.models import Campaign, CampaignStep, utcnow

    with connected(db_url):
        now = utcnow()
        with database.atomic():
            campaign = Campaign.create(slug="scale", name="Scale", limits={"weekly_cap": 5})
            step = CampaignStep.create(campaign=campaign.id, position=0, channel="sms", delay_s=0,
                                       body="Hi {{ contact.name }}, see https://example.com/offer")
            for sql in _SEED_SQL:
                database.execute_sql(sql.format(n=n, every=max(1, n // due), campaign=campaign.id, step=step.id),
                                     {"now": now})
        database.execute_sql("VACUUM ANALYZE")
        return int(campaign.id), int(step.id)


def cap_checks_per_s(db_url: str, n: int, campaign_id: int) -> float:
    """The send-time checks for CHECK_BATCHES batches of CHECK_BATCH sends to random contacts."""
    from db.database import db_session
    from db.models import utcnow
    from engine.checks import Candidate, SendChecks
    from ground.settings import load_settings

    settings = load_settings({"RETENTIOND_DATABASE_URL": db_url, "RETENTIOND_DAILY_CAP": "3",
                              "RETENTIOND_COOLDOWN_S": "3600"})
    checks = SendChecks(settings)
    picker = random.Random(n)
    batches = [[Candidate(send_id=i, channel="sms", contact_id=contact_id, campaign_id=campaign_id,
                          recipient=f"+1202{contact_id:07d}")
                for i, contact_id in enumerate(picker.sample(range(1, n + 1), CHECK_BATCH))]
               for _ in range(CHECK_BATCHES + 1)]
    with connected(db_url):
        with db_session():
            checks.evaluate(batches[0], utcnow())  # warm: connection, statement plans
            started = time.perf_counter()
            for batch in batches[1:]:
                verdicts = checks.evaluate(batch, utcnow())
                assert len(verdicts) == CHECK_BATCH
            return CHECK_BATCH * CHECK_BATCHES / (time.perf_counter() - started)


def job_history(db_url: str) -> tuple[list[float], list[tuple[float, int]]]:
    """(durations of idle scheduling ticks, (duration, items) of busy ones), in seconds."""
    from db.models import JobRun

    with connected(db_url):
        idle, busy = [], []
        for run in JobRun.select().where(JobRun.job == "scheduling-tick", JobRun.outcome == "ok"):
            seconds = (run.finished_at - run.started_at).total_seconds()
            if run.items:
                busy.append((seconds, run.items))
            else:
                idle.append(seconds)
        return idle, busy


def database_mib(db_url: str) -> float:
    from db.database import database

    with connected(db_url):
        return float(database.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0]) / 2 ** 20


def one_size(n: int, due: int, idle_ticks: int, workdir: Path) -> dict[str, Any]:
    with scratch_services("postgres", workdir) as (db_url, amqp_url):
        simulator = SimulatorProcess(workdir, latency_ms=20).start()
        daemon: DaemonProcess | None = None
        try:
            env = base_env(DATABASE_URL=db_url, BROKER_URL=amqp_url, RATE_SMS="unlimited", DAILY_CAP="0",
                           QUIET_HOURS="off", **simulator.provider_env())
            assert cli("migrate", env=env).returncode == 0
            started = time.monotonic()
            campaign_id, _ = seed(db_url, n, due)
            seed_s = time.monotonic() - started
            log(f"scale/{n:,}: seeded in {seed_s:.1f}s; cap checks")
            checks_per_s = cap_checks_per_s(db_url, n, campaign_id)
            log(f"scale/{n:,}: {checks_per_s:,.0f} cap checks/s; daemon on it")
            daemon = DaemonProcess(env, workdir, "--processes", "2", name=f"scale-{n}").start()
            assert daemon.process is not None
            sampler = RssSampler(daemon.process.pid)
            sampler.start()
            progress = Ticker()
            deadline = time.monotonic() + 120
            while (received := simulator.stats()["received"]) < due:
                progress(f"scale/{n:,}: {received}/{due} due steps sent")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {received} of {due} due steps sent in 2 minutes")
                time.sleep(0.1)
            while len(job_history(db_url)[0]) < idle_ticks and time.monotonic() < deadline:
                time.sleep(0.5)
            rss_mib = sampler.stop()
            assert daemon.stop() == 0
            idle, busy = job_history(db_url)
            busy_s = sum(seconds for seconds, _ in busy)
            return {"contacts": n, "due": due, "seed_s": seed_s, "idle_tick_ms": statistics.median(idle) * 1000,
                    "idle_ticks": len(idle), "busy_tick_ms": busy_s * 1000, "busy_ticks": len(busy),
                    "busy_ms_per_due_step": busy_s * 1000 / due, "cap_checks_per_s": checks_per_s,
                    "database_mib": database_mib(db_url), "daemon_peak_rss_mib": rss_mib,
                    "delivered": simulator.stats()["received"], "duplicates": simulator.stats()["duplicates"]}
        finally:
            if daemon is not None:
                daemon.kill()
            simulator.stop()


def run(sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000), due: int = 1000, idle_ticks: int = 5) -> Section:
    results = []
    with tempfile.TemporaryDirectory(prefix="retentiond-scale-") as tmp:
        for n in sizes:
            results.append(one_size(n, due, idle_ticks, Path(tmp)))
            r = results[-1]
            log(f"scale/{n:,}: idle tick {r['idle_tick_ms']:.1f} ms, busy tick {r['busy_tick_ms']:.0f} ms, "
                f"RSS {r['daemon_peak_rss_mib']:.0f} MiB, database {r['database_mib']:.0f} MiB")
    base = results[0]
    table = ["| contacts | idle tick | busy tick (plan + relay the due steps) | per due step | cap checks/s | "
             "database | daemon peak RSS | seeding |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        anchor = " (anchor)" if r is base else ""
        ratio = "" if r is base else " (x{:.2f})"
        table.append(
            f"| {r['contacts']:,}{anchor} | {r['idle_tick_ms']:.1f} ms{ratio.format(r['idle_tick_ms'] / base['idle_tick_ms'])} "
            f"| {r['busy_tick_ms']:.0f} ms{ratio.format(r['busy_tick_ms'] / base['busy_tick_ms'])} "
            f"| {r['busy_ms_per_due_step']:.2f} ms | "
            f"{r['cap_checks_per_s']:,.0f}{ratio.format(r['cap_checks_per_s'] / base['cap_checks_per_s'])} | "
            f"{r['database_mib']:,.0f} MiB | "
            f"{r['daemon_peak_rss_mib']:.0f} MiB{ratio.format(r['daemon_peak_rss_mib'] / base['daemon_peak_rss_mib'])} "
            f"| {r['seed_s']:.0f} s |")
    section = Section(name="scale", title=f"Scale: {due:,} due steps among {', '.join(f'{n:,}' for n in sizes)} "
                      f"enrolled contacts (PostgreSQL)", table=table, figures={"sizes": results})
    for r in results:
        section.checks[f"{r['contacts']:,}: every due step sent once"] = \
            r["delivered"] == due and r["duplicates"] == 0
    largest = results[-1]
    growth = largest["contacts"] / base["contacts"]
    # "Flat" means far from proportional: 100x the contacts may cost index depth (log n), not 100x.
    for label, key in (("idle tick", "idle_tick_ms"), ("busy tick", "busy_tick_ms"),
                       ("daemon RSS", "daemon_peak_rss_mib")):
        ratio = largest[key] / base[key]
        section.targets.append(Target(f"{label} flat from {base['contacts']:,} to {largest['contacts']:,} contacts "
                                      f"(x{growth:g} data; flat = under x2)", f"x{ratio:.2f}", ratio < 2))
    ratio = base["cap_checks_per_s"] / largest["cap_checks_per_s"]
    section.targets.append(Target(f"cap checks/s flat from {base['contacts']:,} to {largest['contacts']:,} contacts "
                                  "(flat = slows by under x2)", f"slows by x{ratio:.2f}", ratio < 2))
    return section


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--out", default="var/bench-scale.json")
    args = parser.parse_args()
    section = run(tuple(int(s) for s in args.sizes.split(",")), args.due)
    return report_alone(section, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
