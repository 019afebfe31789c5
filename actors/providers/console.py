"""The embedded default: print each message on the daemon's output, like a dev mail backend."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Mapping
from typing import TextIO

from actors.providers.base import OutboundMessage, ProviderResult
from ground.errors import ConfigError
from ground.settings import Secret
from ground.vocabulary import ProviderName


class ConsoleProvider:
    """Prints ``--- console <channel> send=<id> key=<key> to=<recipient>`` and the message.

    ``RETENTIOND_PROVIDER_CONSOLE_DELAY_MS`` makes every call take that long, to try the daemon
    (and test it) with a provider that is slow like a real one.
    """

    name: str = ProviderName.CONSOLE

    def __init__(self, delay_ms: float = 0.0, stream: TextIO | None = None) -> None:
        self.delay_s = delay_ms / 1000
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str = "") -> ConsoleProvider:
        # every channel prints the same way: ``channel`` is taken for build_provider's sake
        try:
            delay_ms = float(options.get("delay_ms", "0"))
        except ValueError:
            raise ConfigError("RETENTIOND_PROVIDER_CONSOLE_DELAY_MS", "expected a number of milliseconds") from None
        return cls(delay_ms=delay_ms)

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        lines = [f"--- console {message.channel} send={message.send_id} key={message.idempotency_key}"
                 f" to={message.recipient or '-'}"]
        if message.subject:
            lines.append(f"Subject: {message.subject}")
        lines.append(message.body or "")
        with self._lock:  # one whole message at a time, even across processes' line buffering
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        return ProviderResult(provider_message_id=f"console-{message.idempotency_key}")

    async def close(self) -> None:
        return None
