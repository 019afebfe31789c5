"""Receipts end to end, as in production: the daemon sends a campaign through Twilio and Postmark
(the simulator standing in), the simulator answers as they do — Twilio status callbacks to the
StatusCallback URL signed with the account's auth token, Postmark Delivery and Bounce webhooks
with the custom header configured for them, an inbound STOP — and the daemon takes each through
its public webhook endpoint like any sender's. No test-only path in the daemon: what changes is
what a user would see in the database."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.models import Campaign, Contact, Send, Suppression
from ops.harness.daemon import DaemonProcess, base_env, cli
from ops.harness.signing import TOKEN, TWILIO_TOKEN
from ops.harness.simulator_process import SimulatorProcess
from tests.support.waiting import wait_until

CAMPAIGN = """\
slug: receipts
name: Receipts
trigger: manual
steps:
  - channel: sms
    delay: 0s
    body: "Hi {{ contact.name }}"
  - channel: email
    delay: 0s
    subject: "Hello {{ contact.name }}"
    html: "<p>Hello {{ contact.name }}</p>"
"""
AGAIN = CAMPAIGN.replace("slug: receipts", "slug: again").replace("name: Receipts", "name: Again")
ADA = ("ada", "ada@example.com", "+12015550101", "Ada")
BOB = ("bob", "hardbounce@bounce-testing.postmarkapp.com", "+12015550102", "Bob")
CY = ("cy", "cy@example.com", "+12015550103", "Cy")
ACCOUNT = "AC00000000000000000000000000000000"


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    # No delay before calling back: a receipt may beat the worker's write of its send's result
    # (the daemon parks such a receipt until the result is there: engine/processing.py)
    sim = SimulatorProcess(tmp_path, callback_delay_ms=0).start()
    yield sim
    sim.stop()


def test_delivery_statuses_a_bounce_and_a_stop_come_back_through_the_webhooks(
        sqlite_url: str, tmp_path: Path, daemons: list, simulator: SimulatorProcess) -> None:
    # Given a daemon whose Twilio messages name its own Twilio webhook source as StatusCallback,
    # and Postmark's webhook configured (as in Postmark's settings) with the token source's header
    env = base_env(DATABASE_URL=sqlite_url, DAILY_CAP="0", QUIET_HOURS="off", RATE_SMS="unlimited",
                   RATE_EMAIL="unlimited", PROVIDER_POSTMARK_BATCH_WAIT_MS="100",
                   **{**simulator.provider_env(), "PROVIDER_TWILIO_AUTH_TOKEN": TWILIO_TOKEN},
                   SOURCE_TWILIO_SCHEME="twilio", SOURCE_TWILIO_SECRET=TWILIO_TOKEN,
                   SOURCE_POSTMARK_SCHEME="token", SOURCE_POSTMARK_SECRET=TOKEN)
    daemon = DaemonProcess(env, tmp_path)
    public = f"http://127.0.0.1:{daemon.port}"
    daemon.env.update(RETENTIOND_PUBLIC_URL=public,
                      RETENTIOND_PROVIDER_TWILIO_STATUS_CALLBACK=f"{public}/webhooks/twilio")
    simulator.postmark_webhook(f"{public}/webhooks/postmark", {"X-Webhook-Token": TOKEN})
    simulator.set_outcome(CY[2], "undelivered")
    assert cli("migrate", env=daemon.env).returncode == 0
    for name, text in (("receipts", CAMPAIGN), ("again", AGAIN)):
        (tmp_path / f"{name}.yaml").write_text(text)
        assert cli("campaign", "apply", str(tmp_path / f"{name}.yaml"), env=daemon.env).returncode == 0
    contacts = tmp_path / "contacts.csv"
    with contacts.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["external_id", "email", "phone", "name"])
        writer.writerows([ADA, BOB, CY])
    imported = cli("contacts", "import", str(contacts), "--campaign", "receipts", "--no-progress", env=daemon.env)
    assert imported.returncode == 0, imported.stderr
    # When the daemon runs the campaign
    daemons.append(daemon.start())
    init_database(sqlite_url)
    try:
        def delivery(phone_or_email: str, channel: str) -> str | None:
            contact = Contact.get((Contact.phone == phone_or_email) | (Contact.email == phone_or_email))
            send = Send.get_or_none((Send.contact == contact.id) & (Send.channel == channel))
            return send.delivery_status if send is not None else None

        # Then each message's receipt lands on its send: delivered, undelivered (failed), bounced
        wait_until(lambda: (delivery(ADA[2], "sms"), delivery(ADA[1], "email"), delivery(CY[2], "sms"),
                            delivery(BOB[1], "email")) == ("delivered", "delivered", "failed", "bounced"),
                   60, "every receipt on its send", interval_s=0.2)
        # every Twilio callback verified (the daemon answered 2xx to each: none refused as unsigned)
        callbacks = simulator.callbacks()
        assert callbacks and all(isinstance(c["status"], int) and 200 <= c["status"] < 300 for c in callbacks), callbacks
        assert {c["kind"] for c in callbacks} >= {"twilio.message_status", "postmark.delivery", "postmark.bounce"}
        # the bounce suppressed Bob's email, and only that
        bob = Contact.get(Contact.external_id == "bob")
        assert [(s.channel, s.reason) for s in Suppression.select().where(Suppression.contact == bob.id)] == [
            ("email", "bounced")]
        # When Ada replies STOP to the number that texted her
        status = simulator.inbound_sms(f"{public}/webhooks/twilio", ACCOUNT, ADA[2], "+15005550006", "STOP")
        assert 200 <= status < 300
        ada = Contact.get(Contact.external_id == "ada")
        wait_until(lambda: Suppression.select().where((Suppression.contact == ada.id)
                                                      & (Suppression.channel == "sms")).exists(),
                   30, "Ada's STOP applied")
    finally:
        close_database()
    # Then a later campaign's SMS to her is held back, while her email still goes
    enrolled = cli("contacts", "import", str(contacts), "--campaign", "again", "--no-progress", env=daemon.env)
    assert enrolled.returncode == 0, enrolled.stderr
    init_database(sqlite_url)
    try:
        campaign = Campaign.get(Campaign.slug == "again")

        def status_of(contact_id: int, channel: str) -> str | None:
            send = Send.get_or_none((Send.contact == contact_id) & (Send.channel == channel)
                                    & (Send.campaign == campaign.id))
            return send.status if send is not None else None

        wait_until(lambda: (status_of(ada.id, "sms"), status_of(ada.id, "email")) == ("skipped", "sent"),
                   60, "Ada's next SMS held back by her STOP, her email sent")
        assert "STOP" in (Send.get((Send.contact == ada.id) & (Send.campaign == campaign.id)
                                   & (Send.channel == "sms")).reason or "").upper()
        assert simulator.messages(channel="sms", to=ADA[2]) and len(simulator.messages(channel="sms", to=ADA[2])) == 1
    finally:
        close_database()
    assert daemon.stop() == 0
