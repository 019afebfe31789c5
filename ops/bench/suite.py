"""``make bench``: every benchmark, each next to its anchor measured in the same run, one JSON file of
results (with the machine's facts) and one markdown report.

    python ops/bench/suite.py [--quick] [--only dispatch,leads,ingress,...] [--out var/bench]

Sections, in order (each module's docstring says exactly what it measures):

1. dispatch   - 50,000 sends on RabbitMQ + PostgreSQL and + SQLite at the simulator (200 ms) vs bare Dramatiq
2. leads      - 20,000 signed contact.upsert leads, first post to last delivery, on RabbitMQ + PostgreSQL
                and the embedded default, vs the dispatch figures of the same run
3. ingress    - signed webhooks, 64 connections, 20 s (wrk), PostgreSQL and embedded, vs bare aiohttp
4. rate_limit - sms at 200/s for 30 s, 2 worker processes, a second daemon halfway vs the configured rate
5. isolation  - unlimited email beside sms at 20/s with a 5,000 backlog vs email alone
6. scale      - 1,000 due steps among 10k, 100k and 1M enrolled contacts; the 10k run is the anchor
7. burst      - 10,000 signed click webhooks, then 10,000 leads, as fast as possible, until all are
                attributed / enrolled and delivered, vs bare aiohttp

``--quick`` runs every section at a small size (under two minutes): the test suite uses it to keep
the benchmarks working; its figures mean little. Writes ``<out>/results-<UTC time>.json``,
``<out>/latest.json`` and ``<out>/latest.md``. Exits 1 when a correctness check failed or a section
could not run; a missed performance target is reported, not an error.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench import burst, dispatch, ingress, isolation, leads, rate_limit, scale  # noqa: E402
from ops.bench.common import Section, clean_up_on_sigterm, log, machine, write_results  # noqa: E402

DONE: dict[str, Section] = {}  # the sections of this run so far, by name


def dispatch_per_s() -> dict[str, float] | None:
    """This run's dispatch figures by database, when the dispatch section ran: the leads' anchor."""
    section = DONE.get("dispatch")
    if section is None or not section.figures.get("runs"):
        return None
    return {r["database"]: r["sends_per_s"] for r in section.figures["runs"]}


FULL: dict[str, Callable[[], Section]] = {
    "dispatch": lambda: dispatch.run(sends=50_000, databases=("postgres", "sqlite")),
    # without dispatch in the run (--only leads), the section measures its own at 20,000 sends
    "leads": lambda: leads.run(leads=20_000, dispatch_per_s=dispatch_per_s()),
    "ingress": lambda: ingress.run(seconds=20, connections=64),
    "rate_limit": lambda: rate_limit.run(rate=200, seconds=30, processes=2),
    "isolation": lambda: isolation.run(emails=20_000, backlog=5_000, rate=20, seconds=30),
    "scale": lambda: scale.run(sizes=(10_000, 100_000, 1_000_000), due=1000),
    "burst": lambda: burst.run(clicks=10_000, connections=64, leads=10_000),
}
QUICK: dict[str, Callable[[], Section]] = {
    "dispatch": lambda: dispatch.run(sends=2_000, databases=("postgres", "sqlite"), latency_ms=50),
    # embedded only: the burst section's leads take the RabbitMQ + PostgreSQL path (the quick budget)
    "leads": lambda: leads.run(leads=300, kinds=("embedded",), dispatch_per_s=dispatch_per_s(), own_anchor=False,
                               latency_ms=50, connections=16),
    "ingress": lambda: ingress.run(seconds=2, connections=16, per_thread=20_000),
    "rate_limit": lambda: rate_limit.run(rate=50, seconds=6, processes=2),
    "isolation": lambda: isolation.run(emails=300, backlog=500, rate=20, seconds=3, latency_ms=50),
    "scale": lambda: scale.run(sizes=(2_000, 20_000), due=100, idle_ticks=2),
    "burst": lambda: burst.run(clicks=500, connections=16, latency_ms=50),
}


def failed_section(name: str, error: BaseException) -> Section:
    return Section(name=name, title=f"{name}: could not run", table=[], figures={"error": repr(error)},
                   checks={"ran to the end": False}, notes=[f"error: {type(error).__name__}: {error}"])


def summary(sections: list[Section]) -> list[str]:
    lines = ["| benchmark | target | measured | |", "|---|---|---|---|"]
    for section in sections:
        for target in section.targets:
            lines.append(f"| {section.name} | {target.name} | {target.measured} | {'met' if target.met else 'MISSED'} |")
        failed = [name for name, passed in section.checks.items() if not passed]
        lines.append(f"| {section.name} | correctness checks ({len(section.checks)}) | "
                     f"{'all passed' if not failed else 'FAILED: ' + '; '.join(failed)} | |")
    return lines


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the benchmarks still work")
    parser.add_argument("--only", default="", help="comma-separated sections (default: all)")
    parser.add_argument("--out", default="var/bench")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    asked = [n for n in args.only.split(",") if n]
    unknown = sorted(set(asked) - set(plan))
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(plan)}")
    names = [n for n in plan if n in asked] if asked else list(plan)  # in the plan's order: leads reads dispatch

    facts = machine()
    started = time.monotonic()
    sections: list[Section] = []
    for index, name in enumerate(names, 1):
        log(f"== {index}/{len(names)} {name} (elapsed {time.monotonic() - started:.0f}s)")
        section_started = time.monotonic()
        try:
            section = plan[name]()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            section = failed_section(name, exc)
        section.elapsed_s = time.monotonic() - section_started
        sections.append(section)
        DONE[name] = section
        log(f"== {name} done in {section.elapsed_s:.0f}s")
    total_s = time.monotonic() - started

    header = (f"## Benchmarks{' (quick)' if args.quick else ''}: {facts['date'][:10]}, {facts['cores']} cores, "
              f"{facts.get('memory_gib')} GiB, {facts.get('cpu')}; Python {facts['python']}, "
              f"PostgreSQL {facts.get('postgresql')}, RabbitMQ {facts.get('rabbitmq')}; "
              f"{total_s / 60:.1f} minutes")
    report = "\n\n".join([header, "\n".join(summary(sections)), *(s.markdown() for s in sections)]) + "\n"
    document = {"machine": facts, "quick": args.quick, "total_s": total_s,
                "sections": {s.name: s.as_dict() for s in sections}}
    write_results(args.out, document, report)
    return 0 if all(s.ok for s in sections) else 1


if __name__ == "__main__":
    raise SystemExit(main())
