"""Postmark: single email (POST /email) or, by default, the batch API (POST /email/batch).

Batching: concurrent sends are buffered and flushed as ONE call at ``batch_size`` messages (50)
or ``batch_wait_ms`` (5 s) after the first buffered one, whichever comes first; each send awaits
its own per-message result (ErrorCode 0 -> its MessageID; otherwise the message's own error). A
batch call that fails as a whole (5xx, timeout, 429) fails each of its messages with that error.

Settings: RETENTIOND_PROVIDER_POSTMARK_SERVER_TOKEN, _FROM, _URL (default
https://api.postmarkapp.com), _MESSAGE_STREAM, _BATCH (true/false), _BATCH_SIZE, _BATCH_WAIT_MS.
A message with an HTML part carries it as ``HtmlBody`` beside ``TextBody``.
Each message carries the send's idempotency key in its Metadata (and the single call in an
``Idempotency-Key`` header).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from actors.providers.base import OutboundMessage, ProviderResult, refuse_header_line_breaks
from actors.providers.http import base_url, close_session, request, required
from ground.errors import ChannelError, ConfigError, PermanentChannelError, TransientChannelError
from ground.settings import Secret
from ground.vocabulary import ProviderName

# Postmark ErrorCodes worth another try (service maintenance, temporary account hold).
RETRYABLE_CODES = {100, 405}


def _message_error(code: int, message: str) -> ChannelError:
    text = f"postmark error {code}: {message}"[:300]
    return TransientChannelError(text) if code in RETRYABLE_CODES else PermanentChannelError(text)


class PostmarkProvider:
    name: str = ProviderName.POSTMARK

    def __init__(self, url: str, token: str, sender: str, stream: str | None = None, batch: bool = True,
                 batch_size: int = 50, batch_wait_s: float = 5.0) -> None:
        self.url = url
        self.headers = {"X-Postmark-Server-Token": token, "Accept": "application/json"}
        self.sender = sender
        self.stream = stream
        self.batch = batch
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self._pending: list[tuple[dict[str, Any], asyncio.Future[ProviderResult]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flights: set[asyncio.Task[None]] = set()
        self.batch_calls = 0  # how many batch calls went out (for tests and metrics)

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> PostmarkProvider:
        try:
            size = int(options.get("batch_size", "50"))
            wait_ms = float(options.get("batch_wait_ms", "5000"))
        except ValueError:
            raise ConfigError("RETENTIOND_PROVIDER_POSTMARK_BATCH_SIZE", "expected numbers for the batch settings") from None
        if not 1 <= size <= 500:
            raise ConfigError("RETENTIOND_PROVIDER_POSTMARK_BATCH_SIZE", "Postmark takes 1 to 500 messages per batch")
        return cls(base_url(options, cls.name, "https://api.postmarkapp.com"),
                   required(options, cls.name, "server_token"), required(options, cls.name, "from"),
                   options.get("message_stream"), str(options.get("batch", "true")).lower() in ("1", "true", "yes"),
                   size, wait_ms / 1000)

    def _payload(self, message: OutboundMessage) -> dict[str, Any]:
        payload: dict[str, Any] = {"From": self.sender, "To": message.recipient, "Subject": message.subject or "",
                                   "TextBody": message.body or "", **({"HtmlBody": message.markup} if message.markup else {}),
                                   "Metadata": {"idempotency_key": message.idempotency_key},
                                   "Headers": [{"Name": k, "Value": v} for k, v in message.headers.items()]}
        if self.stream:
            payload["MessageStream"] = self.stream
        return payload

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if not message.recipient:
            raise PermanentChannelError("postmark: no recipient address")
        refuse_header_line_breaks(message, self.name)  # Postmark puts To, Subject, Headers in MIME headers
        payload = self._payload(message)
        if not self.batch:
            answer = await request(self.name, "POST", f"{self.url}/email", json=payload,
                                   headers={**self.headers, "Idempotency-Key": message.idempotency_key})
            return self._result(answer)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ProviderResult] = loop.create_future()
        self._pending.append((payload, future))
        if len(self._pending) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.batch_wait_s, self._flush)
        return await future

    def _result(self, answer: Mapping[str, Any]) -> ProviderResult:
        code = int(answer.get("ErrorCode", 0) or 0)
        if code:
            raise _message_error(code, str(answer.get("Message", "")))
        return ProviderResult(provider_message_id=answer.get("MessageID"))

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
            task = asyncio.get_running_loop().create_task(self._send_batch(batch))
            self._flights.add(task)
            task.add_done_callback(self._flights.discard)

    async def _send_batch(self, batch: list[tuple[dict[str, Any], asyncio.Future[ProviderResult]]]) -> None:
        self.batch_calls += 1
        try:
            answers = await request(self.name, "POST", f"{self.url}/email/batch", json=[p for p, _ in batch],
                                    headers=self.headers)
            if not isinstance(answers, list) or len(answers) != len(batch):
                raise TransientChannelError("postmark: the batch answer does not match the batch")
        except ChannelError as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():
                continue
            try:
                future.set_result(self._result(answer))
            except ChannelError as exc:
                future.set_exception(exc)

    async def close(self) -> None:
        if self._pending:
            self._flush()
        if self._flights:
            await asyncio.gather(*self._flights, return_exceptions=True)
        await close_session()
