"""The provider simulator as a subprocess (``retentiond simulate-providers``), for daemon tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ops.harness.daemon import REPO, base_env, free_port


class SimulatorProcess:
    def __init__(self, workdir: Path, *, latency_ms: float = 0, error_rate: float = 0, rate_429: float = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.args = ["--port", str(self.port), "--latency-ms", str(latency_ms), "--error-rate", str(error_rate),
                     "--rate-429", str(rate_429)]
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
