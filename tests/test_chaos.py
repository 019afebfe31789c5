"""``make chaos`` keeps working and the daemon keeps meeting the fault targets it meets today: the
quick suite (every scenario, real daemons, faults through the TCP proxy) runs once for this module,
as a user runs it; then each scenario's correctness checks are asserted one by one (nothing lost,
no duplicates, every 202 stored, ...).

``disk_full`` carried a strict xfail until a full SQLite disk was handled as a database outage
(driver errors raised while fetching RETURNING rows were not mapped to Peewee's, so the outage
handling missed them and claimed sends stayed `sending`); ``db_outage_sends`` carried one until
issue 11's "outcomes are never forgotten" landed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import RABBITMQ, require

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ["broker_outage", "db_outage_sends", "db_outage_ingress", "sigterm", "kill9", "two_daemons",
             "queue_delete", "queue_purge", "disk_full"]
SUITE_TIMEOUT_S = 540

# Mounting a small filesystem to fill needs root: CI runs as root; a laptop run may skip it.
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI", "").lower() not in ("1", "true", "yes"),
                                reason="a small filesystem to fill needs root to mount")


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory, postgres_server: None) -> dict[str, Any]:
    require("rabbitmq", RABBITMQ)
    out = tmp_path_factory.mktemp("chaos")
    result = subprocess.run([sys.executable, "ops/chaos/suite.py", "--quick", "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    assert (out / "latest.json").exists(), result.stdout[-3000:] + result.stderr[-5000:]
    document = json.loads((out / "latest.json").read_text())
    return {"result": result, "document": document, "report": (out / "latest.md").read_text(), "out": out}


@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT_S + 60)
def test_the_quick_chaos_suite_runs_every_scenario_and_reports_it(chaos: dict[str, Any]) -> None:
    result, document, report = chaos["result"], chaos["document"], chaos["report"]
    # Then every scenario ran, in order, and measured what it reports
    assert list(document["scenarios"]) == SCENARIOS
    for name, scenario in document["scenarios"].items():
        if name == "disk_full" and os.geteuid() != 0:
            continue
        assert "ran to the end" not in scenario["checks"], (name, scenario["notes"])
        figures = scenario["figures"]
        assert figures["expected"] > 0 and "duplicates" in figures and "recovered_after_s" in figures, name
        assert scenario["table"][-1].startswith(f"| {name} |"), name
    # ...the report is a markdown table with a verdict per scenario, printed and written
    assert report in result.stdout
    assert "| scenario | fault | delivered / expected | duplicates |" in report
    assert report.count("| PASS |") + report.count("| FAIL |") == 2 * len(SCENARIOS)  # summary + each section
    assert len(list(chaos["out"].glob("results-*.json"))) == 1
    # ...and the exit status says whether every target was met
    all_ok = all(s["ok"] for s in document["scenarios"].values())
    assert result.returncode == (0 if all_ok else 1), result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT_S + 60)
@pytest.mark.parametrize("name", [
    "broker_outage",
    "db_outage_sends",
    "db_outage_ingress",
    "sigterm",
    "kill9",
    "two_daemons",
    "queue_delete",
    "queue_purge",
    pytest.param("disk_full", marks=[NEEDS_ROOT]),
])
def test_each_scenario_meets_its_correctness_checks(chaos: dict[str, Any], name: str) -> None:
    scenario = chaos["document"]["scenarios"][name]
    failed = [check for check, passed in scenario["checks"].items() if not passed]
    assert not failed, f"{name}: {failed}; figures {scenario['figures']}; notes {scenario['notes']}"
