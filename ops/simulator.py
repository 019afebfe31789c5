"""The provider simulator: the provider APIs retentiond speaks, on one local port, for tests,
benchmarks and try-outs (``retentiond simulate-providers``).

Serves Twilio Messages and Calls, Postmark /email and /email/batch, the generic webhook endpoint
(POST /webhook) and the push gateway (POST /push), each after ``latency_ms``, with injected
failures: a share ``error_rate`` of calls answered 503, a share ``rate_429`` answered 429 with
``Retry-After: 1`` (for a batch: the whole call). ``GET /stats`` counts successful deliveries:
``received`` (all of them), ``duplicates`` (a second delivery of an idempotency key already
delivered: a message sent twice) and ``by_channel``; ``POST /stats/reset`` zeroes them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import random
import signal
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from ops import simulator_push

logger = logging.getLogger(__name__)


MESSAGES_KEPT = 10_000  # GET /messages keeps the last ones (a bench sends far more)


class Deliveries:
    """What arrived, by idempotency key, and the last MESSAGES_KEPT messages with their contents;
    kept in memory."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.duplicates = 0
        self.by_channel: Counter[str] = Counter()
        self.seen: set[str] = set()
        self.messages: collections.deque[dict[str, Any]] = collections.deque(maxlen=MESSAGES_KEPT)

    def record(self, channel: str, key: str | None, message: Mapping[str, Any] | None = None) -> None:
        """Count one delivery; ``message`` (what the provider call carried: to, subject, text,
        html, headers...) is kept for ``GET /messages`` with the channel and key added."""
        self.received += 1
        self.by_channel[channel] += 1
        if key:
            if key in self.seen:
                self.duplicates += 1
            self.seen.add(key)
        self.messages.append({"channel": channel, "idempotency_key": key, **(message or {})})

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "duplicates": self.duplicates, "by_channel": dict(self.by_channel)}


