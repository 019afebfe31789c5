"""The planner and the reconciler on both engines: due steps become rendered, planned sends once;
stalled sends go back to the outbox."""

from __future__ import annotations

import datetime as dt

from db.models import Campaign, CampaignStep, Contact, Decision, Enrolment, Send, TrackedLink, utcnow
from engine.campaigns import enrol
from engine.planner import plan_due_steps
from engine.reconciler import reconcile
from tests.support.campaigns import campaign_with, contacts
from tests.support.settings import PLANNER_SETTINGS


def test_due_steps_become_rendered_planned_sends_once(migrated_db: str) -> None:
    campaign = campaign_with("Hi {{ contact.name }} ({{ contact.plan }}): {{ link('https://example.com/o') }}")
    ids = contacts(3)
    assert enrol(ids, campaign) == 3
    report = plan_due_steps(PLANNER_SETTINGS, utcnow() + dt.timedelta(seconds=1))
    assert report.planned == 3
    sends = list(Send.select().order_by(Send.id))
    assert [s.status for s in sends] == ["planned"] * 3
    first = sends[0]
    assert first.recipient == "+12015550000" and first.channel == "sms"
    assert first.body.startswith("Hi P0 (pro): https://go.example.com/t/")
    token = first.body.rsplit("/t/", 1)[1]
    link = TrackedLink.get(TrackedLink.token == token)
    assert (link.url, link.send_id, link.contact_id) == ("https://example.com/o", first.id, first.contact_id)
    assert {e.status for e in Enrolment.select()} == {"waiting"}
    # a second tick finds nothing due: each step is planned once
    assert plan_due_steps(PLANNER_SETTINGS, utcnow() + dt.timedelta(seconds=1)).planned == 0
    assert Send.select().count() == 3


def test_a_template_error_fails_that_send_and_the_enrolment_moves_on(migrated_db: str) -> None:
    campaign = campaign_with("Hi {{ contact.no_such_thing }}", "second step")
    (contact_id,) = contacts(1)
    enrol([contact_id], campaign)
    report = plan_due_steps(PLANNER_SETTINGS, utcnow() + dt.timedelta(seconds=1))
    assert (report.planned, report.failed) == (0, 1)
    failed = Send.get()
    assert failed.status == "failed" and failed.reason == "template error" and "no_such_thing" in failed.error
    assert Decision.get(Decision.send == failed.id).outcome == "failed"
    enrolment = Enrolment.get()
    assert (enrolment.status, enrolment.next_position) == ("active", 1)
    # and the next tick plans the second step
    assert plan_due_steps(PLANNER_SETTINGS, utcnow() + dt.timedelta(seconds=1)).planned == 1


def test_an_enrolment_past_the_last_step_completes(migrated_db: str) -> None:
    campaign = campaign_with("only step")
    (contact_id,) = contacts(1)
    enrol([contact_id], campaign)
    Enrolment.update(next_position=1).execute()  # the campaign was shortened under it
    report = plan_due_steps(PLANNER_SETTINGS, utcnow() + dt.timedelta(seconds=1))
    assert (report.planned, report.completed) == (0, 1)
    assert Enrolment.get().status == "completed"


def test_enrolments_not_yet_due_wait(migrated_db: str) -> None:
    campaign = Campaign.create(slug="later", name="Later")
    CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="x", delay_s=3600)
    enrol(contacts(2), campaign)
    assert plan_due_steps(PLANNER_SETTINGS, utcnow()).planned == 0
    assert plan_due_steps(PLANNER_SETTINGS, utcnow() + dt.timedelta(hours=1, seconds=1)).planned == 2


def test_the_reconciler_offers_stalled_sends_again(migrated_db: str) -> None:
    now = utcnow()
    old, recent = now - dt.timedelta(minutes=5), now - dt.timedelta(seconds=5)
    Send.create(idempotency_key="lost", channel="sms", status="queued", queued_at=old)
    Send.create(idempotency_key="moving", channel="sms", status="queued", queued_at=recent)
    Send.create(idempotency_key="retry-lost", channel="sms", status="retrying", queued_at=old)
    Send.create(idempotency_key="orphan", channel="sms", status="sending", claimed_at=old)
    Send.create(idempotency_key="busy", channel="sms", status="sending", claimed_at=recent)
    report = reconcile(PLANNER_SETTINGS, now)
    assert (report.requeued, report.reclaimed) == (2, 1)
    status = {s.idempotency_key: s.status for s in Send.select()}
    assert status == {"lost": "planned", "moving": "queued", "retry-lost": "planned", "orphan": "planned",
                      "busy": "sending"}
    assert Decision.get().outcome == "reoffered"


def test_a_template_error_first_in_the_batch_leaves_the_good_sends_their_text(migrated_db: str) -> None:
    # Given a broken step due first and good email steps due after it, planned in one batch
    now = utcnow()
    broken = Campaign.create(slug="broken", name="Broken")
    CampaignStep.create(campaign=broken.id, position=0, channel="email", subject="Hi", body="{{ contact.nme }}",
                        delay_s=0)
    good = Campaign.create(slug="good", name="Good")
    CampaignStep.create(campaign=good.id, position=0, channel="email", subject="For {{ contact.name }}",
                        body="Dear {{ contact.name }}, on {{ contact.plan }}", delay_s=0)
    people = [Contact.create(external_id=f"e{i}", email=f"p{i}@example.com", name=f"P{i}",
                             attributes={"plan": "pro"}).id for i in range(3)]
    enrol(people[:1], broken, now=now - dt.timedelta(minutes=1))
    enrol(people[1:], good, now=now)
    # When the batch is planned
    report = plan_due_steps(PLANNER_SETTINGS, now + dt.timedelta(seconds=1))
    # Then the failed row is failed and every good row carries exactly its own rendered text
    assert (report.planned, report.failed) == (2, 1)
    texts = {s.contact_id: (s.status, s.subject, s.body, s.error) for s in Send.select()}
    assert texts[people[1]] == ("planned", "For P1", "Dear P1, on pro", None)
    assert texts[people[2]] == ("planned", "For P2", "Dear P2, on pro", None)
    assert texts[people[0]][:3] == ("failed", None, None) and "nme" in texts[people[0]][3]
