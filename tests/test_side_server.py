"""The side server in process: liveness, readiness naming the failing part, Prometheus text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import initialise_labels
from daemon.side_server import build_app
from tests.conftest import make_settings
from tests.support.daemon import free_port


async def test_health_is_ok_while_the_process_is_up(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(make_settings()))
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_ready_when_database_and_broker_answer(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(make_settings(DATABASE_URL=migrated_db)))
    response = await client.get("/health/ready")
    body = await response.json()
    assert response.status == 200, body
    assert body["database"]["ok"] and body["broker"]["ok"]


async def test_not_ready_names_the_unreachable_broker(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    dead = f"amqp://guest:secret-pw@127.0.0.1:{free_port()}/"
    client = await aiohttp_client(build_app(make_settings(DATABASE_URL=migrated_db, BROKER_URL=dead)))
    response = await client.get("/health/ready")
    body = await response.json()
    assert response.status == 503
    assert body["database"]["ok"] is True
    assert body["broker"]["ok"] is False and body["broker"]["detail"].startswith("unreachable")
    assert "secret-pw" not in await response.text()


async def test_metrics_are_prometheus_text_with_the_send_counter(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    initialise_labels()
    client = await aiohttp_client(build_app(make_settings()))
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    sends = families["retentiond_sends"]
    labels = {(s.labels["channel"], s.labels["status"]) for s in sends.samples if s.name == "retentiond_sends_total"}
    assert ("sms", "sent") in labels and ("webhook", "failed") in labels


async def test_health_details_names_each_component(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(make_settings(DATABASE_URL=migrated_db)))
    body = await (await client.get("/health/details")).json()
    assert body["status"] in ("healthy", "warning", "critical")
    assert set(body["components"]) == {"database", "broker", "queues", "dead_letters", "provider_errors",
                                       "scheduling_tick", "leases"}
    assert body["components"]["scheduling_tick"]["status"] == "warning"  # no tick has run in this test
