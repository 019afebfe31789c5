"""Logging, configured once per process: JSON lines in production, plain text for a terminal.

Personal data never reaches a log line or Sentry: email addresses and phone numbers in messages
are masked (``a***@example.com``, ``+1201******00``) by a filter on the handler.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"(\+\d{3})\d{4,11}(\d{2})\b")


def mask(text: str) -> str:
    """The text with email addresses and E.164 phone numbers masked."""
    return _PHONE.sub(lambda m: m.group(1) + "*" * (len(m.group(0)) - 6) + m.group(2),
                      _EMAIL.sub(r"\1***@\2", text))


class MaskPersonalData(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        return True


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        ))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(MaskPersonalData())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pika is chatty about every reconnect attempt; its errors still come through.
    logging.getLogger("pika").setLevel(logging.WARNING)
    # Peewee logs every statement with its parameters at DEBUG: names, addresses, message bodies
    # and attributes that no mask can recognise. LOG_LEVEL=DEBUG must not turn them into logs.
    logging.getLogger("peewee").setLevel(logging.INFO)


def setup_sentry(dsn: str | None, transport: Any = None) -> bool:
    """Errors to Sentry, with its Dramatiq and aiohttp integrations, when a DSN is configured."""
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration
    from sentry_sdk.integrations.dramatiq import DramatiqIntegration

    def scrub(event: Any, hint: dict[str, Any]) -> Any:
        for entry in event.get("exception", {}).get("values", []):
            if isinstance(entry.get("value"), str):
                entry["value"] = mask(entry["value"])
        if isinstance(event.get("logentry", {}).get("message"), str):
            event["logentry"]["message"] = mask(event["logentry"]["message"])
        return event

    sentry_sdk.init(dsn=str(dsn), integrations=[DramatiqIntegration(), AioHttpIntegration()],
                    before_send=scrub, transport=transport)  # personal data stays off by default
    return True
