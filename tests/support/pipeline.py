"""An in-process delivery pipeline (Dramatiq's stub broker and a worker over the migrated test
database) and a provider that records what it was handed, for tests that follow a send from the
outbox to the provider."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import dramatiq

from actors.broker import build_broker
from actors.providers import OutboundMessage, Provider, ProviderResult
from daemon.outbox import relay_planned_sends
from tests.conftest import make_settings


@dataclass
class RecordingProvider:
    """Accepts every message and keeps it, by send id, exactly as the provider was handed it."""

    name: str = "recording"
    messages: dict[int, list[OutboundMessage]] = field(default_factory=dict)

    async def send(self, message: OutboundMessage) -> ProviderResult:
        self.messages.setdefault(message.send_id, []).append(message)
        await asyncio.sleep(0)
        return ProviderResult(provider_message_id=f"rec-{message.send_id}")

    async def close(self) -> None:
        return None


class InProcessPipeline:
    """The channel actors on a stub broker with a running worker; sms and email unthrottled,
    retries fast. ``env`` adds or overrides settings."""

    def __init__(self, providers: dict[str, Provider], **env: str) -> None:
        env = {"RATE_SMS": "unlimited", "RATE_EMAIL": "unlimited", "RETRY_MIN_BACKOFF_MS": "10",
               "RETRY_MAX_BACKOFF_MS": "50", "MAX_RETRIES": "3", **env}
        self.settings = make_settings(**env)
        self.broker = build_broker(self.settings, providers=providers)
        self.actors = {name: self.broker.get_actor(f"send_{name}") for name in self.settings.rates}
        self.worker = dramatiq.Worker(self.broker, worker_threads=2, worker_timeout=50)
        self.worker.start()

    def relay_and_wait(self) -> int:
        """Enqueue the due planned sends and wait until every queue (retries included) is drained."""
        relayed = relay_planned_sends(self.settings, self.actors)
        for name in self.actors:
            self.broker.join(f"retentiond.{name}", fail_fast=False)
        self.worker.join()
        return relayed

    def close(self) -> None:
        self.worker.stop()
        self.broker.close()
