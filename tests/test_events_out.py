"""Events out: what happened reaches a destination as a Standard Webhook that its own library
verifies, through the outbox and the webhook channel: retried after a 500, delivered once, the
failed ones listed as dead letters. On both engines."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from db.models import Contact, Send
from engine import contacts, events_out
from ground.errors import ConfigError
from tests.support.providers import ScriptedProvider
from tests.support.sends import enrolled_send
from tests.support.settings import make_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """A team's endpoint: answers each POST with the next scripted status (then 200), keeps them."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verified(self) -> list[dict[str, Any]]:
        """Every request as the receiver's library reads it (raises if one does not verify)."""
        return [Webhook(SECRET).verify(body, headers) for headers, body in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([500])
    yield r
    r.server.shutdown()
    r.server.server_close()


def _destination_env(url: str, events: str) -> dict[str, str]:
    return {"DESTINATION_CRM_URL": url, "DESTINATION_CRM_SECRET": SECRET, "DESTINATION_CRM_EVENTS": events}


@pytest.fixture
def configured() -> Iterator[Any]:
    def configure(**env: str) -> Any:
        settings = make_settings(**env)
        events_out.configure(settings.destinations)
        return settings
    yield configure
    events_out.configure({})


def test_a_sent_message_reaches_the_crm_once_after_a_500(stub_pipeline, receiver: Receiver, configured) -> None:  # type: ignore[no-untyped-def]
    # Given a CRM wanting send.sent and contact.unsubscribed, whose endpoint first answers 500
    env = _destination_env(receiver.url, "send.sent,contact.unsubscribed")
    configured(**env)
    p = stub_pipeline({"sms": ScriptedProvider()}, DAILY_CAP="0", QUIET_HOURS="off", **env)
    send, _ = enrolled_send("sms", external_id="crm-42")
    # When the message goes out, and then its event
    p.relay_and_wait()
    assert Send.get_by_id(send.id).status == "sent"
    p.relay_and_wait()
    # Then the CRM got it twice (the 500, then the retry), both verifying with its own library,
    # with one webhook-id: one event, delivered once
    events = receiver.verified()
    assert len(events) == 2 and events[0] == events[1]
    assert len({headers["webhook-id"] for headers, _ in receiver.requests}) == 1
    event = events[0]
    assert event["type"] == "send.sent"
    assert event["timestamp"].endswith("Z")
    data = event["data"]
    assert (data["send_id"], data["channel"], data["campaign"]) == (send.id, "sms", "c-sms-None")
    assert data["contact"]["external_id"] == "crm-42" and data["contact"]["phone"] == "+12015550100"
    # and what the outbox keeps of it holds no personal data
    stored = Send.get(Send.recipient == "destination:crm")
    assert stored.status == "sent" and stored.contact_id is None
    assert "crm-42" not in (stored.body or "") and "+1201" not in (stored.body or "")
    # When nothing more happens, nothing more goes
    p.relay_and_wait()
    assert len(receiver.requests) == 2
    # When the contact unsubscribes (the link, the API, a STOP: one path), the CRM hears it once
    contacts.unsubscribe([send.contact_id], "sms")
    contacts.unsubscribe([send.contact_id], "sms")  # already: not news
    p.relay_and_wait()
    unsubscribed = [e for e in receiver.verified() if e["type"] == "contact.unsubscribed"]
    assert len(unsubscribed) == 1
    assert unsubscribed[0]["data"]["channel"] == "sms" and unsubscribed[0]["data"]["contact"]["id"] == send.contact_id


def test_an_event_nobody_wants_is_not_written(stub_pipeline, receiver: Receiver, configured) -> None:  # type: ignore[no-untyped-def]
    env = _destination_env(receiver.url, "conversion")
    configured(**env)
    p = stub_pipeline({"sms": ScriptedProvider()}, DAILY_CAP="0", QUIET_HOURS="off", **env)
    enrolled_send("sms")
    p.relay_and_wait()
    assert not Send.select().where(Send.recipient == "destination:crm").exists()
    assert receiver.requests == []


def test_an_erased_contacts_pending_event_carries_nothing_of_them(stub_pipeline, receiver: Receiver,  # type: ignore[no-untyped-def]
                                                                  configured) -> None:
    from engine.erasure import erase_contact

    env = _destination_env(receiver.url, "send.sent")
    configured(**env)
    p = stub_pipeline({"sms": ScriptedProvider()}, DAILY_CAP="0", QUIET_HOURS="off", **env)
    send, _ = enrolled_send("sms", external_id="crm-7")
    p.relay_and_wait()
    erase_contact(Contact.get_by_id(send.contact_id))
    receiver.statuses.clear()
    p.relay_and_wait()
    (event,) = receiver.verified()
    assert event["data"]["contact"] == {"id": send.contact_id, "external_id": None, "email": None, "phone": None}


def test_a_destination_that_keeps_failing_is_a_dead_letter_an_operator_sees(stub_pipeline, configured) -> None:  # type: ignore[no-untyped-def]
    from daemon.web.api.destinations import list_destinations

    failing = Receiver([500] * 100)
    try:
        env = _destination_env(failing.url, "*")
        settings = configured(**env)
        p = stub_pipeline({"sms": ScriptedProvider()}, DAILY_CAP="0", QUIET_HOURS="off", MAX_RETRIES="1", **env)
        enrolled_send("sms")
        p.relay_and_wait()
        p.relay_and_wait()
        view = list_destinations(settings).destinations
    finally:
        failing.server.shutdown()
        failing.server.server_close()
    assert len(failing.requests) == 2  # the first try and its one retry
    (crm,) = view
    assert crm.endpoint == failing.url.rsplit("/", 1)[0]
    assert crm.deliveries.get("failed") == 1
    (dead,) = crm.dead_letters
    assert dead.type == "send.sent" and "500" in (dead.error or "")


@pytest.mark.parametrize(("env", "problem"), [
    ({"DESTINATION_CRM_URL": "ftp://x", "DESTINATION_CRM_SECRET": SECRET}, "DESTINATION_CRM_URL"),
    ({"DESTINATION_CRM_URL": "https://crm.example:99999/", "DESTINATION_CRM_SECRET": SECRET}, "DESTINATION_CRM_URL"),
    ({"DESTINATION_CRM_URL": "https://x", "DESTINATION_CRM_SECRET": "hunter2"}, "DESTINATION_CRM_SECRET"),
    ({"DESTINATION_CRM_URL": "https://x", "DESTINATION_CRM_SECRET": SECRET, "DESTINATION_CRM_EVENTS": "send.snet"},
     "DESTINATION_CRM_EVENTS"),
])
def test_a_bad_destination_setting_names_itself(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        make_settings(**env)
    assert problem in str(refused.value) and SECRET not in str(refused.value)


def test_a_failed_send_is_told_with_its_reason_not_the_providers_text(stub_pipeline, receiver: Receiver, configured) -> None:  # type: ignore[no-untyped-def]
    env = _destination_env(receiver.url, "send.failed")
    configured(**env)
    from ground.errors import PermanentChannelError

    p = stub_pipeline({"sms": ScriptedProvider(script={"+12015550100": [PermanentChannelError("21211 invalid")]})},
                      DAILY_CAP="0", QUIET_HOURS="off", **env)
    enrolled_send("sms")
    p.relay_and_wait()
    receiver.statuses.clear()
    p.relay_and_wait()
    (event,) = receiver.verified()
    assert event["type"] == "send.failed" and event["data"]["reason"] == "provider refused"
    # the provider's own text is not stored or sent: it may quote the address
    assert "21211" not in json.dumps(event) and "21211" not in (Send.get(Send.recipient == "destination:crm").body or "")


def test_a_contact_whose_external_id_names_a_destination_gets_no_signed_event(stub_pipeline, receiver: Receiver,  # type: ignore[no-untyped-def]
                                                                              configured) -> None:
    # Given a contact whose external id reads like an event send's recipient, and a webhook step
    env = _destination_env(receiver.url, "conversion")
    configured(**env)
    team_endpoint = ScriptedProvider(name="team")
    p = stub_pipeline({"webhook": team_endpoint}, DAILY_CAP="0", QUIET_HOURS="off", **env)
    send, _ = enrolled_send("webhook", external_id="destination:crm")
    # When the step goes out
    p.relay_and_wait()
    # Then it went to the channel's own endpoint, not to the CRM signed with the CRM's secret
    assert Send.get_by_id(send.id).status == "sent"
    assert team_endpoint.calls == {send.idempotency_key: 1}
    assert receiver.requests == []


def test_a_click_tells_its_url_at_send_time_and_stores_none(stub_pipeline, receiver: Receiver, configured) -> None:  # type: ignore[no-untyped-def]
    from db.models import InboundEvent, TrackedLink
    from engine.processing import process_pending

    env = _destination_env(receiver.url, "link.clicked")
    settings = configured(**env)
    p = stub_pipeline({}, DAILY_CAP="0", QUIET_HOURS="off", **env)
    contact = Contact.create(email="ada@example.com")
    url = "https://shop.example/offer?email=ada@example.com"
    TrackedLink.create(token="tok-1", url=url, contact=contact.id)
    InboundEvent.create(source="app", event_id="c1", type="click", payload=json.dumps(
        {"events": [{"type": "click", "data": {"token": "tok-1"}}], "raw": ""}))
    process_pending(settings)
    stored = Send.get(Send.recipient == "destination:crm")
    assert "ada@example.com" not in (stored.body or "")
    receiver.statuses.clear()
    p.relay_and_wait()
    (event,) = receiver.verified()
    assert event["type"] == "link.clicked" and event["data"]["url"] == url
    assert event["data"]["contact"]["email"] == "ada@example.com"


def test_retries_exhausted_and_template_errors_are_told_as_send_failed(migrated_db: str, configured) -> None:  # type: ignore[no-untyped-def]
    from db.models import utcnow
    from engine.sends import NewSend, fail_exhausted, plan

    configured(**_destination_env("https://crm.example/hooks", "send.failed"))
    send, enrolment = enrolled_send("sms")
    Send.update(status="queued").where(Send.id == send.id).execute()
    fail_exhausted([send.id], utcnow())
    plan([NewSend("e-broken", "sms", send.contact_id, send.campaign_id, send.step_id, enrolment.id, "+12015550100",
                  failure="template error", error="body: no field 'nme'")], utcnow())
    told = [json.loads(s.body) for s in Send.select().where(Send.recipient == "destination:crm")]
    assert sorted(e["data"]["reason"] for e in told) == ["retries exhausted", "template error"]
    assert all(e["type"] == "send.failed" for e in told)
    assert "nme" not in json.dumps(told)  # the reason, not the template's error text


def test_destination_settings_as_a_user_writes_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ground.settings import load_settings

    # a TOML list of event types, and a name with '_'
    config = tmp_path / "retentiond.toml"
    config.write_text(f'[destinations.my_crm]\nurl = "https://crm.example/hooks"\nsecret = "{SECRET}"\n'
                      'events = ["send.sent", "link.clicked"]\n')
    settings = load_settings(environ={}, config_file=str(config))
    assert settings.destinations["my_crm"].events == {"send.sent", "link.clicked"}
    # a misspelt part gets the right hint; '*' with names and an undecodable secret are refused
    with pytest.raises(ConfigError, match="did you mean RETENTIOND_DESTINATION_CRM_EVENTS"):
        make_settings(DESTINATION_CRM_EVENT="send.sent")
    with pytest.raises(ConfigError, match="cannot be combined"):
        make_settings(**_destination_env("https://crm.example", "*,send.sent"))
    with pytest.raises(ConfigError, match="DESTINATION_CRM_SECRET"):
        make_settings(DESTINATION_CRM_URL="https://crm.example", DESTINATION_CRM_SECRET="whsec_" + "=" * 24)
