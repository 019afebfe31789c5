"""Calls: TwiML from the step (say, play, a one-key opt-out), what Twilio's callbacks about a call
mean, and the opt-out key pressed unsubscribing the callee from calls."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

import pytest
from multidict import CIMultiDict

from engine.events import WebhookRequest, interpret
from engine.templates import TemplateError
from engine.voice import twiml
from ground.errors import ConfigError
from ground.settings import Secret
from tests.support.settings import make_settings

TWILIO_SOURCE = {"SOURCE_TWILIO_SCHEME": "twilio", "SOURCE_TWILIO_SECRET": "test-auth-token-0123456789",
                 "PUBLIC_URL": "https://go.example.com"}


def test_a_call_says_its_text_after_playing_the_audio_and_offers_the_optout_key() -> None:
    settings = make_settings(**TWILIO_SOURCE)
    document = ET.fromstring(twiml("Hi <Ada> & co, your order shipped.",
                                   {"play": "https://cdn.example/jingle.mp3", "optout_digit": "9"}, settings))
    assert [child.tag for child in document] == ["Play", "Say", "Gather"]
    assert document[0].text == "https://cdn.example/jingle.mp3"
    assert document[1].text == "Hi <Ada> & co, your order shipped."  # escaped in the XML, intact when read
    gather = document[2]
    assert gather.get("numDigits") == "1" and gather.get("method") == "POST"
    action = urlsplit(gather.get("action") or "")
    assert (action.scheme, action.netloc, action.path) == ("https", "go.example.com", "/webhooks/twilio")
    assert parse_qs(action.query) == {"optout": ["9"]}
    assert "press 9" in (gather[0].text or "")


def test_an_optout_key_without_a_twilio_source_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="twilio scheme"):
        twiml("hi", {"optout_digit": "9"}, make_settings())


def _call_callback(form: dict[str, str], query: str = "") -> WebhookRequest:
    return WebhookRequest(method="POST", path_qs=f"/webhooks/twilio{query}", headers=CIMultiDict(),
                          query=parse_qs(query.lstrip("?")) and {k: v[0] for k, v in parse_qs(query.lstrip("?")).items()},
                          body=b"", form=form)


@pytest.mark.parametrize(("status", "meaning"), [("completed", "delivered"), ("busy", "failed"),
                                                 ("no-answer", "failed"), ("failed", "failed"), ("canceled", "failed")])
def test_a_calls_final_status_is_its_delivery(status: str, meaning: str) -> None:
    found = interpret("twilio", _call_callback({"CallSid": "CA1", "CallStatus": status, "To": "+15005550006"}), "US")
    assert found.events == [{"type": "delivery", "data": {"provider_message_id": "CA1", "status": meaning}}]
    assert found.event_id == f"CA1:{status}"


@pytest.mark.parametrize("status", ["queued", "initiated", "ringing", "in-progress"])
def test_a_calls_intermediate_status_is_kept_unmapped(status: str) -> None:
    found = interpret("twilio", _call_callback({"CallSid": "CA1", "CallStatus": status}), "US")
    assert found.events == [] and found.unmappable


def test_the_optout_key_unsubscribes_the_callee_from_calls_and_another_key_does_nothing() -> None:
    pressed = interpret("twilio", _call_callback({"CallSid": "CA1", "Digits": "9", "To": "+1 500-555-0006",
                                                  "From": "+15005550001"}, "?optout=9"), "US")
    assert pressed.events == [{"type": "contact.unsubscribe",
                               "data": {"phone": "+15005550006", "channel": "call", "reason": "opt-out key"}}]
    other = interpret("twilio", _call_callback({"CallSid": "CA1", "Digits": "1", "To": "+15005550006"},
                                               "?optout=9"), "US")
    assert other.events == [] and other.unmappable


def test_twilio_settings_for_callbacks_and_machine_detection_are_checked() -> None:
    from actors.providers.twilio import TwilioProvider

    base = {"account_sid": Secret("AC1"), "auth_token": Secret("t"), "from": Secret("+15005550006")}
    with pytest.raises(ConfigError, match="STATUS_CALLBACK"):
        TwilioProvider.from_options({**base, "status_callback": Secret("ftp://x")}, "sms")
    with pytest.raises(ConfigError, match="MACHINE_DETECTION"):
        TwilioProvider.from_options({**base, "machine_detection": Secret("Maybe")}, "call")
    provider = TwilioProvider.from_options({**base, "status_callback": Secret("https://go.example.com/webhooks/twilio"),
                                            "machine_detection": Secret("DetectMessageEnd")}, "call")
    assert provider.status_callback == "https://go.example.com/webhooks/twilio"


def test_a_call_whose_twiml_twilio_would_refuse_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="longer than Twilio takes"):
        twiml("word " * 900, {}, make_settings())


def test_the_optout_key_press_is_answered_in_twiml_the_callee_hears() -> None:
    from daemon.web.webhooks import twilio_answer

    answer = ET.fromstring(twilio_answer("call.optout"))
    assert [child.tag for child in answer] == ["Say", "Hangup"]
    assert ET.fromstring(twilio_answer("delivery")).tag == "Response" and not list(ET.fromstring(twilio_answer(None)))


def test_a_call_asks_twilio_for_every_progress_event_and_gets_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from actors.providers.base import OutboundMessage
    from actors.providers.http import close_session
    from actors.providers.twilio import TwilioProvider
    from ops.harness.daemon import free_port
    from ops.harness.simulator_process import SimulatorProcess
    from tests.support.waiting import wait_until

    simulator = SimulatorProcess(tmp_path).start()
    try:
        # Given a call through Twilio (the simulator) whose progress goes to our status callback
        callback = f"http://127.0.0.1:{free_port()}/webhooks/twilio"
        provider = TwilioProvider.from_options({
            "url": Secret(simulator.url), "account_sid": Secret("AC" + "0" * 32), "auth_token": Secret("t" * 20),
            "from": Secret("+15005550006"), "status_callback": Secret(callback),
            "machine_detection": Secret("DetectMessageEnd")}, "call")
        document = twiml("Your order shipped.", {}, make_settings())

        async def call() -> None:
            try:
                await provider.send(OutboundMessage(send_id=1, channel="call", idempotency_key="k-call",
                                                    recipient="+15005550100", subject=None, body="x",
                                                    markup=document))
            finally:
                await close_session()

        asyncio.run(call())
        # Then Twilio got the step's TwiML, and reports each progress event, not only the end
        (sent,) = simulator.messages(channel="call")
        assert sent["twiml"] == document and sent["machine_detection"] == "DetectMessageEnd"
        # the events asked for as Twilio's list encoding: one parameter per event
        assert sent["status_callback_events"] == ["initiated", "ringing", "answered", "completed"]
        wait_until(lambda: len(simulator.callbacks()) >= 4, 10, "the call's status callbacks")
        statuses = [c["fields"]["CallStatus"] for c in simulator.callbacks() if c["kind"] == "twilio.call_status"]
        assert statuses == ["initiated", "ringing", "in-progress", "completed"]
        assert all(c["url"] == callback for c in simulator.callbacks())
    finally:
        simulator.stop()
