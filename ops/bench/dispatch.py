"""Dispatch benchmark: N sends end to end through RabbitMQ at the provider simulator (200 ms per
call, limits lifted), next to bare Dramatiq draining N no-op messages on the same broker, same run.

    python ops/bench/dispatch.py --sends 50000 --db postgres   (make bench-dispatch)

Ours: N contacts enrolled at once in a one-step SMS campaign (Twilio adapter -> simulator); the
clock runs from the enrolments' commit to the simulator's N-th delivery, so it covers planning,
rendering, the outbox relay, RabbitMQ, the channel actor's claims and checks, the provider calls and
the recording. Reported: sends/s, planned->delivered p50/p99 (send created_at -> finished_at),
CPU seconds per 1,000 sends (daemon and workers), peak RSS of the daemon's process tree, and the
simulator's received/duplicates checks. Prints a markdown table and writes a JSON file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench.common import (  # noqa: E402
    REPO,
    RssSampler,
    Section,
    Target,
    Ticker,
    children_cpu_s,
    clean_up_on_sigterm,
    connected,
    drop_vhost,
    log,
    percentile,
    rabbitmq_vhost,
    report_alone,
    scratch_services,
)
from ops.harness.daemon import DaemonProcess, base_env, cli  # noqa: E402
from ops.harness.simulator_process import SimulatorProcess  # noqa: E402

NOOP_MODULE = REPO / "ops" / "bench" / "noop_actor.py"


# -- the anchor ------------------------------------------------------------------------------------


def bare_dramatiq(n: int, processes: int, threads: int) -> dict[str, float]:
    vhost, url = rabbitmq_vhost()
    try:
        env = {**os.environ, "BENCH_AMQP_URL": url, "PYTHONPATH": str(REPO)}
        enqueue = subprocess.run([sys.executable, str(NOOP_MODULE), "enqueue", str(n)], env=env,
                                 capture_output=True, text=True, check=True)
        enqueue_s = float(enqueue.stdout.strip())
        cpu_before = children_cpu_s()
        started = time.monotonic()
        worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "ops.bench.noop_actor", "--processes",
                                   str(processes), "--threads", str(threads)], env=env, cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            remaining = int(subprocess.run([sys.executable, str(NOOP_MODULE), "depth"], env=env,
                                           capture_output=True, text=True, check=True).stdout)
            if remaining == 0:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        worker.terminate()
        worker.wait(30)
        return {"messages": n, "drain_per_s": n / elapsed, "enqueue_per_s": n / enqueue_s,
                "cpu_s_per_1000": (children_cpu_s() - cpu_before) / n * 1000}
    finally:
        drop_vhost(vhost)


# -- ours ------------------------------------------------------------------------------------------


def seed(db_url: str, n: int) -> int:
    """N contacts and a one-step SMS campaign; returns the campaign id. Not timed."""
    from db.bulk import insert_many
    from db.models import Campaign, CampaignStep, Contact, database

    with connected(db_url):
        with database.atomic():
            campaign = Campaign.create(slug="bench", name="Bench")
            CampaignStep.create(campaign=campaign.id, position=0, channel="sms", delay_s=0,
                                body="Hi {{ contact.name }}, your code is {{ contact.attributes.code }}")
            rows = [{"external_id": f"b{i}", "phone": f"+1201{i:07d}", "name": f"Person {i}",
                     "attributes": {"code": i}} for i in range(n)]
            for start in range(0, n, 2000):
                insert_many(Contact, rows[start:start + 2000]).execute()
        return int(campaign.id)


def enrol_all(db_url: str, campaign_id: int) -> None:
    from peewee import Value

    from db.models import Contact, Enrolment, database, utcnow

    with connected(db_url):
        now = utcnow()
        with database.atomic():
            query = Contact.select(Contact.id, Value(campaign_id), Value("active"), Value(0), Value(now), Value(now))
            Enrolment.insert_from(query, [Enrolment.contact, Enrolment.campaign, Enrolment.status,
                                          Enrolment.next_position, Enrolment.next_due_at,
                                          Enrolment.enrolled_at]).execute()


def delivery_latencies(db_url: str) -> tuple[float, float]:
    from db.models import Send

    with connected(db_url):
        latencies = sorted((s.finished_at - s.created_at).total_seconds()
                           for s in Send.select(Send.created_at, Send.finished_at).where(Send.status == "sent"))
    return percentile(latencies, 0.50), percentile(latencies, 0.99)


def retentiond(n: int, kind: str, processes: int, threads: int, latency_ms: float, workdir: Path) -> dict:
    with scratch_services(kind, workdir) as (db_url, amqp_url):
        simulator = SimulatorProcess(workdir, latency_ms=latency_ms).start()
        daemon: DaemonProcess | None = None
        try:
            env = base_env(DATABASE_URL=db_url, BROKER_URL=amqp_url, RATE_SMS="unlimited", CONCURRENCY_SMS="512",
                           DAILY_CAP="0", QUIET_HOURS="off", DB_POOL_SIZE="4",
                           **simulator.provider_env())
            assert cli("migrate", env=env).returncode == 0
            campaign_id = seed(db_url, n)
            log(f"dispatch/{kind}: {n} contacts seeded; starting the daemon ({processes} x {threads})")
            cpu_before = children_cpu_s()
            daemon = DaemonProcess(env, workdir, "--processes", str(processes), "--threads", str(threads),
                                   name=f"bench-{kind}").start()
            assert daemon.process is not None
            sampler = RssSampler(daemon.process.pid)
            sampler.start()
            started = time.monotonic()
            enrol_all(db_url, campaign_id)
            progress = Ticker()
            while True:
                received = simulator.stats()["received"]
                if received >= n:
                    break
                progress(f"dispatch/{kind}: {received}/{n} delivered after {time.monotonic() - started:.0f}s")
                if time.monotonic() - started > 600:
                    raise RuntimeError(f"only {received} of {n} delivered in 10 minutes")
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            peak_rss_mib = sampler.stop()
            stats = simulator.stats()
            assert daemon.stop() == 0
            cpu = children_cpu_s() - cpu_before
            p50, p99 = delivery_latencies(db_url)
            return {"sends": n, "database": kind, "sends_per_s": n / elapsed, "elapsed_s": elapsed,
                    "p50_s": p50, "p99_s": p99, "cpu_s_per_1000": cpu / n * 1000, "peak_rss_mib": peak_rss_mib,
                    "simulator_received": stats["received"], "duplicates": stats["duplicates"]}
        finally:
            if daemon is not None:
                daemon.kill()
            simulator.stop()


TARGET_SENDS_PER_S = 1000


def run(sends: int = 50_000, databases: tuple[str, ...] = ("postgres", "sqlite"), processes: int = 2,
        threads: int = 8, latency_ms: float = 200) -> Section:
    log(f"dispatch: anchor, bare Dramatiq draining {sends} no-op messages")
    anchor = bare_dramatiq(sends, processes, threads)
    log(f"dispatch: anchor {anchor['drain_per_s']:.0f} messages/s")
    runs = []
    with tempfile.TemporaryDirectory(prefix="retentiond-bench-") as tmp:
        for kind in databases:
            runs.append(retentiond(sends, kind, processes, threads, latency_ms, Path(tmp)))
            log(f"dispatch/{kind}: {runs[-1]['sends_per_s']:.0f} sends/s")

    table = ["| run | sends/s | vs bare Dramatiq drain | p50 planned->delivered | p99 | CPU s / 1k sends | "
             "peak RSS | received | duplicates |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| bare Dramatiq no-op (anchor) | {anchor['drain_per_s']:.0f} msg/s | 1.00 | - | - | "
             f"{anchor['cpu_s_per_1000']:.2f} | - | - | - |"]
    for r in runs:
        table.append(f"| retentiond, RabbitMQ + {r['database']} | {r['sends_per_s']:.0f} | "
                     f"{r['sends_per_s'] / anchor['drain_per_s']:.2f} | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s | "
                     f"{r['cpu_s_per_1000']:.2f} | {r['peak_rss_mib']:.0f} MiB | {r['simulator_received']} | "
                     f"{r['duplicates']} |")
    section = Section(
        name="dispatch",
        title=f"Dispatch: {sends} sends, provider latency {latency_ms:g} ms, {processes} processes x {threads} threads",
        table=table, figures={"anchor_bare_dramatiq": anchor, "runs": runs, "provider_latency_ms": latency_ms})
    for r in runs:
        section.checks[f"{r['database']}: simulator received == {sends}"] = r["simulator_received"] == sends
        section.checks[f"{r['database']}: duplicates == 0"] = r["duplicates"] == 0
        section.targets.append(Target(f"dispatch >= {TARGET_SENDS_PER_S:,} sends/s end to end ({r['database']})",
                                      f"{r['sends_per_s']:,.0f} sends/s", r["sends_per_s"] >= TARGET_SENDS_PER_S))
    return section


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=50_000)
    parser.add_argument("--db", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--out", default="var/bench-dispatch.json")
    args = parser.parse_args()
    section = run(args.sends, ("postgres", "sqlite") if args.db == "both" else (args.db,), args.processes,
                  args.threads, args.latency_ms)
    return report_alone(section, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
