"""Rate-limit accuracy: one channel (sms) limited to R/s, a backlog far larger than R x duration,
2 worker processes; halfway through, a second daemon (2 more worker processes) joins on the same
PostgreSQL database and RabbitMQ vhost. The total must stay at R/s: the limiter lives in the
database (GCRA), shared by every process of every daemon.

    python ops/bench/rate_limit.py [--rate 200] [--seconds 30]

Measured from the time each provider call finished, as the send log records it (finished_at),
over [first send, first send + duration). The anchor is the configured rate itself; the figures
are the achieved rate of each half and of the whole run, and the error against the configured rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

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
from ops.bench.dispatch import enrol_all, seed  # noqa: E402
from ops.harness.daemon import DaemonProcess, base_env, cli  # noqa: E402
from ops.harness.simulator_process import SimulatorProcess  # noqa: E402

TOLERANCE = 0.05


def finished_times(db_url: str) -> list:
    from db.models import Send

    with connected(db_url):
        return sorted(s.finished_at for s in Send.select(Send.finished_at)
                      .where(Send.status == "sent", Send.finished_at.is_null(False)))


def run(rate: int = 200, seconds: float = 30, processes: int = 2, threads: int = 8, latency_ms: float = 20,
        db: str = "postgres") -> Section:
    from db.models import utcnow

    backlog = int(rate * seconds * 1.5)  # never runs dry during the measured window
    daemons: list[DaemonProcess] = []
    with tempfile.TemporaryDirectory(prefix="retentiond-ratelimit-") as tmp:
        workdir = Path(tmp)
        with scratch_services(db, workdir) as (db_url, amqp_url):
            simulator = SimulatorProcess(workdir, latency_ms=latency_ms).start()
            try:
                env = base_env(DATABASE_URL=db_url, BROKER_URL=amqp_url, RATE_SMS=f"{rate}/s", DAILY_CAP="0",
                               QUIET_HOURS="off", **simulator.provider_env())
                assert cli("migrate", env=env).returncode == 0
                campaign_id = seed(db_url, backlog)
                log(f"rate-limit: {backlog} sends due, sms limited to {rate}/s, daemon A with {processes} processes")
                daemons.append(DaemonProcess(env, workdir, "--processes", str(processes), "--threads", str(threads),
                                             name="daemon-a").start())
                enrol_all(db_url, campaign_id)
                started = time.monotonic()
                progress = Ticker()
                second_daemon_at = None
                while time.monotonic() - started < seconds + 2:  # + the first send's planning and relay
                    if second_daemon_at is None and time.monotonic() - started >= seconds / 2:
                        log(f"rate-limit: halfway; daemon B joins with {processes} more processes")
                        daemons.append(DaemonProcess(env, workdir, "--processes", str(processes), "--threads",
                                                     str(threads), name="daemon-b").start())
                        second_daemon_at = utcnow()
                        log("rate-limit: daemon B is up")
                    progress(f"rate-limit: {simulator.stats()['received']} sent after {time.monotonic() - started:.0f}s")
                    time.sleep(0.2)
                for daemon in daemons:
                    daemon.stop()
                times = finished_times(db_url)
            finally:
                for daemon in daemons:
                    daemon.kill()
                simulator.stop()

    assert second_daemon_at is not None
    t0 = times[0]
    window = [(t - t0).total_seconds() for t in times if (t - t0).total_seconds() < seconds]
    join_s = (second_daemon_at - t0).total_seconds()
    first = [t for t in window if t < join_s]
    second = [t for t in window if t >= join_s]
    overall = len(window) / seconds
    first_rate = len(first) / join_s
    second_rate = len(second) / (seconds - join_s)
    per_second = Counter(int(t) for t in window)
    error = (overall - rate) / rate

    table = ["| run | sends/s | error vs configured | busiest second | quietest second |",
             "|---|---|---|---|---|",
             f"| configured rate (anchor) | {rate} | - | - | - |",
             f"| 1 daemon x {processes} processes (0 - {join_s:.1f} s) | {first_rate:.1f} | "
             f"{100 * (first_rate - rate) / rate:+.2f}% | - | - |",
             f"| 2 daemons x {processes} processes ({join_s:.1f} - {seconds:g} s) | {second_rate:.1f} | "
             f"{100 * (second_rate - rate) / rate:+.2f}% | - | - |",
             f"| whole run ({seconds:g} s) | {overall:.1f} | {100 * error:+.2f}% | {max(per_second.values())} | "
             f"{min(per_second.values())} |"]
    section = Section(
        name="rate_limit",
        title=f"Rate-limit accuracy: sms at {rate}/s for {seconds:g} s, {processes} worker processes, "
              f"a second daemon from {join_s:.1f} s",
        table=table,
        figures={"configured_per_s": rate, "seconds": seconds, "achieved_per_s": overall, "error": error,
                 "first_half_per_s": first_rate, "second_half_per_s": second_rate, "second_daemon_at_s": join_s,
                 "per_second": [per_second.get(i, 0) for i in range(int(seconds))], "backlog": backlog})
    section.checks["the backlog outlasted the window"] = len(times) > len(window)
    section.targets.append(Target(f"achieved rate within ±{TOLERANCE:.0%} of {rate}/s", f"{overall:.1f}/s "
                                  f"({100 * error:+.2f}%)", abs(error) <= TOLERANCE))
    section.targets.append(Target("a second daemon does not raise the total",
                                  f"{second_rate:.1f}/s after it joined vs {first_rate:.1f}/s before",
                                  second_rate <= rate * (1 + TOLERANCE)))
    return section


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--out", default="var/bench-rate-limit.json")
    args = parser.parse_args()
    section = run(args.rate, args.seconds, args.processes, db=args.db)
    return report_alone(section, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
