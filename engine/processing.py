"""Processing committed inbound events: in arrival order, once each, one at a time across the
whole deployment.

``process_pending(settings)`` takes pending events by id (index ``inbound_event(status, id)``) in
batches, one transaction each, under an exclusive lock (a PostgreSQL advisory transaction lock;
SQLite's single writer) so that two processes never interleave — which keeps events of one contact
in order. Each event runs in its own savepoint: a bad one is marked ``failed`` with its error and
the rest go on. Re-running is harmless: only ``pending`` rows are taken, and they are marked in the
same transaction as their effects.

Runs of consecutive click events, and of consecutive delivery receipts (the bulk of a burst, and
of the callbacks after a campaign), are applied set-based: one query for their links or sends, one
write of their effects, one update of their rows. An event after them in the same batch still sees
them (same transaction, arrival order kept); if the set-based step fails, the run is retried one
event at a time so that only the bad event is marked ``failed``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import peewee

from db.bulk import insert_many
from db.database import database, db_session, is_postgres
from db.models import Attribution, Contact, InboundEvent, Send, TrackedLink, utcnow
from db.queries import bulk_update
from engine.campaigns import CampaignError, enrol
from engine.contacts import ContactInput, find_contact, suppress, unsubscribe, unsuppress, upsert_contacts
from engine.enrolments import follow_campaigns
from ground.metrics import EVENTS_PROCESSED
from ground.send_states import SendStatus
from ground.settings import Settings
from ground.vocabulary import EventType, InboundStatus

logger = logging.getLogger(__name__)

BATCH = 500
_PG_LOCK_KEY = 0x7265_7476  # 'retv': the event processor


def process_pending(settings: Settings, limit: int = 50_000, should_stop: Callable[[], bool] = lambda: False) -> Counter:
    """Process up to ``limit`` pending events, batch by batch until ``should_stop()``; returns counts by outcome."""
    outcomes: Counter = Counter()
    with db_session():
        while sum(outcomes.values()) < limit and not should_stop():
            with database.atomic():
                if is_postgres() and not database.execute_sql(
                        "SELECT pg_try_advisory_xact_lock(%s)", (_PG_LOCK_KEY,)).fetchone()[0]:
                    break  # another process is on it
                events = list(InboundEvent.select().where(InboundEvent.status == InboundStatus.PENDING)
                              .order_by(InboundEvent.id).limit(BATCH))
                outcomes.update(_process_batch(settings, events))
            if len(events) < BATCH:
                break
    for outcome, count in outcomes.items():
        EVENTS_PROCESSED.labels(outcome).inc(count)
    return outcomes


def _process_batch(settings: Settings, events: list[InboundEvent]) -> Counter:
    """In arrival order: runs of consecutive clicks, or of consecutive delivery receipts, set-based;
    anything else one at a time."""
    outcomes: Counter = Counter()
    run: Run = []
    run_kind: str | None = None
    for event in events:
        kind, data = _lone_event(event)
        if kind is not None and kind == run_kind:
            run.append((event, data))
            continue
        if run and run_kind is not None:
            outcomes.update(_process_run(settings, run_kind, run))
            run, run_kind = [], None
        if kind is not None:
            run, run_kind = [(event, data)], kind
        else:
            outcomes[_process_one(settings, event)] += 1
    if run and run_kind is not None:
        outcomes.update(_process_run(settings, run_kind, run))
    return outcomes


def _lone_event(event: InboundEvent) -> tuple[str | None, dict[str, Any]]:
    """(kind, data) when the event is a single click or delivery receipt, else (None, {})."""
    try:
        (canonical,) = json.loads(event.payload)["events"]
        kind, data = canonical["type"], canonical["data"]
        if kind in _SET_BASED and isinstance(data[_SET_BASED[kind][1]], str):
            return kind, data
    except (ValueError, KeyError, TypeError):
        pass  # the one-at-a-time path deals with it, and with its errors
    return None, {}


# An event row's outcome: (id, status, processed_at, contact_id, error), written in one bulk update.
EventUpdate = tuple[int, InboundStatus, Any, int | None, str | None]
Run = list[tuple[InboundEvent, dict[str, Any]]]


def _process_run(settings: Settings, kind: str, run: Run) -> Counter:
    try:
        with database.atomic():
            updates = _SET_BASED[kind][0](run, utcnow())
            notes = follow_campaigns(kind, sorted({u[3] for u in updates if u[3] is not None}))
            if notes:  # campaign notes concern every event of the run
                updates = [(*u[:4], "; ".join(([u[4]] if u[4] else []) + notes)[:2000]) for u in updates]
            bulk_update("inbound_event", ("status", "processed_at", "contact_id", "error"), updates,
                        casts={"processed_at": "timestamp", "contact_id": "integer"}, guard=("status", InboundStatus.PENDING))
        return Counter({InboundStatus.PROCESSED: len(run)})
    except _DATABASE_AWAY:
        raise
    except Exception:
        logger.warning("a run of %d %s events failed set-based; applying them one at a time", len(run), kind,
                       exc_info=True)
        return Counter(_process_one(settings, event) for event, _ in run)


def _apply_clicks(run: Run, now: Any) -> list[EventUpdate]:
    """Each click attributed to its link's send, step and campaign: one query, one insert."""
    links = {link.token: link for link in TrackedLink.select(
        TrackedLink.token, TrackedLink.contact, TrackedLink.send, TrackedLink.campaign, TrackedLink.step)
        .where(TrackedLink.token.in_(sorted({data["token"] for _, data in run})))}
    attributions: list[dict[str, Any]] = []
    updates: list[EventUpdate] = []
    for event, data in run:
        link = links.get(data["token"])
        if link is None:
            updates.append((event.id, InboundStatus.PROCESSED, now, None, "unknown link"))
            continue
        attributions.append({"event": event.id, "kind": EventType.CLICK, "contact": link.contact_id, "send": link.send_id,
                             "campaign": link.campaign_id, "step": link.step_id, "created_at": now})
        updates.append((event.id, InboundStatus.PROCESSED, now, link.contact_id, None))
    if attributions:
        insert_many(Attribution, attributions).execute()
    return updates


