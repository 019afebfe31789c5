"""No personal data in logs or in Sentry; an actor's error reaches Sentry through its Dramatiq
integration (a test transport stands in for the network)."""

from __future__ import annotations

import io
import json
import logging

import dramatiq
import sentry_sdk
from dramatiq.brokers.stub import StubBroker
from sentry_sdk.transport import Transport

from daemon.logging_setup import MaskPersonalData, mask, setup_sentry


def test_emails_and_phone_numbers_are_masked() -> None:
    assert mask("to ada.lovelace@example.com") == "to a***@example.com"
    assert mask("sms +447911123456 sent") == "sms +447*******56 sent"
    assert mask("send 123456 of campaign 42") == "send 123456 of campaign 42"


def test_a_log_line_never_carries_an_address() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskPersonalData())
    logger = logging.getLogger("test.masking")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("bounce for %s (%s)", "grace@example.com", "+12015550100")
        try:
            raise ValueError("invalid recipient bob@example.com")
        except ValueError:
            logger.exception("provider refused")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "grace@example.com" not in text and "+12015550100" not in text and "bob@example.com" not in text
    assert "g***@example.com" in text and "b***@example.com" in text


def test_debug_logging_does_not_log_sql_parameters(tmp_path, capfd) -> None:  # type: ignore[no-untyped-def]
    from daemon.logging_setup import setup_logging
    from db.database import close_database, database, init_database

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("peewee").level)
    setup_logging("DEBUG", "text")
    init_database(f"sqlite:///{tmp_path / 'debug.db'}")
    try:
        database.execute_sql("SELECT ?", ("Ada Lovelace, birthday 10 Dec, body: your code is 4711",))
        logging.getLogger("daemon.test").debug("debug lines still come through")
    finally:
        close_database()
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("peewee").setLevel(saved[2])
    err = capfd.readouterr().err
    assert "debug lines still come through" in err
    assert "Ada Lovelace" not in err and "4711" not in err


class Captured(Transport):
    def __init__(self, options=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(options)
        self.events: list[dict] = []

    def capture_envelope(self, envelope) -> None:  # type: ignore[no-untyped-def]
        for item in envelope.items:
            if item.headers.get("type") == "event":
                self.events.append(json.loads(item.payload.get_bytes()))


def test_an_actor_error_reaches_sentry_without_the_address() -> None:
    transport = Captured()
    try:
        assert setup_sentry("https://public@sentry.example.com/1", transport=transport)
        broker = StubBroker()
        broker.emit_after("process_boot")

        @dramatiq.actor(broker=broker, max_retries=0)
        def explode() -> None:
            raise RuntimeError("provider refused ada@example.com")

        worker = dramatiq.Worker(broker, worker_timeout=50)
        worker.start()
        try:
            explode.send()
            broker.join(explode.queue_name, fail_fast=False)
            worker.join()
        finally:
            worker.stop()
        sentry_sdk.flush()
        errors = [e for e in transport.events if e.get("exception")]
        assert errors, "no event reached the transport"
        value = errors[0]["exception"]["values"][0]["value"]
        assert value == "provider refused a***@example.com"
    finally:
        sentry_sdk.init()  # back to no DSN: nothing else in the suite reports
