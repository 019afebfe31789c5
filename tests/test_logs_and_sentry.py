"""No personal data in logs or in Sentry; an actor's error reaches Sentry through its Dramatiq
integration (a test transport stands in for the network)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator

import dramatiq
import pytest
import sentry_sdk
from dramatiq.brokers.stub import StubBroker
from sentry_sdk.transport import Transport

from daemon.logging_setup import MAX_MESSAGE_CHARS, MaskPersonalData, mask, setup_sentry


def test_emails_and_phone_numbers_are_masked() -> None:
    assert mask("to ada.lovelace@example.com") == "to a***@example.com"
    assert mask("sms +447911123456 sent") == "sms +447*******56 sent"
    assert mask("send 123456 of campaign 42") == "send 123456 of campaign 42"


def test_a_log_line_never_carries_an_address() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskPersonalData())
    logger = logging.getLogger("test.masking")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("bounce for %s (%s)", "grace@example.com", "+12015550100")
        try:
            raise ValueError("invalid recipient bob@example.com")
        except ValueError:
            logger.exception("provider refused")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "grace@example.com" not in text and "+12015550100" not in text and "bob@example.com" not in text
    assert "g***@example.com" in text and "b***@example.com" in text


def test_debug_logging_does_not_log_sql_parameters(tmp_path, capfd) -> None:  # type: ignore[no-untyped-def]
    from daemon.logging_setup import setup_logging
    from db.database import close_database, database, init_database

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("peewee").level)
    setup_logging("DEBUG", "text")
    init_database(f"sqlite:///{tmp_path / 'debug.db'}")
    try:
        database.execute_sql("SELECT ?", ("Ada Lovelace, birthday 10 Dec, body: your code is 4711",))
        logging.getLogger("daemon.test").debug("debug lines still come through")
    finally:
        close_database()
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("peewee").setLevel(saved[2])
    err = capfd.readouterr().err
    assert "debug lines still come through" in err
    assert "Ada Lovelace" not in err and "4711" not in err


class Captured(Transport):
    def __init__(self, options=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(options)
        self.events: list[dict] = []

    def capture_envelope(self, envelope) -> None:  # type: ignore[no-untyped-def]
        for item in envelope.items:
            if item.headers.get("type") == "event":
                self.events.append(json.loads(item.payload.get_bytes()))


def test_an_actor_error_reaches_sentry_without_the_address() -> None:
    transport = Captured()
    try:
        assert setup_sentry("https://public@sentry.example.com/1", transport=transport)
        broker = StubBroker()
        broker.emit_after("process_boot")

        @dramatiq.actor(broker=broker, max_retries=0)
        def explode() -> None:
            raise RuntimeError("provider refused ada@example.com")

        worker = dramatiq.Worker(broker, worker_timeout=50)
        worker.start()
        try:
            explode.send()
            broker.join(explode.queue_name, fail_fast=False)
            worker.join()
        finally:
            worker.stop()
        sentry_sdk.flush()
        errors = [e for e in transport.events if e.get("exception")]
        assert errors, "no event reached the transport"
        value = errors[0]["exception"]["values"][0]["value"]
        assert value == "provider refused a***@example.com"
    finally:
        sentry_sdk.init()  # back to no DSN: nothing else in the suite reports


# -- a log line costs time in proportion to its length, and is bounded ---------------------------

# Inputs that made the masking regex backtrack: long runs of address characters with no address
# in them, runs ending in '@', domains without a dot, and alternations of both.
ADVERSARIAL = {
    "local part without @": lambda n: "a" * n,
    "run ending in @": lambda n: "a" * (n - 1) + "@",
    "domain without a dot": lambda n: "x@" + "a" * (n - 2),
    "dots without a TLD": lambda n: "x@" + "a." * (n // 2),
    "plus and digits": lambda n: "+1" * (n // 2),
    "plus then digits": lambda n: "+" + "1" * (n - 1),
    "dashes": lambda n: "a-" * (n // 2),
    "at signs": lambda n: "a@" * (n // 2),
}


def _cost(text: str) -> float:
    """The best of up to five runs of mask(text), in seconds: the least disturbed by other processes
    (fewer runs when one is slow, so a quadratic regex fails the test without running for minutes)."""
    best, spent = float("inf"), 0.0
    for _ in range(5):
        started = time.perf_counter()
        mask(text)
        took = time.perf_counter() - started
        best, spent = min(best, took), spent + took
        if spent > 1.0:
            break
    return best


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_masking_cost_grows_linearly_with_the_input(shape: str) -> None:
    # Given hostile text 20 times longer than another of the same shape
    small, large = ADVERSARIAL[shape](5_000), ADVERSARIAL[shape](100_000)
    # When both are masked
    ratio = _cost(large) / max(_cost(small), 1e-7)
    # Then the cost grows about 20 times (linear), far from the 400 times of a quadratic regex
    assert ratio < 100, f"{shape}: 20x the input cost {ratio:.0f}x the time"


def test_a_huge_log_message_is_cut_and_still_masked() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskPersonalData())
    logger = logging.getLogger("test.huge")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        # an address right across the point where the message is cut
        body = "x" * (MAX_MESSAGE_CHARS - 5) + " ada.lovelace@example.com " + "y" * 1_000_000
        logger.warning("body: %s", body)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert len(text) < MAX_MESSAGE_CHARS + 200
    assert "lovelace" not in text and "more characters" in text


@pytest.mark.parametrize("garbage", [
    b"SECRET-GARBAGE-" * 4400 + b"\r\n\r\n",  # 64 KiB that is no request at all
    b"POST /webhooks/twilio?SECRET-GARBAGE=\xff\xfe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
], ids=["64 KiB of garbage", "request line not UTF-8"])
async def test_a_garbage_request_does_not_put_its_bytes_in_the_log(capfd: pytest.CaptureFixture[str],
                                                                   garbage: bytes) -> None:
    from aiohttp import web

    from daemon.logging_setup import setup_logging
    from daemon.web.app import build_public_app
    from ops.harness.daemon import free_port
    from tests.support.settings import make_settings

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("INFO", "json")
    runner = web.AppRunner(build_public_app(make_settings(SOURCE_TWILIO_SCHEME="twilio",
                                                   SOURCE_TWILIO_SECRET="twilio-auth-token-0123456789")),
                           access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        # Given a kept-alive connection that made one good request
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readexactly(16), 10)
        # When its second request is garbage that carries something secret
        writer.write(garbage)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(100), 30)
        writer.close()
    finally:
        await runner.cleanup()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    # Then it is refused, and the log says so in one line without the request's bytes
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    err = capfd.readouterr().err
    assert "SECRET-GARBAGE" not in err
    lines = [json.loads(line) for line in err.splitlines() if "aiohttp.server" in line]
    assert len(lines) == 1 and "bad HTTP request" in lines[0]["message"], err[:2000]
    assert "Traceback" not in err


# -- Sentry: no secrets from headers, bodies or stack-frame locals --------------------------------

ADMIN_SECRET = "admin-token-" + "k" * 40
WEBHOOK_SECRET = "webhook-token-" + "w" * 40


@pytest.fixture
def sentry_events() -> Iterator[list[dict]]:
    transport = Captured()
    assert setup_sentry("https://public@sentry.example.com/1", transport=transport)
    try:
        yield transport.events
    finally:
        sentry_sdk.init()


async def test_a_500_sends_sentry_no_token(aiohttp_client, sentry_events: list[dict],  # type: ignore[no-untyped-def]
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.web import webhooks as routes_webhooks
    from daemon.web.api import stats as routes_stats
    from daemon.web.app import build_admin_app, build_public_app
    from tests.support.settings import make_settings

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the handler broke")

    monkeypatch.setattr(routes_stats, "overview", explode)
    monkeypatch.setattr(routes_webhooks, "interpret", explode)
    settings = make_settings(ADMIN_TOKEN=ADMIN_SECRET, SOURCE_ZAP_SCHEME="token", SOURCE_ZAP_SECRET=WEBHOOK_SECRET)
    client = await aiohttp_client(build_public_app(settings))
    admin_client = await aiohttp_client(build_admin_app(settings))
    # Given an admin request with the bearer token and a webhook with its token, both ending in a 500
    response = await admin_client.get("/api/v1/stats", headers={"Authorization": f"Bearer {ADMIN_SECRET}",
                                                         "Cookie": f"session={ADMIN_SECRET}"})
    assert response.status == 500
    response = await client.post(f"/webhooks/zap?token={WEBHOOK_SECRET}", data=f'{{"token": "{WEBHOOK_SECRET}"}}',
                                 headers={"X-Webhook-Token": WEBHOOK_SECRET})
    assert response.status == 500
    sentry_sdk.flush()
    # Then Sentry got the errors, and neither token anywhere in them
    assert len([e for e in sentry_events if e.get("exception")]) >= 2
    sent = json.dumps(sentry_events)
    assert "the handler broke" in sent
    assert ADMIN_SECRET not in sent and WEBHOOK_SECRET not in sent


# -- tracebacks and stacks are masked in both formats (JSON formats exc_info on its own) ----------


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_traceback_in_the_log_never_carries_an_address(fmt: str, capfd: pytest.CaptureFixture[str]) -> None:
    from daemon.logging_setup import setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("INFO", fmt)
    try:
        # Given an error whose message (and so its traceback) holds an address and a phone number
        try:
            raise ValueError("refused john.doe@example.com phone +12015550123")
        except ValueError:
            # When it is logged with its traceback, and another line with the stack
            logging.getLogger("test.tracebacks").exception("provider refused")
        def deep(address: str) -> None:
            logging.getLogger("test.tracebacks").warning("stack", stack_info=True)

        deep("jane.roe@example.com")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capfd.readouterr().err
    # Then the traceback is there, masked
    assert "Traceback" in err and "ValueError: refused j***@example.com phone +120******23" in err
    assert "john.doe@example.com" not in err and "+12015550123" not in err
    if fmt == "json":
        records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert any("j***@example.com" in r.get("exc_info", "") for r in records)
        assert all("stack_info" in r for r in records[1:])


def test_a_stack_in_the_log_never_carries_an_address(capfd: pytest.CaptureFixture[str]) -> None:
    from daemon.logging_setup import setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    for fmt in ("json", "text"):
        setup_logging("INFO", fmt)
        try:
            # A stack's source lines may quote a literal address: the one on the next line does
            logging.getLogger("test.stacks").warning("here", stack_info=True); _ = "ada@example.com"  # noqa: E702
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
    err = capfd.readouterr().err
    # Then both lines carry the stack, with the address masked
    assert err.count("test_a_stack_in_the_log") == 2
    assert "ada@example.com" not in err and err.count("a***@example.com") == 2


# -- Sentry: capability tokens in paths ----------------------------------------------------------


async def test_sentry_gets_no_unsubscribe_or_link_token(aiohttp_client,  # type: ignore[no-untyped-def]
                                                        sentry_events: list[dict]) -> None:
    from aiohttp import web

    # Given the public paths whose last segment is a capability (unsubscribe, tracked link)
    async def explode(request: web.Request) -> web.Response:
        raise RuntimeError("the handler broke")

    app = web.Application()
    app.router.add_get("/u/{token}", explode)
    app.router.add_get("/t/{token}", explode)
    client = await aiohttp_client(app)
    unsubscribe_token, link_token = "U" * 24 + "-unsub", "T" * 24 + "-link"
    # When their handlers fail and Sentry reports it
    assert (await client.get(f"/u/{unsubscribe_token}")).status == 500
    assert (await client.get(f"/t/{link_token}?utm=x")).status == 500
    sentry_sdk.flush()
    # Then the reports arrived, and neither capability is in them
    assert len([e for e in sentry_events if e.get("exception")]) == 2
    sent = json.dumps(sentry_events)
    assert unsubscribe_token not in sent and link_token not in sent
    assert "/u/[token]" in sent and "/t/[token]" in sent
