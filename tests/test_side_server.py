"""The side server in process: liveness, readiness naming the failing part, Prometheus text."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from daemon.web import operators, public
from daemon.web.app import build_admin_app, build_public_app, make_runner
from db.database import close_database, init_database
from db.migrate import migrate
from db.models import InboundEvent
from ground.metrics import initialise_labels
from ops.harness.daemon import REPO, free_port
from tests.support.settings import make_settings


async def test_health_is_ok_while_the_process_is_up(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_public_app(make_settings()))
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_ready_when_database_and_broker_answer(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_public_app(make_settings(DATABASE_URL=migrated_db)))
    response = await client.get("/health/ready")
    body = await response.json()
    assert response.status == 200, body
    assert body["database"]["ok"] and body["broker"]["ok"]


async def test_not_ready_names_the_unreachable_broker(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    dead = f"amqp://guest:secret-pw@127.0.0.1:{free_port()}/"
    client = await aiohttp_client(build_public_app(make_settings(DATABASE_URL=migrated_db, BROKER_URL=dead)))
    response = await client.get("/health/ready")
    body = await response.json()
    assert response.status == 503
    assert body["database"]["ok"] is True
    assert body["broker"]["ok"] is False and body["broker"]["detail"].startswith("unreachable")
    assert "secret-pw" not in await response.text()


async def test_metrics_are_prometheus_text_with_the_send_counter(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    initialise_labels()
    client = await aiohttp_client(build_admin_app(make_settings()))
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    sends = families["retentiond_sends"]
    labels = {(s.labels["channel"], s.labels["status"]) for s in sends.samples if s.name == "retentiond_sends_total"}
    assert ("sms", "sent") in labels and ("webhook", "failed") in labels


async def test_health_details_names_each_component(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_admin_app(make_settings(DATABASE_URL=migrated_db)))
    body = await (await client.get("/health/details")).json()
    assert body["status"] in ("healthy", "warning", "critical")
    assert set(body["components"]) == {"database", "broker", "queues", "dead_letters", "provider_errors",
                                       "scheduling_tick", "leases"}
    assert body["components"]["scheduling_tick"]["status"] == "warning"  # no tick has run in this test


async def test_health_details_is_computed_once_per_cache_period_however_many_ask(  # type: ignore[no-untyped-def]
        aiohttp_client, migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.web import health_details

    # Given a count of the computations (each opens a broker connection and runs queries)
    computed: list[str] = []
    real = health_details.details

    def counted(settings):  # type: ignore[no-untyped-def]
        computed.append("once")
        return real(settings)

    monkeypatch.setattr(health_details, "details", counted)
    client = await aiohttp_client(build_admin_app(make_settings(DATABASE_URL=migrated_db,
                                                                HEALTH_DETAILS_CACHE_S="0.5")))

    async def fetch() -> dict:
        async with client.get("/health/details") as response:
            assert response.status == 200
            return await response.json()

    # When twenty dashboards ask at once, Then one computation answers all of them
    bodies = await asyncio.gather(*(fetch() for _ in range(20)))
    assert len(computed) == 1 and len({b["checked_at"] for b in bodies}) == 1
    assert bodies[0]["checked_at"].endswith("Z")
    # and once the period is over the next caller gets a fresh one
    first = bodies[0]["checked_at"]
    async with asyncio.timeout(GUARD_S):
        while (await fetch())["checked_at"] == first:
            await asyncio.sleep(0.05)
    assert len(computed) == 2


# -- slow and idle clients, against a real server with short timeouts ------------------------------

SLOW_TOKEN = "slow-client-test-token-0123456789"
# A guard against hanging, far above the configured timeouts; not a measure of speed.
GUARD_S = 30.0


@pytest.fixture
async def live_server(sqlite_url: str) -> AsyncIterator[int]:
    """The side server as the daemon serves it, on a real port, with 1-second timeouts."""
    settings = make_settings(DATABASE_URL=sqlite_url, HTTP_IDLE_TIMEOUT_S="1", HTTP_BODY_TIMEOUT_S="1",
                             SOURCE_ZAP_SCHEME="token", SOURCE_ZAP_SECRET=SLOW_TOKEN)
    runner = make_runner(build_public_app(settings), settings)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield port
    await runner.cleanup()


async def trickle_until_closed(port: int, first: bytes, drip: bytes | None, every_s: float = 0.2) -> bytes:
    """Send ``first``, then ``drip`` every ``every_s`` (or nothing), until the server closes the
    connection; return what it answered. Fails if it is still open after GUARD_S."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(first)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GUARD_S
        while loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), every_s)
            except TimeoutError:
                chunk = None
            except ConnectionError:
                return answer
            if chunk == b"":
                return answer
            answer += chunk or b""
            if drip is not None:
                try:
                    writer.write(drip)
                    await writer.drain()
                except ConnectionError:
                    return answer
        raise AssertionError(f"connection still open after {GUARD_S}s; answered {answer[:200]!r}")
    finally:
        writer.close()


