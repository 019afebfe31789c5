"""``make bench`` keeps working: the whole suite at its quick sizes, as a user runs it, writes its
JSON and markdown, every section ran and passed its correctness checks (received == N, no
duplicates, stored == 202s, every click attributed). Performance targets are reported by the
benchmark, never asserted here: this machine's figures under test load mean little."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["dispatch", "leads", "ingress", "rate_limit", "isolation", "scale", "burst"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_quick_benchmark_suite_runs_every_section_and_reports_it(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "ops/bench/suite.py", "--quick", "--out", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=580)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    document = json.loads((tmp_path / "latest.json").read_text())
    assert list(document["sections"]) == SECTIONS
    assert document["machine"]["cores"] and document["machine"]["python"]
    for name, section in document["sections"].items():
        assert section["ok"], (name, section["checks"])
        assert section["checks"], name  # every section checks what it measured
        assert section["table"][0].startswith("| run") or section["table"][0].startswith("| contacts"), name
    dispatch = document["sections"]["dispatch"]["figures"]
    assert [r["simulator_received"] for r in dispatch["runs"]] == [2000, 2000]
    assert dispatch["anchor_bare_dramatiq"]["drain_per_s"] > 0
    assert document["sections"]["burst"]["figures"]["retentiond"]["attributed"] == 500
    assert document["sections"]["burst"]["figures"]["leads"]["simulator_received"] == 500
    lead_runs = document["sections"]["leads"]["figures"]["runs"]
    assert [(r["kind"], r["simulator_received"]) for r in lead_runs] == [("embedded", 300)]
    assert all(r["vs_dispatch"] > 0 for r in lead_runs)  # read from the dispatch section of the same run
    assert [r["kind"] for r in document["sections"]["ingress"]["figures"]["runs"]] == ["postgres", "embedded"]
    isolation = document["sections"]["isolation"]["figures"]
    # three email runs of 300 (alone, beside sms, alone again), and the sms backlog cancelled after its window
    assert isolation["email_received"] == 900 and isolation["sms_cancelled"] > 0

    report = (tmp_path / "latest.md").read_text()
    assert report in result.stdout
    for title in ("### Dispatch", "### Lead pipeline", "### Ingress", "### Rate-limit accuracy", "### Channel isolation",
                  "### Scale", "### Webhook burst"):
        assert title in report
    assert "bare Dramatiq no-op (anchor)" in report and "bare aiohttp JSON endpoint (anchor" in report
    assert len(list(tmp_path.glob("results-*.json"))) == 1
