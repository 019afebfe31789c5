"""Schemathesis against a running ``retentiond run``: every operation of the OpenAPI document,
with generated and mutated requests (coverage, fuzzing and stateful phases). No 5xx, every
response matches its documented schema and status, every error is problem+json, and the daemon
logs no error doing it. Both engines."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.models import InboundEvent
from ops.harness.daemon import DaemonProcess, base_env, cli

TOKEN = "admin-token-0123456789abcdef"
ST = Path(sys.executable).with_name("st")
CAMPAIGN = {"slug": "welcome", "name": "Welcome", "trigger": "manual",
            "steps": [{"channel": "sms", "delay": "0s", "body": "Hi {{ contact.name }}"}]}
# Business rules beyond what a JSON Schema can say (an address that email-validator refuses, a
# phone number that is no number, a campaign file's meaning) answer a schema-valid request with
# 400/422 on purpose: schemathesis's "schema-valid data is accepted" check is the one left out.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


def _call(daemon: DaemonProcess, method: str, path: str, body: object) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.admin_port}{path}", method=method,
                                     data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_no_schema_mismatch_and_only_problem_documents(
        db_url: str, tmp_path: Path, daemons: list) -> None:
    # Given a daemon with the admin API on, and some data for the generated requests to reach
    env = base_env(DATABASE_URL=db_url, ADMIN_TOKEN=TOKEN)
    assert cli("migrate", env=env).returncode == 0
    daemon = DaemonProcess(env, tmp_path)
    daemons.append(daemon)
    daemon.start()
    _call(daemon, "PUT", "/api/v1/campaigns", CAMPAIGN)
    _call(daemon, "POST", "/api/v1/contacts", {"email": "ada@example.com", "name": "Ada", "campaign": "welcome"})
    init_database(db_url)
    try:
        # failed once (its cause since mended): a replay applies it
        payload = {"events": [{"type": "conversion", "data": {"email": "ada@example.com"}}]}
        InboundEvent.create(source="shop", event_id="failed-once", type="conversion", payload=json.dumps(payload),
                            status="failed", error="OperationalError: the database was away")
    finally:
        close_database()
    # When schemathesis runs every phase against the operators' listener
    run = subprocess.run([str(ST), "run", f"http://127.0.0.1:{daemon.admin_port}/api/v1/openapi.json", *CHECKS,
                          "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "40", "--no-color"],
                         capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)  # its .schemathesis/
    # Then it finds nothing, and the daemon logged no error while it tried
    assert run.returncode == 0, run.stdout[max(0, run.stdout.find("FAILURES")):][:8000]
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.admin_port}/api/v1/openapi.json", timeout=10) as response:
        paths = json.load(response)["paths"]
    # every operation of the document but the document itself (schemathesis leaves out its own source)
    operations = sum(len(methods) for path, methods in paths.items() if path != "/api/v1/openapi.json")
    assert f"Tested: {operations}" in run.stdout, run.stdout[-3000:]
    errors = [line for line in daemon.stderr().splitlines() if " ERROR " in line or "Traceback" in line]
    assert errors == [], "\n".join(errors[:20])
