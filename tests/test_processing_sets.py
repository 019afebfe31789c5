"""Set-based event processing, both engines: runs of upserts (with enrolment) and of conversions
cost the same statements for 10 events or 1,000; a batch ends exactly as the same events processed
one at a time; and a lead enrolled by webhook has its first send planned without a scheduler tick."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.models import (
    Attribution,
    Campaign,
    CampaignStep,
    Contact,
    Enrolment,
    InboundEvent,
    Send,
    Suppression,
    TrackedLink,
    utcnow,
)
from engine import events_out, planner, processing
from engine.planner import plan_contacts
from engine.processing import _process_one, process_pending
from ops.harness.signing import STANDARD_SECRET, settings_for
from tests.support.settings import make_settings


def _event(tag: str, kind: str, data: dict[str, Any]) -> InboundEvent:
    return InboundEvent.create(source="app", event_id=f"{tag}-{uuid.uuid4().hex[:12]}", type=kind,
                               payload=json.dumps({"events": [{"type": kind, "data": data}], "raw": ""}))


def _campaign(slug: str, *, trigger: str | None = None, exit_on: tuple[str, ...] = (), steps: int = 1,
              delay_s: int = 0, active: bool = True) -> Campaign:
    campaign, created = Campaign.get_or_create(slug=slug, defaults={"name": slug, "trigger_event": trigger,
                                                                    "exit_on": list(exit_on), "active": active})
    if created:
        for position in range(steps):
            CampaignStep.create(campaign=campaign.id, position=position, channel="sms", body="Hi {{ contact.name }}",
                                delay_s=delay_s)
    return campaign


@pytest.fixture
def batch_of_1000(monkeypatch: pytest.MonkeyPatch) -> None:
    # One batch (one transaction) takes the 1,000 events, and one their planning, so that 10 and
    # 1,000 compare one batch with one batch: the cost of a batch must not grow with its length.
    monkeypatch.setattr(processing, "BATCH", 2000)
    monkeypatch.setattr(planner, "BATCH", 2000)


def test_a_run_of_upserts_with_enrolment_takes_the_same_statements_for_10_or_1000(
        migrated_db: str, statements, batch_of_1000: None) -> None:  # type: ignore[no-untyped-def]
    # Given a campaign that every upsert triggers, one each upsert names, and one that exits on it
    settings = settings_for(migrated_db)
    _campaign("welcome", trigger="contact.upsert")
    _campaign("vip", delay_s=3600)
    _campaign("stale", exit_on=("contact.upsert",))

    def process(count: int) -> int:
        for i in range(count):
            _event("u", "contact.upsert", {"external_id": f"lead-{count}-{i}", "name": f"L{i}", "campaign": "vip"})
        statements.count = 0
        assert process_pending(settings) == {"processed": count}
        return statements.count

    # The process's first planned send of a step reads that step's metric labels, once for the
    # process's life (engine/campaign_metrics.py): a first lead pays it before the measure
    process(1)
    # When 10 leads, then 1,000 leads arrive, Then both cost the same statements
    assert process(10) == process(1000)
    # and every lead is in both campaigns, its welcome message planned already
    assert Enrolment.select().where(Enrolment.status == "waiting").count() == 1011
    assert Enrolment.select().where(Enrolment.status == "active").count() == 1011
    assert Send.select().where(Send.status == "planned").count() == 1011


def test_a_run_of_conversions_takes_the_same_statements_for_10_or_1000(
        migrated_db: str, statements, batch_of_1000: None) -> None:  # type: ignore[no-untyped-def]
    # Given 1,010 contacts in a campaign that exits on a conversion, half of them with a click
    settings = settings_for(migrated_db)
    trial = _campaign("trial", exit_on=("conversion",), delay_s=3600)
    _campaign("paid", trigger="conversion", delay_s=3600)
    Contact.insert_many([{"external_id": f"c{i}"} for i in range(1010)]).execute()
    ids = [c.id for c in Contact.select(Contact.id).order_by(Contact.id)]
    Enrolment.insert_many([{"contact": cid, "campaign": trial.id} for cid in ids]).execute()
    click = _event("click", "click", {"token": "none"})
    Attribution.insert_many([{"event": click.id, "kind": "click", "contact": cid} for cid in ids[::2]]).execute()
    InboundEvent.update(status="processed").execute()

    def process(first: int, count: int) -> int:
        for i in range(first, first + count):
            _event("v", "conversion", {"external_id": f"c{i}", "name": "purchase", "value": 9.0})
        statements.count = 0
        assert process_pending(settings) == {"processed": count}
        return statements.count

    # When 10 contacts convert, then 1,000 others, Then both cost the same statements
    assert process(0, 10) == process(10, 1000)
    # and each conversion is recorded, its contact out of the trial and into the paid campaign
    assert Attribution.select().where(Attribution.kind == "conversion").count() == 1010
    assert Enrolment.select().where(Enrolment.status == "exited", Enrolment.exit_reason == "purchase").count() == 1010
    assert Enrolment.select().where(Enrolment.status == "active").count() == 1010


def test_a_lead_enrolled_by_webhook_has_its_send_planned_without_a_tick(migrated_db: str) -> None:
    # Given a one-step SMS campaign with no delay
    settings = settings_for(migrated_db)
    _campaign("welcome")
    # When a lead naming it is processed (and no scheduler runs)
    _event("lead", "contact.upsert", {"phone": "+12015550100", "name": "Ada", "campaign": "welcome"})
    assert process_pending(settings) == {"processed": 1}
    # Then its message is already rendered and planned, the enrolment waiting for it
    send = Send.get()
    assert (send.status, send.recipient, send.body) == ("planned", "+12015550100", "Hi Ada")
    assert Enrolment.get().status == "waiting"
    # and the tick's claim never plans it a second time
    assert planner.plan_due_steps(settings, utcnow() + dt.timedelta(seconds=1)).planned == 0
    assert plan_contacts(settings, [send.contact_id], utcnow()).planned == 0
    assert Send.select().count() == 1


def test_a_lead_processed_by_the_event_actor_is_sent_without_a_tick(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    # Given the channel actors and the event processor's actor on a broker, and no scheduler at all
    pipeline = stub_pipeline()
    _campaign("welcome")
    _event("lead", "contact.upsert", {"phone": "+12015550101", "name": "Bea", "campaign": "welcome"})
    # When the processor is woken, as the side server does after a group commit
    pipeline.broker.get_actor("process_events").send()
    pipeline.broker.join("retentiond.events", fail_fast=True)
    pipeline.wait_until_idle()
    # Then the lead's first message went out: planned and relayed by the processor, no tick involved
    send = Send.get()
    assert (send.status, send.recipient, send.body) == ("sent", "+12015550101", "Hi Bea")


def test_the_event_actor_relays_each_batch_of_leads_while_it_processes_the_next(
        stub_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # Given 1,200 leads for a one-step campaign pending (three batches of 500), and a note of what
    # is still pending and already queued each time the event actor relays
    import actors.events

    pipeline = stub_pipeline()
    _campaign("welcome")
    for i in range(1200):
        _event("lead", "contact.upsert", {"phone": f"+1201556{i:04d}", "name": f"P{i}", "campaign": "welcome"})
    seen: list[tuple[int, int]] = []
    relay = actors.events.relay_planned_sends

    def noting(*args: Any, **kwargs: Any) -> int:
        relayed = relay(*args, **kwargs)
        seen.append((InboundEvent.select().where(InboundEvent.status == "pending").count(),
                     Send.select().where(Send.status != "planned").count()))
        return relayed

    monkeypatch.setattr(actors.events, "relay_planned_sends", noting)
    # When the processor is woken
    pipeline.broker.get_actor("process_events").send()
    pipeline.broker.join("retentiond.events", fail_fast=True)
    pipeline.wait_until_idle()
    # Then the first batch's leads were on their queue while 700 leads still waited to be
    # processed (the first messages do not wait for the whole backlog), and every lead was sent
    assert seen[0] == (700, 500), seen
    assert Send.select().where(Send.status == "sent").count() == 1200


def test_an_upsert_that_meets_a_concurrent_insert_of_its_contact_is_retried_not_failed(
        migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an upsert whose first write meets a unique-key conflict (an import inserted the same
    # contact between our read and our insert), on the set-based path and then on the one-at-a-time one
    import peewee

    settings = settings_for(migrated_db)
    _event("lead", "contact.upsert", {"email": "race@example.com", "name": "Ada"})
    apply_upserts, calls = processing._SET_BASED["contact.upsert"], []

    def conflict_twice(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:  # the run's set-based write, then the event's first write alone
            raise peewee.IntegrityError("UNIQUE constraint failed: contact.email")
        return apply_upserts[0](*args, **kwargs)

    monkeypatch.setitem(processing._SET_BASED, "contact.upsert", (conflict_twice, *apply_upserts[1:]))
    # When it is processed
    outcomes = process_pending(settings)
    # Then the second try writes it: the event is processed, the contact stored once
    assert outcomes == {"processed": 1}
    assert [(c.email, c.name) for c in Contact.select()] == [("race@example.com", "Ada")]


# -- one batch == one at a time ---------------------------------------------------------------------

PEOPLE = 3
NAMES = st.sampled_from(["Ada", "Bea", None])


def _keys(ns: str, person: int) -> dict[str, str]:
    return {"external_id": f"{ns}-p{person}", "email": f"p{person}-{ns}@example.com",
            "phone": f"+1201555{int(ns[1:]) * 10 + person:04d}"}


# An event, namespace-free: (kind, spec); the namespace turns it into data.
UPSERT = st.tuples(st.just("contact.upsert"), st.fixed_dictionaries({
    "keys": st.lists(st.tuples(st.sampled_from(["external_id", "email", "phone"]), st.integers(0, PEOPLE - 1)),
                     min_size=1, max_size=3, unique_by=lambda k: k[0]),
    "name": NAMES, "plan": st.sampled_from(["free", "pro", None]),
    "campaign": st.sampled_from([None, None, "onboard", "missing", "paused"]),
    "bogus": st.sampled_from([False] * 9 + [True])}))
CONTACT_EVENT = st.tuples(st.sampled_from(["conversion", "contact.unsubscribe"]), st.fixed_dictionaries({
    "key": st.tuples(st.sampled_from(["external_id", "email"]), st.integers(0, PEOPLE - 1)),
    "name": st.sampled_from(["buy", "trial", None]), "channel": st.sampled_from([None, "sms", "email"]),
    "reason": st.sampled_from([None, "stop"])}))
CLICK = st.tuples(st.just("click"), st.fixed_dictionaries({"known": st.booleans()}))
EVENTS = st.lists(st.one_of(UPSERT, CONTACT_EVENT, CLICK), min_size=1, max_size=40)


def _data(ns: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    if kind == "contact.upsert":
        data: dict[str, Any] = {field: _keys(ns, person)[field] for field, person in spec["keys"]}
        data |= {"name": spec["name"], "attributes": {"plan": spec["plan"]} if spec["plan"] else {}}
        if spec["campaign"]:
            data["campaign"] = spec["campaign"]
        if spec["bogus"]:
            data["bogus"] = 1  # not a contact field: this event fails, alone
        return data
    if kind == "click":
        return {"token": f"{ns}-tok" if spec["known"] else f"{ns}-unknown"}
    field, person = spec["key"]
    if kind == "conversion":
        return {field: _keys(ns, person)[field], "name": spec["name"], "value": 5.0}
    return {field: _keys(ns, person)[field], "channel": spec["channel"], "reason": spec["reason"]}


def _world(ns: str) -> None:
    """Person 0 exists already, with a message sent and a link in it; the others come by upsert."""
    welcome = Campaign.get(Campaign.slug == "welcome")
    person = Contact.create(**_keys(ns, 0), name="Zed")
    send = Send.create(idempotency_key=f"{ns}-s", channel="sms", contact=person.id, campaign=welcome.id,
                       status="sent", finished_at=utcnow())
    TrackedLink.create(token=f"{ns}-tok", url="https://example.com", contact=person.id, send=send.id,
                       campaign=welcome.id)


def _state(ns: str, events: list[InboundEvent]) -> dict[str, Any]:
    """Everything the events did in namespace ``ns``, with ids and the namespace taken out."""
    labels = {value: f"{field}{person}" for person in range(PEOPLE) for field, value in _keys(ns, person).items()}
    contacts = {c.id: (labels.get(c.external_id), labels.get(c.email), labels.get(c.phone), c.name,
                       json.dumps(c.attributes, sort_keys=True), json.dumps(c.consent, sort_keys=True))
                for c in Contact.select().where(Contact.external_id.in_(list(labels)) | Contact.email.in_(list(labels))
                                                | Contact.phone.in_(list(labels)))}
    event_ids = {e.id: position for position, e in enumerate(events)}
    slugs = {c.id: c.slug for c in Campaign.select()}
    ids = list(contacts)
    return {
        "contacts": sorted(contacts.values(), key=repr),
        "enrolments": sorted(((contacts[e.contact_id], slugs[e.campaign_id], e.status, e.next_position, e.exit_reason)
                              for e in Enrolment.select().where(Enrolment.contact.in_(ids))), key=repr),
        "suppressions": sorted(((contacts[s.contact_id], s.channel, s.reason)
                                for s in Suppression.select().where(Suppression.contact.in_(ids))), key=repr),
        "attributions": sorted(((event_ids[a.event_id], a.kind, contacts.get(a.contact_id), a.send_id is not None,
                                 slugs.get(a.campaign_id), a.name, a.value)
                                for a in Attribution.select().where(Attribution.event.in_(list(event_ids)))), key=repr),
        "sends": sorted(((contacts[s.contact_id], slugs.get(s.campaign_id), s.status, s.body)
                         for s in Send.select().where(Send.contact.in_(ids))), key=repr),
        "events": [(e.status, contacts.get(e.contact_id), e.error) for e in
                   sorted(InboundEvent.select().where(InboundEvent.id.in_(list(event_ids))), key=lambda e: e.id)],
        "told": _told(contacts),
    }


_IDS = {"send_id", "link_id", "campaign_id", "step_id"}  # which ids differ between the worlds: told as present or not


def _told(contacts: dict[int, Any]) -> list[Any]:
    """The events out written about these contacts (engine/events_out.py), ids taken out."""
    told = []
    for send in Send.select(Send.body).where(Send.recipient.startswith("destination:")):
        document = json.loads(send.body)
        data = document["data"]
        if data.get("contact_id") in contacts:
            told.append((document["type"], contacts[data["contact_id"]], sorted(
                (k, v is not None if k in _IDS else v) for k, v in data.items() if k != "contact_id")))
    return sorted(told, key=repr)


COUNTER = iter(range(1, 10_000))


@pytest.fixture
def crm_told_everything() -> Iterator[None]:
    """A destination that wants every event type: what it is told is compared too."""
    events_out.configure(make_settings(DESTINATION_CRM_URL="https://crm.example/hooks",
                                       DESTINATION_CRM_SECRET=STANDARD_SECRET).destinations)
    yield
    events_out.configure({})


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=EVENTS)
def test_one_batch_ends_as_the_same_events_one_at_a_time(migrated_db: str, crm_told_everything: None,
                                                         events: list[tuple[str, dict]]) -> None:
    # Given campaigns that start and end on these events (a campaign that both starts and ends on a
    # click, and on a conversion: a contact's second such event undoes its first), one with no steps
    settings = settings_for(migrated_db)
    _campaign("welcome", trigger="contact.upsert", exit_on=("conversion",))
    _campaign("onboard", exit_on=("contact.upsert", "contact.unsubscribe"), delay_s=60)
    _campaign("paused", active=False)
    _campaign("clicked", trigger="click", exit_on=("click",), delay_s=60)
    _campaign("converted", trigger="conversion", exit_on=("conversion",), delay_s=60)
    _campaign("winback", trigger="contact.unsubscribe", steps=0)
    # and two copies of one world, in namespaces of their own
    n = next(COUNTER)
    batch_ns, alone_ns = f"b{2 * n}", f"a{2 * n + 1}"
    _world(batch_ns)
    _world(alone_ns)

    # When the events are processed as one batch in one world
    batched = [_event("b", kind, _data(batch_ns, kind, spec)) for kind, spec in events]
    assert sum(process_pending(settings).values()) == len(events)
    # and one at a time (each in its own transaction, the planner after them) in the other
    alone = [_event("a", kind, _data(alone_ns, kind, spec)) for kind, spec in events]
    for event in alone:
        _process_one(settings, event)
    plan_contacts(settings, [c.id for c in Contact.select(Contact.id)], utcnow())

    # Then both worlds are the same: contacts, enrolments, suppressions, attributions, sends, each
    # event's status, contact and notes, and what the destination is told
    assert _state(batch_ns, batched) == _state(alone_ns, alone)
