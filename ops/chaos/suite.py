"""``make chaos``: the project's own fault suite. Each scenario runs a real ``retentiond run``
(RabbitMQ + PostgreSQL unless said, 2 worker processes) dispatching N leads x an sms + email
campaign to the provider simulator (200 ms a call), injects one fault, and measures what a user
would see: delivered/expected, duplicates, the time from the fault's end to ready and to all
delivered, and PASS/FAIL against the scenario's targets.

    python ops/chaos/suite.py [--quick] [--only broker_outage,kill9,...] [--out var/chaos]

Scenarios, in order (each module's docstring says exactly what it does):

1. broker_outage     - RabbitMQ cut off by a TCP proxy for 15 s mid-dispatch            (outages.py)
2. db_outage_sends   - PostgreSQL cut off by a TCP proxy for 15 s mid-dispatch          (outages.py)
3. db_outage_ingress - PostgreSQL cut off for 15 s while signed webhooks arrive         (ingress.py)
4. sigterm           - SIGTERM under load, then a new daemon                            (processes.py)
5. kill9             - kill -9 of the daemon and its workers under load, then a new one (processes.py)
6. two_daemons       - two daemons on one database and vhost                            (processes.py)
7. queue_delete      - ``rabbitmqctl delete_queue retentiond.sms`` mid-run               (queues.py)
8. queue_purge       - ``rabbitmqctl purge_queue retentiond.sms`` mid-run                (queues.py)
9. disk_full         - SQLite's filesystem (a small tmpfs) full for 15 s mid-dispatch   (outages.py)

Targets: nothing lost (every send delivered within 30 s of an outage's end; after a kill -9 or a
deleted queue, within the recovery timeout the scenario states plus 30 s), 0 duplicates (after a
kill -9: at most the calls the provider accepted whose result was not yet written). A full run takes
about 6 minutes; ``--quick`` runs 100 leads and 4 s faults (3-4 minutes): the test suite runs it.
``disk_full`` mounts a small tmpfs, so it needs root. Writes
``<out>/results-<UTC time>.json``, ``<out>/latest.json`` and ``<out>/latest.md``; exits 1 when a
scenario failed a target or could not run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench.common import Section, clean_up_on_sigterm, log, machine, write_results  # noqa: E402
from ops.chaos import ingress, outages, processes, queues  # noqa: E402
from ops.chaos.rig import FULL, QUICK, Size, Where, suite_vhost  # noqa: E402
from ops.chaos.verdict import TABLE_HEAD, Outcome, summary_row  # noqa: E402

SCENARIOS: dict[str, Callable[[Size, Where], Outcome]] = {
    "broker_outage": outages.broker_outage,
    "db_outage_sends": outages.db_outage_sends,
    "db_outage_ingress": ingress.db_outage_ingress,
    "sigterm": processes.sigterm,
    "kill9": processes.kill9,
    "two_daemons": processes.two_daemons,
    "queue_delete": queues.queue_delete,
    "queue_purge": queues.queue_purge,
    "disk_full": outages.disk_full,
}


def failed_section(name: str, error: BaseException) -> Section:
    return Section(name=name, title=f"{name}: could not run", table=[], figures={"error": repr(error)},
                   checks={"ran to the end": False}, notes=[f"error: {type(error).__name__}: {error}"])


def run_one(name: str, size: Size, vhost: str) -> Section:
    with tempfile.TemporaryDirectory(prefix=f"retentiond-chaos-{name}-") as tmp:
        try:
            return SCENARIOS[name](size, Where(Path(tmp), vhost)).section()
        except Exception as exc:  # one broken scenario must not hide the others' figures
            traceback.print_exc()
            return failed_section(name, exc)


def main() -> int:
    clean_up_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 leads, 4 s faults: checks the suite still works")
    parser.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    parser.add_argument("--out", default="var/chaos")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    size = QUICK if args.quick else FULL

    facts = machine()
    started = time.monotonic()
    sections: list[Section] = []
    with suite_vhost() as vhost:
        for index, name in enumerate(names, 1):
            log(f"== {index}/{len(names)} {name} (elapsed {time.monotonic() - started:.0f}s)")
            section_started = time.monotonic()
            section = run_one(name, size, vhost)
            section.elapsed_s = time.monotonic() - section_started
            sections.append(section)
            log(f"== {name}: {'PASS' if section.ok else 'FAIL'} in {section.elapsed_s:.0f}s")
    total_s = time.monotonic() - started

    header = (f"## Chaos{' (quick)' if args.quick else ''}: {facts['date'][:10]}, {facts['cores']} cores, "
              f"{facts.get('cpu')}; PostgreSQL {facts.get('postgresql')}, RabbitMQ {facts.get('rabbitmq')}; "
              f"{size.leads} leads x sms + email, provider {size.latency_ms:g} ms, {size.processes} worker "
              f"processes, faults of {size.outage_s:g} s; {total_s / 60:.1f} minutes")
    table = "\n".join([*TABLE_HEAD, *(summary_row(s) for s in sections)])
    report = "\n\n".join([header, table, *(s.markdown() for s in sections)]) + "\n"
    document = {"machine": facts, "quick": args.quick, "size": size.__dict__, "total_s": total_s,
                "scenarios": {s.name: s.as_dict() for s in sections}}
    write_results(args.out, document, report)
    return 0 if all(s.ok for s in sections) else 1


if __name__ == "__main__":
    raise SystemExit(main())
