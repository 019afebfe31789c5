"""Logging, configured once per process: text for a person at a terminal, JSON lines otherwise.

Personal data never reaches a log line or Sentry: email addresses and phone numbers in messages
are masked (``a***@example.com``, ``+1201******00``) by a filter on the handler. A log line costs
time in proportion to its length, and its length is bounded: every record is formatted on the
thread that logs it, which for the side server is the event loop, so a hostile request must not be
able to make one line expensive (the masking is linear, long messages are cut first, and aiohttp's
parse errors are logged without the request's bytes).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from ground.outage_log import CollapseRepeats

MAX_MESSAGE_CHARS = 8192  # longer messages are cut before masking: a log line costs bounded time
MAX_TRACEBACK_CHARS = 32768
# Context a log call passes as ``extra=``: JSON fields of their own, appended to a text line.
CONTEXT_FIELDS = ("send_id", "channel", "campaign")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"

# An address starts where a run of address characters starts: the look-behind makes every other
# position fail at once, so each run is scanned once and masking is linear in the text's length.
# (Without it, each position of a long run without '@' rescanned the rest of the run: quadratic.)
_LOCAL = "A-Za-z0-9._%+-"
_EMAIL = re.compile(rf"(?<![{_LOCAL}])([{_LOCAL}])[{_LOCAL}]*@([A-Za-z0-9.-]+\.[A-Za-z]{{2,}})")
_PHONE = re.compile(r"(\+\d{3})\d{4,11}(\d{2})\b")
# An address cut in two by the limit would no longer be recognised: mask a little past the limit,
# then cut (an address is at most 254 characters).
_MASK_MARGIN = 256


def mask(text: str) -> str:
    """The text with email addresses and E.164 phone numbers masked (linear in its length)."""
    return _PHONE.sub(lambda m: m.group(1) + "*" * (len(m.group(0)) - 6) + m.group(2),
                      _EMAIL.sub(r"\1***@\2", text))


def mask_bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``mask(text)`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return mask(text)
    return f"{mask(text[:limit + _MASK_MARGIN])[:limit]}... ({len(text) - limit} more characters)"


class MaskPersonalData(logging.Filter):
    """Masks a record's message, traceback and stack for any formatter on the handler.

    Formatters do not all read the masked ``exc_text``: python-json-logger formats ``exc_info``
    again itself, so the formatters set up here mask what they format too (_MaskingFormatter).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_bounded(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = mask_bounded(logging.Formatter().formatException(record.exc_info),
                                           MAX_TRACEBACK_CHARS)
        if record.stack_info:  # its source lines may quote anything, an address literal included
            record.stack_info = mask_bounded(record.stack_info, MAX_TRACEBACK_CHARS)
        return True


class _MaskingFormatter(logging.Formatter):
    """A formatter whose tracebacks and stacks are masked and bounded, whoever calls it."""

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return mask_bounded(super().formatException(ei), MAX_TRACEBACK_CHARS)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return mask_bounded(super().formatStack(stack_info), MAX_TRACEBACK_CHARS)


class BadRequestsWithoutBytes(logging.Filter):
    """aiohttp logs a request it cannot parse as "Error handling request" with a traceback whose
    exception quotes the raw bytes (64 KiB of them, or whatever secret a client sent): one line,
    at INFO, with the exception's class and status instead. Installed on aiohttp's server logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "bad HTTP request from %s refused with %s: %s"
            record.args = (remote, exc.code, type(exc).__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            # the logger let it through as an ERROR: at INFO it must pass LOG_LEVEL again
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


class UtcJsonFormatter(_MaskingFormatter, JsonFormatter):
    """JSON lines whose time is RFC 3339 in UTC (``2026-01-31T06:13:00.123Z``)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return (dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"))


class TextFormatter(_MaskingFormatter):
    """Plain lines, with a send's context (``send_id=12 channel=sms``) after the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        line = super().formatMessage(record)
        context = " ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS
                           if getattr(record, name, None) is not None)
        return f"{line} [{context}]" if context else line


def resolve_format(fmt: str) -> str:
    """``auto``: text when stderr is a terminal (someone is reading), JSON lines otherwise."""
    if fmt != "auto":
        return fmt
    isatty = getattr(sys.stderr, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if resolve_format(fmt) == "json":
        handler.setFormatter(UtcJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        ))
    else:
        handler.setFormatter(TextFormatter())
    # Collapsing first: a suppressed repeat costs nothing further.
    handler.addFilter(CollapseRepeats())
    handler.addFilter(MaskPersonalData())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestsWithoutBytes) for f in server_logger.filters):
        server_logger.addFilter(BadRequestsWithoutBytes())
    # pika is chatty about every reconnect attempt; its errors still come through (collapsed).
    logging.getLogger("pika").setLevel(logging.WARNING)
    # Peewee logs every statement with its parameters at DEBUG: names, addresses, message bodies
    # and attributes that no mask can recognise. LOG_LEVEL=DEBUG must not turn them into logs.
    logging.getLogger("peewee").setLevel(logging.INFO)


# What Sentry may keep of a request: never headers (tokens, signatures, cookies), the body, the
# query string (the ``token`` scheme's secret can be there) or cookies.
_REQUEST_KEPT = ("method", "url")
# /u/<token> (unsubscribe) and /t/<token> (tracked link): the path segment is a capability, as
# good as a password for that contact's subscription or link: it never leaves the server.
_CAPABILITY_PATH = re.compile(r"(/[ut]/)[^/?#\s\"']+")


def scrub_paths(text: str) -> str:
    """``text`` with every ``/u/<token>`` and ``/t/<token>`` path made ``/u/[token]``."""
    return _CAPABILITY_PATH.sub(r"\1[token]", text)


def _scrub_text(text: str) -> str:
    return scrub_paths(mask_bounded(text))


def _scrub_event(event: Any, hint: dict[str, Any]) -> Any:
    for entry in event.get("exception", {}).get("values", []):
        if isinstance(entry.get("value"), str):
            entry["value"] = _scrub_text(entry["value"])
        for frame in (entry.get("stacktrace") or {}).get("frames", []):
            frame.pop("vars", None)  # also off by option; a second guard costs nothing
    for thread in event.get("threads", {}).get("values", []):
        for frame in (thread.get("stacktrace") or {}).get("frames", []):
            frame.pop("vars", None)
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        for key in ("message", "formatted"):
            if isinstance(logentry.get(key), str):
                logentry[key] = _scrub_text(logentry[key])
        logentry.pop("params", None)  # unmasked arguments; the formatted message is masked
    if isinstance(event.get("request"), dict):
        event["request"] = {k: v for k, v in event["request"].items() if k in _REQUEST_KEPT}
        if isinstance(event["request"].get("url"), str):
            event["request"]["url"] = scrub_paths(event["request"]["url"].split("?", 1)[0])
    if isinstance(event.get("transaction"), str):  # the route's name, or its path by another style
        event["transaction"] = scrub_paths(event["transaction"])
    for crumb in event.get("breadcrumbs", {}).get("values", []):
        if isinstance(crumb.get("message"), str):
            crumb["message"] = _scrub_text(crumb["message"])
        crumb.pop("data", None)
    event.pop("extra", None)  # sys.argv and logging extras: nothing an error report needs
    return event


def setup_sentry(dsn: str | None, transport: Any = None) -> bool:
    """Errors to Sentry, with its Dramatiq and aiohttp integrations, when a DSN is configured.

    Nothing secret or personal goes: no local variables of stack frames (a handler's locals hold
    the request, its headers and body, the settings), no request headers, body, query or cookies,
    and messages masked like log lines.
    """
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration
    from sentry_sdk.integrations.dramatiq import DramatiqIntegration

    sentry_sdk.init(dsn=str(dsn), integrations=[DramatiqIntegration(), AioHttpIntegration()],
                    before_send=_scrub_event, transport=transport,
                    include_local_variables=False, max_request_body_size="never")
    return True