class Simulator:
    def __init__(self, latency_ms: float, error_rate: float, rate_429: float, seed: int | None) -> None:
        self.latency_s = latency_ms / 1000
        self.error_rate = error_rate
        self.rate_429 = rate_429
        self.random = random.Random(seed)
        self.deliveries = Deliveries()

    async def fault(self) -> web.Response | None:
        """Wait the latency; then maybe fail the call as a busy provider would."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        draw = self.random.random()
        if draw < self.error_rate:
            return web.json_response({"code": 20500, "message": "Service unavailable (simulated)"}, status=503)
        if draw < self.error_rate + self.rate_429:
            return web.json_response({"code": 20429, "message": "Too many requests (simulated)"}, status=429,
                                     headers={"Retry-After": "1"})
        return None

    # -- Twilio ---------------------------------------------------------------------------------

    async def twilio(self, request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Basic "):
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        form = await request.post()
        if not form.get("To"):
            return web.json_response({"code": 21604, "message": "A 'To' phone number is required."}, status=400)
        failed = await self.fault()
        if failed is not None:
            return failed
        calls = request.match_info["resource"] == "Calls"
        key = request.headers.get("I-Twilio-Idempotency-Token") or request.headers.get("Idempotency-Key")
        self.deliveries.record("call" if calls else "sms", key)
        sid = ("CA" if calls else "SM") + uuid.uuid4().hex
        return web.json_response({"sid": sid, "status": "queued", "to": form.get("To")}, status=201)

    # -- Postmark -------------------------------------------------------------------------------

    @staticmethod
    def _postmark_auth(request: web.Request) -> web.Response | None:
        if not request.headers.get("X-Postmark-Server-Token"):
            return web.json_response({"ErrorCode": 10, "Message": "No Account or Server API tokens were supplied"},
                                     status=401)
        return None

    def _postmark_one(self, message: Any, key: str | None) -> dict[str, Any]:
        if not isinstance(message, dict) or not message.get("To"):
            return {"ErrorCode": 300, "Message": "Invalid 'To' address."}
        self.deliveries.record("email", key or (message.get("Metadata") or {}).get("idempotency_key"))
        return {"To": message["To"], "MessageID": str(uuid.uuid4()), "ErrorCode": 0, "Message": "OK"}

    async def postmark_email(self, request: web.Request) -> web.Response:
        refused = self._postmark_auth(request)
        if refused is not None:
            return refused
        message = await request.json()
        failed = await self.fault()
        if failed is not None:
            return failed
        result = self._postmark_one(message, request.headers.get("Idempotency-Key"))
        return web.json_response(result, status=200 if result["ErrorCode"] == 0 else 422)

    async def postmark_batch(self, request: web.Request) -> web.Response:
        refused = self._postmark_auth(request)
        if refused is not None:
            return refused
        messages = await request.json()
        if not isinstance(messages, list) or len(messages) > 500:
            return web.json_response({"ErrorCode": 300, "Message": "Expected a list of at most 500 messages"},
                                     status=422)
        failed = await self.fault()
        if failed is not None:
            return failed
        return web.json_response([self._postmark_one(m, None) for m in messages])

    # -- generic webhook and push ---------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        await request.read()
        failed = await self.fault()
        if failed is not None:
            return failed
        self.deliveries.record("webhook", request.headers.get("webhook-id") or request.headers.get("Idempotency-Key"))
        return web.json_response({"ok": True})

    async def push(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or not body.get("topic"):
            return web.json_response({"code": 40001, "message": "topic required"}, status=400)
        failed = await self.fault()
        if failed is not None:
            return failed
        self.deliveries.record("push", request.headers.get("Idempotency-Key"))
        return web.json_response({"id": uuid.uuid4().hex[:12], "topic": body["topic"]})

    # -- stats ----------------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.deliveries.as_dict())

    async def messages(self, request: web.Request) -> web.Response:
        """The messages kept, oldest first; ``?channel=`` and ``?to=`` filter them."""
        wanted = {k: request.query[k] for k in ("channel", "to") if k in request.query}
        found = [m for m in self.deliveries.messages if all(m.get(k) == v for k, v in wanted.items())]
        return web.json_response({"messages": found})

    async def reset(self, request: web.Request) -> web.Response:
        self.deliveries.reset()
        return web.json_response(self.deliveries.as_dict())


SIMULATOR = web.AppKey("simulator", Simulator)

Handler = Callable[[Simulator, web.Request], Awaitable[web.Response]]

# The POST routes standing in for each provider that speaks HTTP, by the provider's name
# (ground.vocabulary.ProviderName; not imported: the simulator stands outside the project, and
# tests/test_dispatch_tables.py checks these names against the providers that call out over HTTP).
PROVIDER_ROUTES: Mapping[str, Sequence[tuple[str, Handler]]] = {
    "twilio": [("/2010-04-01/Accounts/{sid}/{resource:Messages|Calls}.json", Simulator.twilio)],
    "postmark": [("/email", Simulator.postmark_email), ("/email/batch", Simulator.postmark_batch)],
    "webhook": [("/webhook", Simulator.webhook)],
    "push": [("/push", Simulator.push)],
    # Google's token endpoint stands with FCM: an FCM key file's token_uri points at it
    "fcm": [("/token", simulator_push.google_token),
            ("/v1/projects/{project}/messages:send", simulator_push.fcm_send)],
    "apns": [("/3/device/{token}", simulator_push.apns_send)],
}


def build_simulator_app(latency_ms: float = 0, error_rate: float = 0, rate_429: float = 0,
                        seed: int | None = None) -> web.Application:
    sim = Simulator(latency_ms, error_rate, rate_429, seed)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    for routes in PROVIDER_ROUTES.values():
        for path, handler in routes:
            app.router.add_post(path, functools.partial(handler, sim))
    app.router.add_get("/stats", sim.stats)
    app.router.add_get("/messages", sim.messages)
    app.router.add_post("/stats/reset", sim.reset)
    app[SIMULATOR] = sim
    return app


def run_simulator(host: str, port: int, latency_ms: float = 0, error_rate: float = 0, rate_429: float = 0) -> int:
    """Serve until SIGTERM or SIGINT; exit 0."""

    async def serve() -> None:
        runner = web.AppRunner(build_simulator_app(latency_ms, error_rate, rate_429), handle_signals=False,
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        logger.info("provider simulator on http://%s:%d (latency %g ms, 503s %g, 429s %g)",
                    host, port, latency_ms, error_rate, rate_429)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
        logger.info("provider simulator stopped: %s", json.dumps(runner.app[SIMULATOR].deliveries.as_dict()))

    asyncio.run(serve())
    return 0  # RET_OK
