"""What every benchmark shares: progress lines, throwaway RabbitMQ vhosts and databases, memory and
CPU readings of a process tree, the machine's facts, and the shape of a result (a ``Section``).

Each benchmark module has ``run(...) -> Section`` (used by ``ops/bench/suite.py``, ``make bench``) and
a ``main()`` to run it alone. A Section carries its figures (for the JSON file), its markdown table
(anchor row first) and its targets, each with the measured figure and whether it was met.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

AMQP_BASE = "amqp://guest:guest@127.0.0.1:5672/"
PG_ADMIN = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-v", "ON_ERROR_STOP=1"]


def clean_up_on_sigterm() -> None:
    """SIGTERM (a timeout, ``kill``) unwinds like Ctrl-C, so every scratch database, vhost and
    daemon of the run is still removed."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def log(message: str) -> None:
    """A progress line on stderr: a benchmark of minutes shows it is alive."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Ticker:
    """Calls ``log`` at most every ``every_s`` seconds from inside a polling loop."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s, self.last = every_s, time.monotonic()

    def __call__(self, message: str) -> None:
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            log(message)


@dataclass
class Target:
    name: str  # e.g. "dispatch >= 1,000 sends/s (postgres)"
    measured: str  # the figure, formatted
    met: bool


@dataclass
class Section:
    name: str
    title: str
    table: list[str]  # markdown lines: header, rule, anchor row, our rows
    figures: dict[str, Any]
    targets: list[Target] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)  # correctness checks (received == N, ...)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", *self.table, ""]
        lines += [f"- check: {name}: {'ok' if passed else 'FAILED'}" for name, passed in self.checks.items()]
        lines += [f"- target: {t.name}: {t.measured} — {'met' if t.met else 'MISSED'}" for t in self.targets]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def rabbitmq_vhost() -> tuple[str, str]:
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    return vhost, f"{AMQP_BASE}{vhost}"


def drop_vhost(vhost: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)


def create_database(kind: str, workdir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
    name = f"retentiond_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run([*PG_ADMIN, "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    if url.startswith("postgresql"):
        name = url.rsplit("/", 1)[1]
        subprocess.run([*PG_ADMIN, "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False,
                       capture_output=True)
    else:
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_services(kind: str, workdir: Path) -> Iterator[tuple[str, str]]:
    """A new database (``postgres`` or ``sqlite``) and RabbitMQ vhost for one run, dropped afterwards
    whatever happens. Yields (database URL, AMQP URL)."""
    vhost, amqp_url = rabbitmq_vhost()
    db_url = create_database(kind, workdir)
    try:
        yield db_url, amqp_url
    finally:
        drop_database(db_url)
        drop_vhost(vhost)


@contextlib.contextmanager
def services(kind: str, workdir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(database URL, broker settings) for one run of ``kind``: ``postgres`` or ``sqlite`` on a
    throwaway RabbitMQ vhost, or ``embedded``, the default (an SQLite file and the in-process broker
    ``memory://``); removed afterwards whatever happens."""
    if kind == "embedded":
        db_url = create_database("sqlite", workdir)
        try:
            yield db_url, {"BROKER_URL": "memory://"}
        finally:
            drop_database(db_url)
        return
    with scratch_services(kind, workdir) as (db_url, amqp_url):
        yield db_url, {"BROKER_URL": amqp_url}


@contextlib.contextmanager
def connected(db_url: str) -> Iterator[None]:
    """This process connected to ``db_url`` (to seed or to read results), closed afterwards."""
    from db.database import close_database, init_database

    init_database(db_url)
    try:
        yield
    finally:
        close_database()


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(p) for p in fh.read().split())
        except OSError:
            continue
    return found


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total = 0
    for current in tree_pids(pid):
        try:
            with open(f"/proc/{current}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


class RssSampler(threading.Thread):
    """Peak resident memory of a process tree, sampled twice a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))
            time.sleep(0.5)

    def stop(self) -> float:
        """Stops sampling; returns the peak in MiB."""
        self.running = False
        self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))
        return self.peak_kib / 1024


def children_cpu_s() -> float:
    """CPU seconds of the children this process has waited for (daemons are waited for on stop)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine() -> dict[str, Any]:
    import dramatiq
    import peewee

    facts: dict[str, Any] = {
        "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "dramatiq": dramatiq.__version__, "peewee": peewee.__version__, "aiohttp": aiohttp.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    for name, command in (("postgresql", ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"]),
                          ("rabbitmq", ["rabbitmqctl", "-q", "version"])):
        try:
            facts[name] = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            facts[name] = None
    try:
        with open("/proc/meminfo") as fh:
            facts["memory_gib"] = round(int(fh.readline().split()[1]) / 1024 ** 2, 1)
        with open("/proc/cpuinfo") as fh:
            facts["cpu"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        pass
    return facts


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(round(fraction * len(sorted_values)))))
    return sorted_values[rank - 1]


Request = tuple[dict[str, str], str]  # headers, body


async def _post_all(url: str, requests: list[Request], connections: int) -> dict[str, Any]:
    statuses: Counter = Counter()
    latencies: list[float] = []
    queue = iter(requests)

    async def worker(session: aiohttp.ClientSession) -> None:
        for headers, body in queue:  # one shared iterator: each request is posted once
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"posted": len(requests), "post_s": elapsed, "posts_per_s": len(requests) / elapsed,
            "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "statuses": {str(k): v for k, v in statuses.items()}}


def post_all(url: str, requests: list[Request], connections: int) -> dict[str, Any]:
    """Posts every request once, ``connections`` at a time (aiohttp client); returns the posting
    time and rate, p50/p99 per request and the answers by status."""
    return asyncio.run(_post_all(url, requests, connections))


def report_alone(section: Section, out: str) -> int:
    """A benchmark run on its own: its JSON (with the machine's facts) to ``out``, its report to
    stdout; exit status 1 when a correctness check failed."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"machine": machine(), **section.as_dict()}, indent=2, default=str))
    print(f"\n{section.markdown()}\n\nJSON: {out}")
    return 0 if section.ok else 1


def write_results(out_dir: str, document: dict[str, Any], report: str) -> None:
    """A suite's results under ``out_dir``: ``results-<UTC>.json`` and ``latest.json`` (the document),
    ``latest.md`` (the report); prints the report and where they went."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (out / f"results-{stamp}.json", out / "latest.json"):
        path.write_text(json.dumps(document, indent=2, default=str))
    (out / "latest.md").write_text(report)
    print(f"\n{report}\nJSON: {out / f'results-{stamp}.json'}; markdown: {out / 'latest.md'}")
