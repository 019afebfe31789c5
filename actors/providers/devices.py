"""One push send to each of the contact's devices on a platform, and the send's outcome from theirs.

A push provider (FCM, APNs) sends one call per device address, concurrently, and the send's
outcome is read from all of them:

* a device accepted -> a ProviderResult with the first accepted id, and the addresses the push
  service said are gone in ``invalid_devices`` (the engine removes them from the contact)
* none accepted, every address gone -> DevicesGone (permanent; the engine removes them all)
* none accepted, a call worth retrying -> ProviderRateLimited if a 429 was among them (the longest
  wait), else TransientChannelError
* none accepted, a permanent failure -> that failure
* no address at all -> PermanentChannelError

Once a device accepted, the send is not retried for the others: a retry would reach the accepted
ones again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from actors.providers.base import OutboundMessage, ProviderResult
from ground.errors import DevicesGone, PermanentChannelError, ProviderRateLimited, TransientChannelError


class DeviceGone(Exception):
    """Raised by a provider's one-device call: the push service says this address no longer exists
    (unregistered, not a token of this app). ``reason`` is the service's code, never the address."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


SendOne = Callable[[str], Awaitable[str]]  # a device address -> the provider's id for that notification


async def send_to_devices(provider: str, platform: str, message: OutboundMessage, send_one: SendOne) -> ProviderResult:
    """Call ``send_one`` for each of ``message``'s ``platform`` devices at once; the send's outcome."""
    devices = tuple(dict.fromkeys(message.devices.get(platform, ())))  # once each, in order
    if not devices:
        raise PermanentChannelError(f"{provider}: the contact has no {platform} device token")
    outcomes = await asyncio.gather(*(send_one(device) for device in devices), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # a cancellation, an exit: not an outcome of the send
    accepted = [outcome for outcome in outcomes if isinstance(outcome, str)]
    gone = tuple(device for device, outcome in zip(devices, outcomes, strict=True) if isinstance(outcome, DeviceGone))
    if accepted:
        return ProviderResult(provider_message_id=accepted[0], invalid_devices=gone)
    failures = [outcome for outcome in outcomes if isinstance(outcome, Exception) and not isinstance(outcome, DeviceGone)]
    if not failures:
        reasons = ", ".join(sorted({outcome.reason for outcome in outcomes if isinstance(outcome, DeviceGone)}))
        raise DevicesGone(f"{provider}: every {platform} device is gone ({len(gone)}: {reasons})", gone)
    limited = [failure for failure in failures if isinstance(failure, ProviderRateLimited)]
    if limited:
        raise max(limited, key=lambda failure: failure.retry_after_s)
    transient = [failure for failure in failures if isinstance(failure, TransientChannelError)]
    raise transient[0] if transient else failures[0]
