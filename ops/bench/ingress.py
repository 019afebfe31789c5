"""Ingress benchmark: signed Standard Webhooks (click events) at 64 connections for 20 s with wrk,
against retentiond (verify, interpret, group commit to the database, 202) on RabbitMQ + PostgreSQL
and on the embedded default (SQLite + memory://), and, in the same run with the same load, a bare
aiohttp JSON endpoint (parse, 202, nothing durable).

    python ops/bench/ingress.py [--db postgres,embedded] [--seconds 20] [--connections 64]  (make bench-ingress)

Reports accepted events/s, p50/p99 latency, each row's ratio to bare aiohttp, and checks that the
events stored equal the 202s.
Requests are signed before the run (wrk replays them), so the load generator costs little CPU.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from standardwebhooks.webhooks import Webhook

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench.common import (  # noqa: E402
    REPO,
    Section,
    Target,
    clean_up_on_sigterm,
    connected,
    log,
    report_alone,
    services,
)
from ops.harness.daemon import DaemonProcess, base_env, cli, free_port  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"retentiond-ingress-benchmark-key").decode()
LUA = REPO / "ops" / "bench" / "wrk_signed.lua"


def signed_click(webhook: Webhook, event_id: str, timestamp: dt.datetime, token: str) -> tuple[str, str]:
    """(body, webhook-signature) of a canonical click event, signed as Standard Webhooks documents."""
    body = json.dumps({"type": "click", "data": {"token": token}}, separators=(",", ":"))
    return body, webhook.sign(event_id, timestamp, body)


def sign_requests(prefix: Path, threads: int, per_thread: int) -> None:
    """One file of pre-signed requests per wrk thread (id, timestamp, signature, body per line)."""
    webhook, now, run_id = Webhook(SECRET), dt.datetime.now(dt.UTC), uuid.uuid4().hex[:8]
    for thread in range(1, threads + 1):
        with open(f"{prefix}.{thread}", "w") as fh:
            for i in range(per_thread):
                event_id = f"msg_{run_id}_{thread}_{i}"
                body, signature = signed_click(webhook, event_id, now, f"tok-{thread}-{i}")
                fh.write(f"{event_id}\t{int(now.timestamp())}\t{signature}\t{body}\n")


def run_wrk(port: int, prefix: Path, threads: int, connections: int, seconds: int) -> dict:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(LUA),
                          f"http://127.0.0.1:{port}/webhooks/bench", "--", str(prefix)],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"^RESULT (.*)$", out, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result = json.loads(match.group(1))
    result["per_s"] = result["accepted"] / (result["duration_us"] / 1e6)
    return result


def wait_port(port: int, timeout_s: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


# (events/s, p99 ms) by kind: PostgreSQL on RabbitMQ, and the embedded default (SQLite + memory://).
TARGETS = {"postgres": (10_000, 25.0), "embedded": (2_500, 50.0)}
LABELS = {"postgres": "postgres", "sqlite": "sqlite (RabbitMQ)", "embedded": "embedded (SQLite + memory://)"}
KINDS = ("postgres", "embedded")


def retentiond(kind: str, prefix: Path, workdir: Path, threads: int, connections: int, seconds: int) -> dict:
    """wrk against ``retentiond run --processes 1`` on ``kind``; the events stored counted afterwards."""
    with services(kind, workdir) as (db_url, broker):
        daemon = None
        try:
            env = base_env(DATABASE_URL=db_url, SOURCE_BENCH_SECRET=SECRET, DB_POOL_SIZE="5", **broker)
            assert cli("migrate", env=env).returncode == 0
            daemon = DaemonProcess(env, workdir, "--processes", "1", "--threads", "2", name=f"ingress-{kind}").start()
            log(f"ingress: retentiond ({kind}), {connections} connections for {seconds}s")
            ours = run_wrk(daemon.port, prefix, threads, connections, seconds)
            from db.models import InboundEvent

            with connected(db_url):
                ours["stored"] = InboundEvent.select().where(InboundEvent.source == "bench").count()
            assert daemon.stop() == 0
        finally:
            if daemon is not None:
                daemon.kill()
    log(f"ingress: retentiond ({kind}) {ours['per_s']:.0f} accepted/s, p99 {ours['p99_us'] / 1000:.1f} ms, "
        f"stored {ours['stored']}")
    return {**ours, "kind": kind}


def run(kinds: tuple[str, ...] = KINDS, seconds: int = 20, connections: int = 64, threads: int = 2,
        per_thread: int = 250_000) -> Section:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="retentiond-ingress-") as tmp:
        workdir, prefix = Path(tmp), Path(tmp) / "requests"
        log(f"ingress: signing {threads} x {per_thread} requests")
        sign_requests(prefix, threads, per_thread)

        log(f"ingress: anchor, bare aiohttp JSON endpoint, {connections} connections for {seconds}s")
        port = free_port()
        bare = subprocess.Popen([sys.executable, str(REPO / "ops" / "bench" / "bare_aiohttp.py"), str(port)])
        try:
            wait_port(port)
            anchor = run_wrk(port, prefix, threads, connections, seconds)
        finally:
            bare.terminate()
            bare.wait(10)
        log(f"ingress: anchor {anchor['per_s']:.0f} req/s, p99 {anchor['p99_us'] / 1000:.1f} ms")
        runs = [retentiond(kind, prefix, workdir, threads, connections, seconds) for kind in kinds]

    table = ["| run | accepted/s | vs bare aiohttp | p50 | p99 | 202s | stored | other answers | socket errors |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| bare aiohttp JSON endpoint (anchor, not durable) | {anchor['per_s']:.0f} | 1.00 | "
             f"{anchor['p50_us'] / 1000:.2f} ms | {anchor['p99_us'] / 1000:.2f} ms | {anchor['accepted']} | - | "
             f"{anchor['other']} | {anchor['errors']} |"]
    section = Section(name="ingress", title=f"Ingress: signed webhooks, {connections} connections, {seconds} s",
                      table=table, figures={"anchor_bare_aiohttp": anchor, "runs": runs, "retentiond": runs[0],
                                            "database": runs[0]["kind"], "connections": connections,
                                            "seconds": seconds})
    for ours in runs:
        kind, p99_ms = ours["kind"], ours["p99_us"] / 1000
        ours["vs_bare_aiohttp"] = ours["per_s"] / anchor["per_s"]
        table.append(f"| retentiond + {LABELS[kind]}, durable | {ours['per_s']:.0f} | {ours['vs_bare_aiohttp']:.2f} | "
                     f"{ours['p50_us'] / 1000:.2f} ms | {p99_ms:.2f} ms | {ours['accepted']} | {ours['stored']} | "
                     f"{ours['other'] + ours['duplicates']} | {ours['errors']} |")
        # wrk stops counting at the deadline: requests still in flight then were stored and answered
        # after it, so stored may exceed the counted 202s by at most the number of connections.
        section.checks[f"{kind}: stored == 202s (+ at most {connections} in flight at the deadline)"] = \
            0 <= ours["stored"] - ours["accepted"] <= connections
        section.checks[f"{kind}: no answers other than 202"] = ours["other"] + ours["duplicates"] == 0
        if kind in TARGETS:
            per_s, p99 = TARGETS[kind]
            section.targets.append(Target(
                f"ingress >= {per_s:,} durable events/s with p99 <= {p99:g} ms ({LABELS[kind]})",
                f"{ours['per_s']:,.0f}/s, p99 {p99_ms:.1f} ms, {ours['vs_bare_aiohttp']:.2f} x bare aiohttp",
                ours["per_s"] >= per_s and p99_ms <= p99))
    return section


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=",".join(KINDS), help="comma-separated: postgres, sqlite (on RabbitMQ), "
                                                                  "embedded (SQLite + memory://)")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-thread", type=int, default=250_000, help="pre-signed requests per wrk thread")
    parser.add_argument("--out", default="var/bench-ingress.json")
    args = parser.parse_args()
    kinds = tuple(k for k in args.db.split(",") if k)
    if not kinds or set(kinds) - set(LABELS):
        parser.error(f"--db: comma-separated, from {', '.join(LABELS)}")
    section = run(kinds, args.seconds, args.connections, args.threads, args.per_thread)
    return report_alone(section, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
