"""A real Prometheus scrapes a running ``retentiond run`` with the shipped ops/prometheus.yml and
evaluates the shipped ops/alerts.yml: every rule evaluates, every series a rule selects exists as
Prometheus stores it (target labels attached), and the scheduling-tick alert fires when the
ticks stop (the daemon's PostgreSQL cut off through a proxy, its /metrics still answering).

Only the clock is changed for the test: scrape and evaluation every second, and a copy of the tick
alert with every duration read as seconds instead of minutes (``[5m]`` -> ``[5s]``, ``for: 5m`` ->
``for: 5s``), so the alert fires within seconds; its expression is the shipped one otherwise.
"""

from __future__ import annotations

import copy
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from db.database import close_database, init_database
from db.migrate import migrate
from ops.harness.daemon import DaemonProcess, base_env
from ops.harness.tcp_proxy import TcpProxy
from tests.support.prometheus import PrometheusProcess, require_prometheus
from tests.support.services import POSTGRES

OPS = Path(__file__).resolve().parents[1] / "ops"
TICK_ALERT = "RetentiondNoSchedulingTick"
SCALED_GROUP = "retentiond-minutes-as-seconds"
# a vector selector of a metric the rules use: the name and its label matchers, if any
SELECTOR = re.compile(r"\b(up|retentiond_[a-z_]+)\b(\{[^}]*\})?")
DURATION = re.compile(r"^(\d+)([smh])$")

T = TypeVar("T")


def settle(probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float) -> T:
    """Poll ``probe`` until ``done`` says its value is final, or the deadline: the last value."""
    deadline = time.monotonic() + timeout_s
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.25)
        value = probe()
    return value


def minutes_as_seconds(duration: str) -> str:
    """``5m`` -> ``5s``, ``1h`` -> ``60s``: the same rule on a clock 60 times faster."""
    match = DURATION.match(duration)
    assert match, f"unexpected duration {duration!r} in ops/alerts.yml"
    seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]
    return f"{max(1, seconds // 60)}s"


def faster_copy(rule: dict[str, Any]) -> dict[str, Any]:
    fast = copy.deepcopy(rule)
    fast["expr"] = re.sub(r"\[(\w+)\]", lambda m: f"[{minutes_as_seconds(m[1])}]", rule["expr"])
    if "for" in rule:
        fast["for"] = minutes_as_seconds(rule["for"])
    return fast


def rules_file() -> dict[str, Any]:
    return yaml.safe_load((OPS / "alerts.yml").read_text())


@pytest.fixture
def proxied_database(pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    init_database(pg_url)
    migrate()
    close_database()
    proxy = TcpProxy(POSTGRES)
    try:
        yield pg_url.replace(f"{POSTGRES[0]}:{POSTGRES[1]}", proxy.url_host_port()), proxy
    finally:
        proxy.close()


@pytest.mark.slow
def test_alert_rules_evaluate_on_real_series_and_the_tick_alert_fires_when_ticks_stop(
        proxied_database: tuple[str, TcpProxy], tmp_path: Path, daemons: list) -> None:
    binary = require_prometheus()
    database, proxy = proxied_database
    # Given a daemon with a webhook source, on PostgreSQL through a proxy the test can cut
    daemon = DaemonProcess(base_env(DATABASE_URL=database, BROKER_URL="memory://", DB_TIMEOUT_S="2",
                                    SOURCE_SHOP_SCHEME="token", SOURCE_SHOP_SECRET="s3cret-token-" + "x" * 32),
                           tmp_path)
    daemons.append(daemon)
    daemon.start()
    # a rejected webhook, as every installation sees sooner or later (the rejection alert's series)
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/webhooks/shop", data=b"{}", method="POST",
                                     headers={"X-Webhook-Token": "wrong", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    refused.value.close()
    assert refused.value.code == 401

    # and a Prometheus configured from ops/prometheus.yml, scraping it, with the shipped rules
    # plus a copy of the tick alert whose durations are read as seconds
    alerts = rules_file()
    tick_rule = next(r for g in alerts["groups"] for r in g["rules"] if r.get("alert") == TICK_ALERT)
    scaled = tmp_path / "scaled-rules.yml"
    scaled.write_text(yaml.safe_dump({"groups": [{"name": SCALED_GROUP, "rules": [faster_copy(tick_rule)]}]}))
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(OPS / "alerts.yml"), str(scaled)]
    (scrape,) = config["scrape_configs"]
    scrape["static_configs"] = [{"targets": [f"127.0.0.1:{daemon.admin_port}"]}]
    prometheus = PrometheusProcess(binary, config, tmp_path).start()
    try:
        # When Prometheus has scraped the daemon and evaluated every rule
        def loaded_rules() -> list[dict[str, Any]]:
            return [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]

        rules = settle(loaded_rules, lambda rs: bool(rs) and all(r["health"] != "unknown" for r in rs), 20)

        # Then every shipped rule is healthy, and every series it selects exists, labels included
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
        shipped = [r for g in alerts["groups"] for r in g["rules"]]
        selectors = {m[0] for r in shipped for m in SELECTOR.finditer(r["expr"])}
        assert any("retentiond_job_runs_total" in s for s in selectors)
        # (a series may wait for its first increment or the first health check: poll a little)
        assert settle(lambda: [s for s in sorted(selectors) if not prometheus.query(s)], lambda m: not m, 15) == []

        # and while the daemon ticks, the tick alert is quiet
        def tick_state() -> str:
            for group in prometheus.api("rules")["groups"]:
                if group["name"] == SCALED_GROUP:
                    return str(group["rules"][0]["state"])
            raise AssertionError(f"group {SCALED_GROUP} not loaded:\n{prometheus.log()}")

        # (once the alert's window holds a full window of scrapes, so it judges ticks, not gaps)
        (window,) = set(re.findall(r"\[(\w+)\]", faster_copy(tick_rule)["expr"]))
        scrapes = f'count_over_time(up{{job="{scrape["job_name"]}"}}[{window}])'
        settle(lambda: prometheus.query(scrapes), lambda r: bool(r) and float(r[0]["value"][1]) >= 4, 15)
        assert tick_state() == "inactive"

        # When the daemon loses its database: no tick can take its lease, /metrics still answers
        proxy.cut()

        # Then the tick alert fires
        assert settle(tick_state, lambda state: state == "firing", 40) == "firing"
        assert daemon.get("/health")[0] == 200
    finally:
        prometheus.stop()
        proxy.restore()
    assert daemon.stop() == 0