def _apply_deliveries(run: Run, now: Any) -> list[EventUpdate]:
    """Each receipt's status on its send (the last receipt of a send wins, as one at a time would),
    bounces and complaints suppressed on the send's channel: one query, two writes."""
    sends = {send.provider_message_id: send for send in Send.select(
        Send.id, Send.provider_message_id, Send.contact, Send.channel)
        .where(Send.provider_message_id.in_(sorted({data["provider_message_id"] for _, data in run})))}
    statuses: dict[int, str] = {}
    suppressions: dict[tuple[str, str], set[int]] = {}
    updates: list[EventUpdate] = []
    for event, data in run:
        send = sends.get(data["provider_message_id"])
        if send is None:
            updates.append((event.id, InboundStatus.PROCESSED, now, None, "no send with that provider_message_id"))
            continue
        statuses[send.id] = data["status"]
        if data["status"] in ("bounced", "complained") and send.contact_id is not None:
            suppressions.setdefault((data["status"], send.channel), set()).add(send.contact_id)
        updates.append((event.id, InboundStatus.PROCESSED, now, send.contact_id, None))
    bulk_update("send", ("delivery_status",), list(statuses.items()))
    for (reason, channel), contact_ids in suppressions.items():
        suppress(contact_ids, reason, channel)
    return updates


# The database failed, not the event (connection lost or refused, "database is locked"): the
# batch's transaction is gone, so nothing can be marked; the actor's retry (and the scheduler's
# next wake) takes the still-pending events again, instead of a traceback per event.
_DATABASE_AWAY = (peewee.OperationalError, peewee.InterfaceError)


# Event kinds applied set-based: how, and the data field that identifies what they concern.
_SET_BASED: dict[str, tuple[Callable[[Run, Any], list[EventUpdate]], str]] = {
    EventType.CLICK: (_apply_clicks, "token"),
    EventType.DELIVERY: (_apply_deliveries, "provider_message_id"),
}


