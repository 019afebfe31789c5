"""A backup provider that takes over while a channel's primary keeps failing (a circuit breaker).

Closed: every call goes to the primary. After ``threshold`` transient failures in a row (timeouts,
5xx, connection errors — not 429s, not permanent refusals of one message) the circuit opens: calls
go to the backup, starting with the call that tripped it, for ``cooloff_s``. Then the next call
tries the primary again: success closes the circuit, failure opens it for another cool-off.
State is per worker process: each process finds out for itself, within ``threshold`` calls.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from actors.providers.base import OutboundMessage, Provider, ProviderResult
from ground.errors import ProviderRateLimited, TransientChannelError
from ground.metrics import PROVIDER_FAILOVERS

logger = logging.getLogger(__name__)


class FailoverProvider:
    def __init__(self, channel: str, primary: Provider, backup: Provider, threshold: int, cooloff_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.channel = channel
        self.primary = primary
        self.backup = backup
        self.threshold = threshold
        self.cooloff_s = cooloff_s
        self.name = primary.name
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None

    @property
    def is_open(self) -> bool:
        return self._open_until is not None and self._clock() < self._open_until

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if self.is_open:
            return await self._via_backup(message)
        try:
            result = await self.primary.send(message)
        except ProviderRateLimited:
            raise  # the primary is up, just busy: the channel waits instead
        except TransientChannelError:
            self._failures += 1
            if self._failures < self.threshold:
                raise
            self._open_until = self._clock() + self.cooloff_s
            self._failures = 0
            PROVIDER_FAILOVERS.labels(self.channel).inc()
            logger.warning("%s: primary provider %s failed %d times in a row; backup %s takes over for %.0fs",
                           self.channel, self.primary.name, self.threshold, self.backup.name, self.cooloff_s)
            return await self._via_backup(message)
        self._failures = 0
        self._open_until = None
        return result

    async def _via_backup(self, message: OutboundMessage) -> ProviderResult:
        result = await self.backup.send(message)
        return dataclasses.replace(result, provider=self.backup.name)

    async def close(self) -> None:
        await self.primary.close()
        await self.backup.close()
