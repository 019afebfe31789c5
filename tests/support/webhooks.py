"""Signed webhooks posted to a running daemon, many at a time, as a sender would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from ops.harness.signing import standard


def upsert(i: int) -> dict:
    """A contact.upsert event for contact ``w<i>``."""
    return {"type": "contact.upsert", "data": {"external_id": f"w{i}", "email": f"w{i}@example.com"}}


async def fire(port: int, count: int, concurrency: int, prefix: str,
               event: Callable[[int], dict] = upsert) -> dict[str, int]:
    """Post ``count`` signed webhooks (``event(i)``, an upsert by default), ``concurrency`` at a
    time; return status -> event id."""
    answered: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> None:
            body, headers = standard(event(i), f"{prefix}-{i}")
            async with gate, session.post(f"http://127.0.0.1:{port}/webhooks/app", data=body,
                                          headers=headers) as response:
                answered[f"{prefix}-{i}"] = response.status
        await asyncio.gather(*[one(i) for i in range(count)])
    return answered
