"""What every HTTP provider shares: one pooled client session per event loop, and one mapping
from HTTP outcomes to our errors.

* timeouts, connection errors, 5xx -> TransientChannelError (retried with backoff)
* 429 -> ProviderRateLimited with the provider's Retry-After (seconds or an HTTP date; 1 s if absent)
* any other 4xx -> PermanentChannelError (never retried)
* a request that cannot be built (aiohttp refuses a header value with a line break, a JSON body
  that cannot be encoded) -> UnbuildableMessage, permanent: nothing went out, and the same
  message would fail the same way on every retry

Error messages carry the status and the provider's own error code/message, never the recipient
or the body. A provider that reads some answers itself (FCM's gone tokens) uses ``call`` and maps
the rest with ``failure``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from ground.errors import (
    ChannelError,
    ConfigError,
    PermanentChannelError,
    ProviderRateLimited,
    TransientChannelError,
    UnbuildableMessage,
)
from ground.settings import Secret

CONNECTION_LIMIT = 512  # per process: many provider calls in flight at once
TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5)
_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def session() -> aiohttp.ClientSession:
    """The running loop's shared session, created on first use inside that loop."""
    loop = asyncio.get_running_loop()
    current = _sessions.get(loop)
    if current is None or current.closed:
        current = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTION_LIMIT, limit_per_host=CONNECTION_LIMIT,
                                           keepalive_timeout=30),
            timeout=TIMEOUT, raise_for_status=False)
        _sessions[loop] = current
    return current


async def close_session() -> None:
    current = _sessions.pop(asyncio.get_running_loop(), None)
    if current is not None and not current.closed:
        await current.close()


def retry_after_s(value: str | None, default: float = 1.0) -> float:
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def _detail(body: str) -> str:
    """The provider's error code and message, if the body is JSON that has them."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    code = data.get("code", data.get("ErrorCode"))
    message = data.get("message", data.get("Message"))
    return " ".join(str(p) for p in (code, message) if p is not None)[:200]


@dataclass(frozen=True)
class Answer:
    """A provider's answer, whatever its status, for a provider that reads some failures itself."""

    status: int
    text: str
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def call(provider: str, method: str, url: str, **kwargs: Any) -> Answer:
    """One call through the shared session; its answer, or the channel error for a call that
    could not be made or read."""
    try:
        async with session().request(method, url, **kwargs) as response:
            try:
                text = await response.text()
            except ValueError as exc:  # an undecodable body
                raise TransientChannelError(f"{provider}: unreadable answer") from exc
            return Answer(response.status, text, response.headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransientChannelError(f"{provider}: {type(exc).__name__}") from exc
    except (ValueError, TypeError) as exc:
        # Raised while aiohttp builds the request (the answer's own errors are wrapped above).
        # The message may quote the value: the type only.
        raise UnbuildableMessage(f"{provider}: cannot build the request ({type(exc).__name__})") from exc


async def request(provider: str, method: str, url: str, **kwargs: Any) -> Any:
    """One call; the decoded JSON body on 2xx, else the matching channel error."""
    answer = await call(provider, method, url, **kwargs)
    if not answer.ok:
        raise failure(provider, answer.status, _detail(answer.text), answer.headers.get("Retry-After"))
    try:
        return json.loads(answer.text) if answer.text.strip() else {}
    except ValueError as exc:  # a 2xx whose body is not JSON
        raise TransientChannelError(f"{provider}: unreadable answer") from exc


def failure(provider: str, status: int, detail: str = "", retry_after: str | None = None) -> ChannelError:
    """The channel error for a non-2xx answer; ``detail`` is the provider's own code/message, never
    the recipient or the text."""
    message = f"{provider} answered {status}" + (f": {detail}" if detail else "")
    if status == 429:
        return ProviderRateLimited(message, retry_after_s(retry_after))
    if status >= 500 or status in (408, 409, 425):
        return TransientChannelError(message)
    return PermanentChannelError(message)


def required(options: Mapping[str, Secret], provider: str, field: str) -> str:
    value = options.get(field)
    if not value:
        raise ConfigError(f"RETENTIOND_PROVIDER_{provider.upper()}_{field.upper()}", "required for this provider")
    return str(value)


def base_url(options: Mapping[str, Secret], provider: str, default: str) -> str:
    url = str(options.get("url") or default).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"RETENTIOND_PROVIDER_{provider.upper()}_URL", "expected an http(s) URL")
    return url
