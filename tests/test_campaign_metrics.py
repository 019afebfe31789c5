"""The retentiond_campaign_* counters a running daemon exports: a campaign's funnel per step
(planned, sent, conversions, revenue), for Grafana's funnel panel."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ops.harness.daemon import DaemonProcess, base_env, cli
from ops.harness.signing import STANDARD_SECRET
from tests.support.waiting import wait_until
from tests.support.webhooks import fire

TOKEN = "admin-token-0123456789abcdef"
CAMPAIGN = {"slug": "welcome", "name": "Welcome", "trigger": {"event": "contact.upsert"},
            "steps": [{"channel": "email", "delay": "0s", "subject": "Hi", "body": "Hello {{ contact.name }}"},
                      {"channel": "sms", "delay": "1d", "body": "Still there?"}]}


def campaign_samples(daemon: DaemonProcess) -> dict[tuple[str, ...], float]:
    status, text = daemon.admin_get("/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("retentiond_campaign_") and sample.name.endswith("_total"):
                found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


def test_a_campaigns_funnel_is_counted_by_campaign_and_step(tmp_path: Path, daemons: list) -> None:
    # Given a daemon with a two-step campaign that every upserted contact enters
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", ADMIN_TOKEN=TOKEN, DAILY_CAP="0",
                   QUIET_HOURS="off", SOURCE_APP_SECRET=STANDARD_SECRET)
    assert cli("migrate", env=env).returncode == 0
    daemon = DaemonProcess(env, tmp_path)
    daemons.append(daemon)
    daemon.start()
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.admin_port}/api/v1/campaigns", method="PUT",
                                     data=json.dumps(CAMPAIGN).encode(), headers={"Authorization": f"Bearer {TOKEN}"})
    urllib.request.urlopen(request, timeout=10).close()
    # When four leads arrive by webhook, their welcome emails go out, and two of them buy
    assert set(asyncio.run(fire(daemon.port, 4, 4, "lead")).values()) == {202}

    def bought(i: int) -> dict:
        return {"type": "conversion", "data": {"external_id": f"w{i}", "name": "purchase", "value": 20.5}}

    wait_until(lambda: campaign_samples(daemon).get(
        ("retentiond_campaign_sends_total", ("campaign", "welcome"), ("status", "sent"), ("step", "0"))) == 4,
        30, "four welcome emails counted as sent")
    assert set(asyncio.run(fire(daemon.port, 2, 2, "buy", event=bought)).values()) == {202}
    wait_until(lambda: campaign_samples(daemon).get(
        ("retentiond_campaign_conversions_total", ("campaign", "welcome"), ("step", "0"))) == 2,
        30, "two conversions counted on step 0")
    # Then /metrics shows the funnel by campaign and step, as the analytics count it
    samples = campaign_samples(daemon)
    assert samples[("retentiond_campaign_sends_total", ("campaign", "welcome"), ("status", "planned"), ("step", "0"))] == 4
    assert samples[("retentiond_campaign_revenue_total", ("campaign", "welcome"), ("step", "0"))] == 41.0
    assert not any(dict(key[1:]).get("step") == "1" for key in samples)  # step 1 is a day away
