"""Provider doubles for tests that follow a send to the provider: one answers from a script, one
records what it was handed."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from actors.providers import OutboundMessage, ProviderResult


@dataclass
class ScriptedProvider:
    """Answers each call from a script per recipient (an exception to raise, or None to succeed)."""

    name: str = "scripted"
    script: dict[str, list[Exception | None]] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    headers: dict = field(default_factory=dict)

    async def send(self, message: OutboundMessage) -> ProviderResult:
        self.calls[message.idempotency_key] += 1
        self.headers[message.idempotency_key] = dict(message.headers)
        await asyncio.sleep(0)
        steps = self.script.get(message.recipient or "", [])
        outcome = steps.pop(0) if steps else None
        if outcome is not None:
            raise outcome
        return ProviderResult(provider_message_id=f"pm-{message.send_id}")

    async def close(self) -> None:
        return None


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
