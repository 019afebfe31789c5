"""SMTP through aiosmtplib: one connection per message (simple, and safe under concurrency).

Settings: RETENTIOND_PROVIDER_SMTP_HOST, _PORT (587), _USERNAME, _PASSWORD, _FROM, _STARTTLS
(true when a username is set), _TIMEOUT_S (30). SMTP 4xx replies and connection problems are
transient, 5xx permanent. The idempotency key becomes the Message-ID and an X-Idempotency-Key header.
A message with an HTML part goes as multipart/alternative (text, then HTML).
A message that cannot be built (a line break in a header, an address the email package refuses)
is a permanent failure: nothing was sent, and building it again gives the same result.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.errors import MessageError
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from actors.providers.base import OutboundMessage, ProviderResult, refuse_header_line_breaks
from actors.providers.http import required
from ground.errors import ConfigError, PermanentChannelError, TransientChannelError, UnbuildableMessage
from ground.settings import Secret
from ground.vocabulary import ProviderName


class SmtpProvider:
    name: str = ProviderName.SMTP

    def __init__(self, host: str, port: int, sender: str, username: str | None = None, password: str | None = None,
                 starttls: bool = False, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password = username, password
        self.starttls, self.timeout_s = starttls, timeout_s
        self.domain = sender.rpartition("@")[2] or "retentiond.local"

    @classmethod
    def from_options(cls, options: Mapping[str, Secret], channel: str) -> SmtpProvider:
        try:
            port = int(options.get("port", "587"))
            timeout_s = float(options.get("timeout_s", "30"))
        except ValueError:
            raise ConfigError("RETENTIOND_PROVIDER_SMTP_PORT", "expected a number") from None
        username = options.get("username")
        starttls = str(options.get("starttls", "true" if username else "false")).lower() in ("1", "true", "yes")
        return cls(required(options, cls.name, "host"), port, required(options, cls.name, "from"),
                   str(username) if username else None, str(options["password"]) if options.get("password") else None,
                   starttls, timeout_s)

    def build(self, message: OutboundMessage) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = message.recipient or ""
        email["Subject"] = message.subject or ""
        email["Date"] = formatdate(localtime=False)
        email["Message-ID"] = f"<{message.idempotency_key}@{self.domain}>"
        email["X-Idempotency-Key"] = message.idempotency_key
        for name, value in message.headers.items():
            email[name] = value
        email.set_content(message.body or "")
        if message.markup:  # multipart/alternative: the text part first, the HTML part preferred
            email.add_alternative(message.markup, subtype="html")
        return email

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if not message.recipient:
            raise PermanentChannelError("smtp: no recipient address")
        refuse_header_line_breaks(message, self.name)
        try:
            email = self.build(message)
        except (ValueError, TypeError, MessageError) as exc:
            # The email package's messages may quote the value (an address, a header): the type only.
            raise UnbuildableMessage(f"smtp: cannot build the message ({type(exc).__name__})") from exc
        try:
            await aiosmtplib.send(email, hostname=self.host, port=self.port, username=self.username,
                                  password=self.password, start_tls=self.starttls, timeout=self.timeout_s)
        except aiosmtplib.SMTPResponseException as exc:
            text = f"smtp answered {exc.code}"
            if 400 <= exc.code < 500:
                raise TransientChannelError(text) from exc
            raise PermanentChannelError(text) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TransientChannelError(f"smtp: {type(exc).__name__}") from exc
        return ProviderResult(provider_message_id=f"<{message.idempotency_key}@{self.domain}>")

    async def close(self) -> None:
        return None
