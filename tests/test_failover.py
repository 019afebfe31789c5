"""The backup provider takes over while the primary keeps failing, and hands back after the cool-off."""

from __future__ import annotations

import pytest

from actors.providers import OutboundMessage, ProviderResult
from actors.providers.failover import FailoverProvider
from ground.errors import PermanentChannelError, ProviderRateLimited, TransientChannelError


class Scripted:
    def __init__(self, name: str, failing: bool = False) -> None:
        self.name, self.failing, self.calls = name, failing, 0
        self.error: Exception = TransientChannelError(f"{name} is down")

    async def send(self, message: OutboundMessage) -> ProviderResult:
        self.calls += 1
        if self.failing:
            raise self.error
        return ProviderResult(provider_message_id=f"{self.name}-{self.calls}")

    async def close(self) -> None:
        return None


def message(i: int = 0) -> OutboundMessage:
    return OutboundMessage(send_id=i, channel="sms", idempotency_key=f"k{i}", recipient="+1", subject=None, body="x")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_after_three_failures_in_a_row_the_backup_sends_until_the_cool_off_ends() -> None:
    primary, backup, clock = Scripted("primary", failing=True), Scripted("backup"), Clock()
    provider = FailoverProvider("sms", primary, backup, threshold=3, cooloff_s=30, clock=clock)
    for i in range(2):
        with pytest.raises(TransientChannelError):
            await provider.send(message(i))
    # the third failure trips the circuit: that very message goes through the backup
    result = await provider.send(message(2))
    assert result.provider == "backup" and provider.is_open
    assert (await provider.send(message(3))).provider == "backup"
    assert primary.calls == 3  # not called while the circuit is open
    # after the cool-off the primary is tried again; it has recovered
    primary.failing = False
    clock.now = 31
    recovered = await provider.send(message(4))
    assert recovered.provider is None and recovered.provider_message_id == "primary-4"
    assert not provider.is_open


async def test_429s_and_permanent_refusals_do_not_trip_the_circuit() -> None:
    primary, backup = Scripted("primary", failing=True), Scripted("backup")
    provider = FailoverProvider("sms", primary, backup, threshold=2, cooloff_s=30, clock=Clock())
    primary.error = ProviderRateLimited("busy", 1)
    for i in range(3):
        with pytest.raises(ProviderRateLimited):
            await provider.send(message(i))
    primary.error = PermanentChannelError("bad number")
    for i in range(3):
        with pytest.raises(PermanentChannelError):
            await provider.send(message(i))
    assert backup.calls == 0 and not provider.is_open


def test_a_backup_provider_is_configured_per_channel() -> None:
    from actors.registry import declare_channel_actors  # noqa: F401 (wiring exists)
    from tests.support.settings import make_settings

    settings = make_settings(CHANNEL_SMS_BACKUP_PROVIDER="console")
    assert settings.backup_providers == {"sms": "console"}
