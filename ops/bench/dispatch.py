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
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.daemon import DaemonProcess, base_env, cli  # noqa: E402
from tests.support.simulator import SimulatorProcess  # noqa: E402

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
NOOP_MODULE = REPO / "ops" / "bench" / "noop_actor.py"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rabbitmq_vhost() -> tuple[str, str]:
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    return vhost, f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def drop_vhost(vhost: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(p) for p in fh.read().split())
        except (OSError, StopIteration):
            continue
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))
            time.sleep(0.5)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


def create_database(kind: str, workdir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}"
    name = f"retentiond_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", f'CREATE DATABASE "{name}"'],
                   check=True, capture_output=True)
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    if url.startswith("postgresql"):
        name = url.rsplit("/", 1)[1]
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",
                        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False, capture_output=True)


def seed(db_url: str, n: int) -> int:
    """N contacts and a one-step SMS campaign; returns the campaign id. Not timed."""
    from db.database import close_database, init_database
    from db.models import Campaign, CampaignStep, Contact, database

    init_database(db_url)
    try:
        with database.atomic():
            campaign = Campaign.create(slug="bench", name="Bench")
            CampaignStep.create(campaign=campaign.id, position=0, channel="sms", delay_s=0,
                                body="Hi {{ contact.name }}, your code is {{ contact.attributes.code }}")
            rows = [{"external_id": f"b{i}", "phone": f"+1201{i:07d}", "name": f"Person {i}",
                     "attributes": {"code": i}} for i in range(n)]
            for start in range(0, n, 2000):
                Contact.insert_many(rows[start:start + 2000]).execute()
        return int(campaign.id)
    finally:
        close_database()


def enrol_all(db_url: str, campaign_id: int) -> None:
    from peewee import Value

    from db.database import close_database, init_database
    from db.models import Contact, Enrolment, database, utcnow

    init_database(db_url)
    try:
        now = utcnow()
        with database.atomic():
            query = Contact.select(Contact.id, Value(campaign_id), Value("active"), Value(0), Value(now), Value(now))
            Enrolment.insert_from(query, [Enrolment.contact, Enrolment.campaign, Enrolment.status,
                                          Enrolment.next_position, Enrolment.next_due_at,
                                          Enrolment.enrolled_at]).execute()
    finally:
        close_database()


def delivery_latencies(db_url: str) -> tuple[float, float]:
    from db.database import close_database, init_database
    from db.models import Send

    init_database(db_url)
    try:
        latencies = sorted((s.finished_at - s.created_at).total_seconds()
                           for s in Send.select(Send.created_at, Send.finished_at).where(Send.status == "sent"))
    finally:
        close_database()
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]


def retentiond(n: int, kind: str, processes: int, threads: int, latency_ms: float, workdir: Path) -> dict:
    vhost, amqp_url = rabbitmq_vhost()
    db_url = create_database(kind, workdir)
    simulator = SimulatorProcess(workdir, latency_ms=latency_ms).start()
    daemon: DaemonProcess | None = None
    try:
        env = base_env(DATABASE_URL=db_url, BROKER_URL=amqp_url, RATE_SMS="unlimited", CONCURRENCY_SMS="512",
                       DAILY_CAP="0", QUIET_HOURS="off", DB_POOL_SIZE="4",
                       **simulator.provider_env())
        assert cli("migrate", env=env).returncode == 0
        campaign_id = seed(db_url, n)
        log(f"{kind}: {n} contacts seeded; starting the daemon ({processes} x {threads})")
        cpu_before = children_cpu_s()
        daemon = DaemonProcess(env, workdir, "--processes", str(processes), "--threads", str(threads),
                               name=f"bench-{kind}").start()
        assert daemon.process is not None
        sampler = RssSampler(daemon.process.pid)
        sampler.start()
        started = time.monotonic()
        enrol_all(db_url, campaign_id)
        last_report = 0.0
        while True:
            received = simulator.stats()["received"]
            if received >= n:
                break
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                log(f"{kind}: {received}/{n} delivered after {last_report - started:.0f}s")
            if time.monotonic() - started > 600:
                raise RuntimeError(f"only {received} of {n} delivered in 10 minutes")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        sampler.running = False
        stats = simulator.stats()
        assert daemon.stop() == 0
        cpu = children_cpu_s() - cpu_before
        p50, p99 = delivery_latencies(db_url)
        return {"sends": n, "database": kind, "sends_per_s": n / elapsed, "elapsed_s": elapsed,
                "p50_s": p50, "p99_s": p99, "cpu_s_per_1000": cpu / n * 1000, "peak_rss_mib": sampler.peak_kib / 1024,
                "simulator_received": stats["received"], "duplicates": stats["duplicates"]}
    finally:
        if daemon is not None:
            daemon.kill()
        simulator.stop()
        drop_database(db_url)
        drop_vhost(vhost)


def machine() -> dict[str, object]:
    import dramatiq
    import peewee

    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "dramatiq": dramatiq.__version__, "peewee": peewee.__version__,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=50_000)
    parser.add_argument("--db", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--out", default="var/bench-dispatch.json")
    args = parser.parse_args()

    log(f"anchor: bare Dramatiq draining {args.sends} no-op messages")
    anchor = bare_dramatiq(args.sends, args.processes, args.threads)
    log(f"anchor: {anchor['drain_per_s']:.0f} messages/s")
    runs = []
    with tempfile.TemporaryDirectory(prefix="retentiond-bench-") as tmp:
        for kind in (["postgres", "sqlite"] if args.db == "both" else [args.db]):
            runs.append(retentiond(args.sends, kind, args.processes, args.threads, args.latency_ms, Path(tmp)))
            log(f"{kind}: {runs[-1]['sends_per_s']:.0f} sends/s")

    result = {"machine": machine(), "anchor_bare_dramatiq": anchor, "runs": runs,
              "provider_latency_ms": args.latency_ms}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n### Dispatch: {args.sends} sends, provider latency {args.latency_ms:g} ms, "
          f"{args.processes} processes x {args.threads} threads ({result['machine']['cores']} cores, "
          f"{result['machine']['date']})\n")
    print("| run | sends/s | vs bare Dramatiq drain | p50 planned->delivered | p99 | CPU s / 1k sends | "
          "peak RSS | received | duplicates |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| bare Dramatiq no-op (anchor) | {anchor['drain_per_s']:.0f} msg/s | 1.00 | - | - | "
          f"{anchor['cpu_s_per_1000']:.2f} | - | - | - |")
    for r in runs:
        print(f"| retentiond, RabbitMQ + {r['database']} | {r['sends_per_s']:.0f} | "
              f"{r['sends_per_s'] / anchor['drain_per_s']:.2f} | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s | "
              f"{r['cpu_s_per_1000']:.2f} | {r['peak_rss_mib']:.0f} MiB | {r['simulator_received']} | "
              f"{r['duplicates']} |")
    print(f"\nTarget: >= 1,000 sends/s end to end. JSON: {args.out}")
    ok = all(r["simulator_received"] == args.sends and r["duplicates"] == 0 for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
