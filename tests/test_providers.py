"""Each provider adapter against the provider simulator (or a real local SMTP server): request
shape, idempotency key, result id, and the mapping of failures to retry / wait / give up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from standardwebhooks import Webhook

from actors.providers import OutboundMessage, build_provider
from actors.providers.http import request, retry_after_s
from actors.providers.postmark import PostmarkProvider
from ground.errors import (
    ConfigError,
    PermanentChannelError,
    ProviderRateLimited,
    TransientChannelError,
    UnbuildableMessage,
)
from ground.settings import Secret
from ops.harness.daemon import free_port
from ops.simulator import SIMULATOR, build_simulator_app

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def message(key: str = "k1", recipient: str | None = "+12015550100", **extra: object) -> OutboundMessage:
    values: dict = {"send_id": 1, "channel": "sms", "idempotency_key": key, "recipient": recipient,
                    "subject": "Hello", "body": "Hi <Ada> & co", **extra}
    return OutboundMessage(**values)


def options(**values: str) -> dict[str, Secret]:
    return {k: Secret(v) for k, v in values.items()}


@pytest.fixture
async def simulator(aiohttp_server) -> AsyncIterator:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(build_simulator_app())
    yield server


def twilio(server, channel: str = "sms"):  # type: ignore[no-untyped-def]
    return build_provider("twilio", options(url=str(server.make_url("")), account_sid="AC1", auth_token="t",
                                            **{"from": "+15005550006"}), channel)


async def test_twilio_sms_and_call_reach_the_simulator_with_their_key(simulator) -> None:  # type: ignore[no-untyped-def]
    sms, call = twilio(simulator), twilio(simulator, "call")
    sent = await sms.send(message("sms-1"))
    rang = await call.send(message("call-1", channel="call"))
    assert sent.provider_message_id.startswith("SM") and rang.provider_message_id.startswith("CA")
    await sms.send(message("sms-1"))  # the same send again: the provider sees a duplicate
    stats = simulator.app[SIMULATOR].deliveries.as_dict()
    assert stats == {"received": 3, "duplicates": 1, "by_channel": {"sms": 2, "call": 1}}
    await sms.close()


def test_twilio_needs_its_credentials() -> None:
    with pytest.raises(ConfigError, match="RETENTIOND_PROVIDER_TWILIO_AUTH_TOKEN"):
        build_provider("twilio", options(account_sid="AC1", **{"from": "+1"}), "sms")
    with pytest.raises(ConfigError, match="sms and call only"):
        build_provider("twilio", options(account_sid="AC1", auth_token="t", **{"from": "+1"}), "email")


@pytest.fixture
async def answers(aiohttp_server) -> AsyncIterator:  # type: ignore[no-untyped-def]
    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {"Retry-After": request.query["retry_after"]} if "retry_after" in request.query else {}
        return web.json_response({"code": 21211, "message": "Invalid 'To' Phone Number"}, status=code,
                                 headers=headers)
    app = web.Application()
    app.router.add_post("/status/{code}", status)
    yield await aiohttp_server(app)


async def test_http_failures_map_to_retry_wait_or_give_up(answers) -> None:  # type: ignore[no-untyped-def]
    from actors.providers.http import close_session

    url = str(answers.make_url("/status"))
    with pytest.raises(TransientChannelError, match="503"):
        await request("x", "POST", f"{url}/503")
    with pytest.raises(ProviderRateLimited) as limited:
        await request("x", "POST", f"{url}/429?retry_after=7")
    assert limited.value.retry_after_s == 7
    with pytest.raises(PermanentChannelError, match="400: 21211 Invalid 'To' Phone Number"):
        await request("x", "POST", f"{url}/400")
    with pytest.raises(TransientChannelError):
        await request("x", "POST", f"http://127.0.0.1:{free_port()}/nobody-listens")
    await close_session()


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert retry_after_s("12") == 12
    assert retry_after_s(None) == 1.0
    assert 25 < retry_after_s(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))) <= 30


def postmark(server, **extra: str) -> PostmarkProvider:  # type: ignore[no-untyped-def]
    provider = build_provider("postmark", options(url=str(server.make_url("")), server_token="pm",
                                                  **{"from": "team@example.com"}, **extra), "email")
    assert isinstance(provider, PostmarkProvider)
    return provider


async def test_postmark_batch_flushes_at_50_messages_in_one_call(simulator) -> None:  # type: ignore[no-untyped-def]
    provider = postmark(simulator, batch_wait_ms="60000")  # only the size can trigger the flush
    results = await asyncio.wait_for(asyncio.gather(*[
        provider.send(message(f"m{i}", recipient=f"p{i}@example.com", channel="email")) for i in range(50)]), 10)
    assert provider.batch_calls == 1
    assert len({r.provider_message_id for r in results}) == 50
    assert simulator.app[SIMULATOR].deliveries.as_dict()["by_channel"] == {"email": 50}
    await provider.close()


async def test_postmark_batch_flushes_after_the_wait(simulator) -> None:  # type: ignore[no-untyped-def]
    provider = postmark(simulator, batch_wait_ms="300")
    started = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*[
        provider.send(message(f"t{i}", recipient=f"p{i}@example.com", channel="email")) for i in range(3)]), 10)
    waited = time.monotonic() - started
    assert provider.batch_calls == 1 and len(results) == 3
    assert 0.25 <= waited < 5
    await provider.close()


async def test_postmark_single_call_and_a_failing_batch(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(build_simulator_app(error_rate=1.0))
    provider = postmark(server, batch_wait_ms="50")
    with pytest.raises(TransientChannelError):
        await provider.send(message("e1", recipient="a@example.com", channel="email"))
    await provider.close()
    ok = await aiohttp_server(build_simulator_app())
    single = postmark(ok, batch="false")
    result = await single.send(message("s1", recipient="a@example.com", channel="email"))
    assert result.provider_message_id and single.batch_calls == 0
    await single.close()


async def test_the_simulator_answers_429_with_retry_after(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(build_simulator_app(rate_429=1.0))
    provider = twilio(server)
    with pytest.raises(ProviderRateLimited) as limited:
        await provider.send(message())
    assert limited.value.retry_after_s == 1
    assert server.app[SIMULATOR].deliveries.received == 0  # a refused call is no delivery
    await provider.close()


async def test_webhook_posts_are_signed_with_standard_webhooks(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[bytes, dict[str, str]]] = []

    async def receive(request: web.Request) -> web.Response:
        seen.append((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})
    app = web.Application()
    app.router.add_post("/hook", receive)
    server = await aiohttp_server(app)
    provider = build_provider("webhook", options(url=str(server.make_url("/hook")), secret=SECRET), "webhook")
    await provider.send(message("wh-1", channel="webhook", recipient="u-1"))
    body, headers = seen[0]
    verified = Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
    assert verified["data"]["recipient"] == "u-1" and headers["webhook-id"] == "wh-1"
    await provider.close()


async def test_push_gateway(simulator) -> None:  # type: ignore[no-untyped-def]
    provider = build_provider("push", options(url=str(simulator.make_url("/push")), token="tok"), "push")
    result = await provider.send(message("p-1", channel="push", recipient="u-1", devices={"ntfy": ("topic-1",)}))
    assert result.provider_message_id
    assert simulator.app[SIMULATOR].deliveries.by_channel["push"] == 1
    await provider.close()


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        self.messages.append(envelope.content)
        return "250 OK"


async def test_smtp_delivers_with_the_unsubscribe_headers() -> None:
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        provider = build_provider("smtp", options(host="127.0.0.1", port=str(port), **{"from": "team@example.com"}),
                                  "email")
        headers = {"List-Unsubscribe": "<https://go.example.com/u/tok>",
                   "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
        result = await provider.send(message("mail-1", recipient="ada@example.com", channel="email",
                                             headers=headers))
        assert result.provider_message_id == "<mail-1@example.com>"
        raw = inbox.messages[0].decode()
        assert "List-Unsubscribe: <https://go.example.com/u/tok>" in raw
        assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in raw
        assert "X-Idempotency-Key: mail-1" in raw and "Subject: Hello" in raw
    finally:
        controller.stop()


async def test_smtp_refusals_and_outages(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    provider = build_provider("smtp", options(host="127.0.0.1", port=str(free_port()), timeout_s="2",
                                              **{"from": "team@example.com"}), "email")
    with pytest.raises(TransientChannelError):
        await provider.send(message("m", recipient="ada@example.com", channel="email"))


async def test_the_simulators_injected_failure_rates(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(build_simulator_app(error_rate=0.1, rate_429=0.05, seed=7))
    provider = twilio(server)
    outcomes = {"ok": 0, "503": 0, "429": 0}

    async def one(i: int) -> None:
        try:
            await provider.send(message(f"r{i}"))
            outcomes["ok"] += 1
        except ProviderRateLimited:
            outcomes["429"] += 1
        except TransientChannelError:
            outcomes["503"] += 1
    await asyncio.gather(*[one(i) for i in range(2000)])
    assert 150 <= outcomes["503"] <= 250 and 60 <= outcomes["429"] <= 140
    stats = server.app[SIMULATOR].deliveries.as_dict()
    assert stats["received"] == outcomes["ok"] and stats["duplicates"] == 0
    await provider.close()


async def test_stats_reset(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_simulator_app())
    await client.post("/push", json={"topic": "u-1", "message": "x"}, headers={"Idempotency-Key": "a"})
    assert (await (await client.get("/stats")).json())["received"] == 1
    assert (await (await client.post("/stats/reset")).json()) == {"received": 0, "duplicates": 0, "by_channel": {}}


# -- a message that cannot be built is refused once, never retried -------------------------------

INJECTED = "Hello Ada\r\nBcc: everyone@example.com"


async def test_smtp_refuses_a_header_with_a_line_break_without_connecting() -> None:
    # Given an SMTP provider with nothing listening (a connection attempt would be a transient error)
    provider = build_provider("smtp", options(host="127.0.0.1", port=str(free_port()), timeout_s="2",
                                              **{"from": "team@example.com"}), "email")
    # When the subject or a header carries a line break, the message cannot be built: permanent
    for bad in ({"subject": INJECTED}, {"headers": {"List-Unsubscribe": "<https://x/u/t>\r\nBcc: e@example.com"}}):
        with pytest.raises(UnbuildableMessage, match="smtp: cannot build the message: .*line break") as caught:
            await provider.send(message("m", recipient="ada@example.com", channel="email", **bad))
        assert "everyone" not in str(caught.value) and "Bcc" not in str(caught.value)


async def test_postmark_refuses_a_subject_with_a_line_break_before_any_call(simulator) -> None:  # type: ignore[no-untyped-def]
    for batch in ("true", "false"):
        provider = postmark(simulator, batch=batch, batch_wait_ms="10")
        with pytest.raises(UnbuildableMessage, match="postmark: cannot build the message: the subject"):
            await provider.send(message("pm-x", recipient="ada@example.com", channel="email", subject=INJECTED))
        await provider.close()
    assert simulator.app[SIMULATOR].deliveries.as_dict()["received"] == 0


async def test_an_http_request_that_cannot_be_built_is_permanent(answers) -> None:  # type: ignore[no-untyped-def]
    from actors.providers.http import close_session

    # aiohttp refuses a header value with a line break before sending: retrying cannot help
    with pytest.raises(UnbuildableMessage, match="x: cannot build the request"):
        await request("x", "POST", str(answers.make_url("/status/200")), headers={"X-Title": INJECTED})
    with pytest.raises(UnbuildableMessage, match="x: cannot build the request"):
        await request("x", "POST", str(answers.make_url("/status/200")), json={"not": object()})
    await close_session()


def test_an_unbuildable_email_fails_after_one_attempt_with_its_reason(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    from db.models import Decision, Send

    # Given a planned email whose subject carries a line break (written before subjects were
    # made one line, or by hand), and SMTP as the email provider, retries allowed
    smtp = build_provider("smtp", options(host="127.0.0.1", port=str(free_port()), timeout_s="2",
                                          **{"from": "team@example.com"}), "email")
    pipeline = stub_pipeline({"email": smtp}, MAX_RETRIES="3")
    send = Send.create(idempotency_key="inj-1", channel="email", recipient="ada@example.com",
                       subject=INJECTED, body="hi")
    # When the outbox delivers it
    pipeline.relay_and_wait()
    # Then it failed on its one attempt, saying why, and was not retried
    row = Send.get_by_id(send.id)
    assert (row.status, row.attempts, row.reason) == ("failed", 1, "message cannot be built")
    assert row.error == "smtp: cannot build the message: the subject contains a line break"
    assert [d.outcome for d in Decision.select().where(Decision.send == send.id)] == ["failed"]