def _process_one(settings: Settings, event: InboundEvent) -> InboundStatus:
    notes: list[str] = []
    try:
        with database.atomic():
            contact_id = None
            for canonical in json.loads(event.payload)["events"]:
                contact_id = _apply(settings, event, canonical, notes) or contact_id
            (InboundEvent.update(status=InboundStatus.PROCESSED, processed_at=utcnow(), contact=contact_id,
                                 error="; ".join(notes)[:2000] or None)
             .where(InboundEvent.id == event.id).execute())
        return InboundStatus.PROCESSED
    except _DATABASE_AWAY:
        raise
    except Exception as exc:  # one bad event must not stop the others
        logger.exception("inbound event %d from %s failed", event.id, event.source)
        (InboundEvent.update(status=InboundStatus.FAILED, processed_at=utcnow(), error=f"{type(exc).__name__}: {exc}"[:2000])
         .where(InboundEvent.id == event.id).execute())
        return InboundStatus.FAILED


def _contact(settings: Settings, data: dict[str, Any], notes: list[str]) -> Contact | None:
    contact = find_contact(data, settings.default_region)
    if contact is None:
        notes.append("no such contact")
    return contact


def _apply(settings: Settings, event: InboundEvent, canonical: dict[str, Any], notes: list[str]) -> int | None:
    kind, data = canonical["type"], dict(canonical["data"])
    if kind == EventType.CONTACT_UPSERT:
        campaign = data.pop("campaign", None)
        (result,) = upsert_contacts([ContactInput(**data)])
        notes.extend(follow_campaigns(EventType.CONTACT_UPSERT, [result.contact_id]))
        if campaign:
            try:
                enrol([result.contact_id], campaign)
            except CampaignError as exc:
                notes.append(str(exc))
        return result.contact_id
    if kind in (EventType.CONTACT_UNSUBSCRIBE, EventType.CONTACT_RESUBSCRIBE):
        contact = _contact(settings, data, notes)
        if contact is None:
            return None
        channel = data.get("channel") or "*"
        if kind == EventType.CONTACT_RESUBSCRIBE:
            unsuppress([contact.id], channel)
        else:
            notes.extend(unsubscribe([contact.id], channel, data.get("reason") or "unsubscribed"))
        return contact.id
    if kind == EventType.CONVERSION:
        contact = _contact(settings, data, notes)
        if contact is None:
            return None
        cause = _last_touch(contact.id)
        Attribution.create(event=event.id, kind=EventType.CONVERSION, contact=contact.id, name=data.get("name"),
                           value=data.get("value"), **cause)
        notes.extend(follow_campaigns(EventType.CONVERSION, [contact.id], reason=data.get("name") or EventType.CONVERSION))
        return contact.id
    if kind in _SET_BASED:  # the same rules as a run of them, for a run of one
        ((_, _, _, contact_id, note),) = _SET_BASED[kind][0]([(event, data)], utcnow())
        if note:
            notes.append(note)
        if contact_id is not None:
            notes.extend(follow_campaigns(kind, [contact_id]))
        return contact_id
    raise ValueError(f"unknown event type {kind!r}")


def _last_touch(contact_id: int) -> dict[str, Any]:
    """What caused a conversion: the contact's last click, else the last message sent to them."""
    click = (Attribution.select().where(Attribution.contact == contact_id, Attribution.kind == EventType.CLICK)
             .order_by(Attribution.id.desc()).first())
    if click is not None:
        return {"send": click.send_id, "campaign": click.campaign_id, "step": click.step_id}
    send = (Send.select(Send.id, Send.campaign, Send.step)
            .where(Send.contact == contact_id, Send.status == SendStatus.SENT).order_by(Send.finished_at.desc()).first())
    if send is not None:
        return {"send": send.id, "campaign": send.campaign_id, "step": send.step_id}
    return {}


def pending_count() -> int:
    return int(InboundEvent.select().where(InboundEvent.status == InboundStatus.PENDING).count())

