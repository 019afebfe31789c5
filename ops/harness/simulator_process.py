"""The provider simulator as a subprocess (``retentiond simulate-providers``), for daemon tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ops.harness.daemon import REPO, base_env, free_port


class SimulatorProcess:
    def __init__(self, workdir: Path, *, latency_ms: float = 0, error_rate: float = 0, rate_429: float = 0,
                 postmark_webhook_url: str | None = None, postmark_webhook_headers: Mapping[str, str] | None = None,
                 callback_delay_ms: float = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.args = ["--port", str(self.port), "--latency-ms", str(latency_ms), "--error-rate", str(error_rate),
                     "--rate-429", str(rate_429), "--callback-delay-ms", str(callback_delay_ms)]
        if postmark_webhook_url:
            self.args += ["--postmark-webhook-url", postmark_webhook_url]
        for name, value in (postmark_webhook_headers or {}).items():
            self.args += ["--postmark-webhook-header", f"{name}:{value}"]
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30) -> SimulatorProcess:
        with (self.workdir / "simulator.log").open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "daemon.cli", "simulate-providers", *self.args],
                                            env=base_env(), cwd=REPO, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.stats()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise AssertionError((self.workdir / "simulator.log").read_text()) from None
                time.sleep(0.1)
        raise AssertionError("the simulator did not start")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as response:
            return dict(json.loads(response.read()))

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/stats/reset", method="POST", data=b"")
        urllib.request.urlopen(request, timeout=5).close()

    def _get(self, path: str, **query: str | None) -> dict[str, Any]:
        wanted = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        with urllib.request.urlopen(f"{self.url}{path}" + (f"?{wanted}" if wanted else ""), timeout=5) as response:
            return dict(json.loads(response.read()))

    def _post(self, path: str, document: Mapping[str, Any], timeout_s: float = 5) -> dict[str, Any]:
        """POST JSON; an answer other than 2xx raises urllib.error.HTTPError (its body says why)."""
        request = urllib.request.Request(f"{self.url}{path}", method="POST", data=json.dumps(document).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return dict(json.loads(response.read()))

    def messages(self, channel: str | None = None, to: str | None = None) -> list[dict[str, Any]]:
        """What the providers were asked to send, oldest first (GET /messages)."""
        return list(self._get("/messages", channel=channel, to=to)["messages"])

    def callbacks(self) -> list[dict[str, Any]]:
        """Every receipt the simulator posted back, oldest first: kind, url, status, fields or body."""
        return list(self._get("/callbacks")["callbacks"])

    def set_outcome(self, to: str, outcome: str) -> None:
        """What happens to messages to ``to``: delivered, undelivered, failed, bounce, spam_complaint,
        busy, no-answer or machine."""
        self._post("/simulate/outcome", {"to": to, "outcome": outcome})

    def inbound_sms(self, url: str, account_sid: str, sender: str, to: str, body: str) -> int:
        """``sender`` texts ``body`` to ``to``: Twilio's signed inbound webhook goes to ``url``; its HTTP status."""
        answer = self._post("/simulate/twilio/inbound", {"url": url, "account_sid": account_sid, "from": sender,
                                                         "to": to, "body": body}, timeout_s=15)
        return int(answer["status"])

    def postmark_webhook(self, url: str | None, headers: Mapping[str, str] | None = None) -> None:
        """Point Postmark's webhooks at ``url`` (user:password@ in it: basic auth), with custom headers;
        None stops them."""
        self._post("/simulate/postmark/webhook", {"url": url, "headers": dict(headers or {})})

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def provider_env(self) -> dict[str, str]:
        """Settings that point sms/call at Twilio and email at Postmark, both on this simulator."""
        return {
            "CHANNEL_SMS_PROVIDER": "twilio", "CHANNEL_CALL_PROVIDER": "twilio",
            "CHANNEL_EMAIL_PROVIDER": "postmark", "CHANNEL_PUSH_PROVIDER": "push",
            "CHANNEL_WEBHOOK_PROVIDER": "webhook",
            "PROVIDER_TWILIO_URL": self.url, "PROVIDER_TWILIO_ACCOUNT_SID": "AC00000000000000000000000000000000",
            "PROVIDER_TWILIO_AUTH_TOKEN": "test-auth-token", "PROVIDER_TWILIO_FROM": "+15005550006",
            "PROVIDER_POSTMARK_URL": self.url, "PROVIDER_POSTMARK_SERVER_TOKEN": "test-server-token",
            "PROVIDER_POSTMARK_FROM": "team@example.com",
            "PROVIDER_PUSH_URL": f"{self.url}/push", "PROVIDER_WEBHOOK_URL": f"{self.url}/webhook",
            "PROVIDER_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        }