async def test_a_connection_that_never_sends_a_request_is_closed(live_server: int) -> None:
    assert await trickle_until_closed(live_server, b"", None) == b""


async def test_headers_sent_one_line_at_a_time_do_not_hold_the_connection(live_server: int) -> None:
    # Given a client that sends one more header line every 0.5 s, forever (slowly enough that the
    # limit on the number of headers, 128, would take a minute to reach)
    first = b"POST /webhooks/zap HTTP/1.1\r\nHost: x\r\n"
    # Then the server closes the connection without an answer, not waiting for the end of the headers
    assert await trickle_until_closed(live_server, first, b"X-Slow: 1\r\n", every_s=0.5) == b""


async def test_a_body_sent_one_byte_at_a_time_gets_408_and_the_connection_closes(live_server: int) -> None:
    first = (b"POST /webhooks/zap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"X-Webhook-Token: " + SLOW_TOKEN.encode() + b"\r\nContent-Length: 100000\r\n\r\n{")
    answer = await trickle_until_closed(live_server, first, b" ")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


async def test_an_idle_keep_alive_connection_is_closed(live_server: int) -> None:
    # Given a client that made one request on a kept-alive connection and then went quiet
    answer = await trickle_until_closed(live_server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", None)
    # Then it got its answer, and the connection was closed after the idle timeout
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_an_oversized_header_line_is_refused(live_server: int) -> None:
    first = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    answer = await trickle_until_closed(live_server, first, None)
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]


# -- the reverse proxy shipped in ops/nginx, with the real nginx ----------------------------------

NGINX_CONF = REPO / "ops" / "nginx" / "retentiond.conf"


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (make tools installs it)")
        pytest.skip("nginx is not installed (make tools installs it)")
    return found


def _nginx_for_test(tmp: Path, upstream_port: int, https_port: int, http_port: int) -> Path:
    """The shipped site file with only the machine-specific parts replaced (ports, certificate),
    inside a minimal nginx.conf whose files all live under ``tmp``."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=hooks.example.com", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                   check=True, capture_output=True)
    site = NGINX_CONF.read_text()
    replacements = {
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "/etc/letsencrypt/live/hooks.example.com/fullchain.pem": str(tmp / "cert.pem"),
        "/etc/letsencrypt/live/hooks.example.com/privkey.pem": str(tmp / "key.pem"),
    }
    for old, new in replacements.items():
        assert site.count(old) == 1, f"{old!r} not in {NGINX_CONF.name}"
        site = site.replace(old, new)
    (tmp / "retentiond.conf").write_text(site)
    temp_paths = "\n".join(f"  {kind}_temp_path {tmp / kind};" for kind in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = tmp / "nginx.conf"
    main.write_text(f"pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} warn;\ndaemon off;\n"
                    f"worker_processes 1;\nevents {{}}\nhttp {{\n  access_log off;\n{temp_paths}\n"
                    f"  include {tmp / 'retentiond.conf'};\n}}\n")
    return main


def test_the_public_routes_are_what_the_proxy_passes_and_the_operators_routes_are_not() -> None:
    # A route added to the wrong audience's module would be served to the world, or not at all
    locations = re.findall(r"location\s+(=?)\s*(\S+)\s*\{\s*proxy_pass", NGINX_CONF.read_text())
    assert locations

    def passed(path: str) -> bool:
        return any(path == prefix if exact else path.startswith(prefix) for exact, prefix in locations)

    def paths(routes: tuple[web.AbstractRouteDef, ...]) -> set[str]:
        return {route.path for route in routes if isinstance(route, web.RouteDef)}

    assert all(passed(path) for path in paths(public.ROUTES)), paths(public.ROUTES)
    assert not any(passed(path) for path in paths(operators.OPERATORS_ONLY)), paths(operators.OPERATORS_ONLY)
    assert {"/metrics", "/health/details", "/api/v1/stats"} <= paths(operators.OPERATORS_ONLY)
    # and the two listeners share nothing but liveness and readiness
    assert paths(public.ROUTES) & paths(operators.ROUTES) == {"/health", "/health/ready"}


async def test_the_shipped_nginx_config_is_valid_and_forwards_only_the_public_paths(
        sqlite_url: str, tmp_path: Path) -> None:
    nginx = _nginx()
    init_database(sqlite_url)
    migrate()
    settings = make_settings(DATABASE_URL=sqlite_url, SOURCE_ZAP_SCHEME="token", SOURCE_ZAP_SECRET=SLOW_TOKEN,
                             ADMIN_TOKEN="admin-token-0123456789abcdef")
    runner = make_runner(build_public_app(settings), settings)
    await runner.setup()
    upstream = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream).start()
    https_port, http_port = free_port(), free_port()
    conf = _nginx_for_test(tmp_path, upstream, https_port, http_port)
    # The config passes nginx's own check
    check = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with (tmp_path / "nginx.stderr").open("wb") as stderr:
        proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf)], stderr=stderr)
    base = f"https://127.0.0.1:{https_port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
            async with asyncio.timeout(GUARD_S):
                while True:  # until nginx listens
                    try:
                        async with session.get(f"{base}/health") as response:
                            assert response.status == 200 and await response.json() == {"status": "ok"}
                            assert response.headers["Strict-Transport-Security"]
                            break
                    except aiohttp.ClientConnectionError:
                        assert proxy.poll() is None, (tmp_path / "nginx.stderr").read_text()
                        await asyncio.sleep(0.05)

            async def status(method: str, path: str, **kwargs: Any) -> int:
                async with session.request(method, base + path, allow_redirects=False, **kwargs) as response:
                    await response.read()
                    return response.status

            # Then the public paths reach the daemon
            assert await status("GET", "/health/ready") == 200
            event = json.dumps({"id": "via-nginx", "type": "conversion", "data": {"email": "a@example.com"}})
            headers = {"X-Webhook-Token": SLOW_TOKEN, "Content-Type": "application/json"}
            assert await status("POST", "/webhooks/zap", data=event, headers=headers) == 202
            assert await status("GET", "/t/no-such-link") == 404  # the daemon's answer: unknown token
            assert await status("GET", "/u/no-such-token") == 404
            # and nothing else does, whatever the spelling of the path
            admin = {"Authorization": "Bearer admin-token-0123456789abcdef"}
            for path in ("/metrics", "/health/details", "/api/v1/stats", "/", "/webhooks/../metrics",
                         "/webhooks/%2e%2e/metrics", "/t/../api/v1/stats", "/healthz", "/health/ready/../details"):
                assert await status("GET", path, headers=admin) in (400, 404), path
            # A body over the limit is refused by nginx before it reaches the daemon
            big = json.dumps({"id": "too-big", "type": "conversion", "data": {"name": "x" * 300_000}})
            assert await status("POST", "/webhooks/zap", data=big, headers=headers) == 413
            # Only the event that went through was stored
            assert [e.event_id for e in InboundEvent.select()] == ["via-nginx"]
            # Plain HTTP is sent to HTTPS
            async with session.get(f"http://127.0.0.1:{http_port}/webhooks/zap", allow_redirects=False) as response:
                assert response.status == 301 and response.headers["Location"].startswith("https://")
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        await runner.cleanup()
        close_database()
