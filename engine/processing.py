"""Processing committed inbound events: in arrival order, once each, one at a time across the
whole deployment.

``process_pending(settings)`` takes pending events by id (index ``inbound_event(status, id)``) in
batches, one transaction each, under an exclusive lock (a PostgreSQL advisory transaction lock;
SQLite's single writer) so that two processes never interleave — which keeps events of one contact
in order. An event applied alone runs in its own savepoint: a bad one is marked ``failed`` with its
error and the rest go on. Re-running is harmless: only ``pending`` rows are taken, and they are marked in the
same transaction as their effects.

Runs of consecutive events of one kind — contact upserts (with their enrolment), conversions,
unsubscribes, clicks, delivery receipts — are applied set-based: a few statements per run, whatever
its length; the campaign rules (triggers, ``exit_on``, first steps) are read once per batch. The
result is the one of applying the events one after another: a contact met again in a run of
upserts starts a new round (``contacts.iter_rounds``), and a contact's k-th event of a run is
followed into its campaigns in round k when that can differ (``_follow``). An event after a run
in the same batch still sees it (same transaction, arrival order kept); if the set-based step
fails, the run is retried one event at a time so that only the bad event is marked ``failed``.
Resubscribes, and events carrying several canonical events, go one at a time.

Once a batch is committed, out of the lock, the steps it made due are planned at once
(``planner.plan_contacts``: the tick's claim and planning for the batch's contacts), so a lead's
first message does not wait for the scheduler's tick; a crash before that leaves them to the tick.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import peewee

from db.bulk import insert_many
from db.database import database, db_session, is_postgres, rows
from db.models import Attribution, InboundEvent, Send, TrackedLink, utcnow
from db.queries import bulk_update
from engine import events_out
from engine.campaign_metrics import count_attributions
from engine.contacts import (
    ContactInput,
    contact_key,
    find_contact,
    find_contact_ids,
    iter_rounds,
    suppress_first,
    unsuppress,
)
from engine.enrolments import CampaignError, CampaignRules
from engine.erasure import ERASED_NOTE, erased_among
from engine.planner import plan_contacts
from ground.metrics import EVENTS_PROCESSED
from ground.send_states import SendStatus
from ground.settings import Settings
from ground.vocabulary import EventType, InboundStatus, OutEventType

logger = logging.getLogger(__name__)

BATCH = 500
RECEIPT_WAIT_S = 120  # a delivery receipt waits this long for its send's result (_apply_deliveries)
_PG_LOCK_KEY = 0x7265_7476  # 'retv': the event processor


def process_pending(settings: Settings, limit: int = 50_000, should_stop: Callable[[], bool] = lambda: False,
                    after_batch: Callable[[], object] = lambda: None) -> Counter:
    """Process up to ``limit`` pending events, batch by batch until ``should_stop()``; returns counts
    by outcome. ``after_batch()`` runs once each batch is committed and its steps planned (the
    event actor relays there, so a batch's leads are on their way while the next one is processed)."""
    outcomes: Counter = Counter()
    after_id = 0  # each pending event is looked at once per call: a parked receipt waits for the next
    with db_session():
        while sum(outcomes.values()) < limit and not should_stop():
            with database.atomic():
                if is_postgres() and not database.execute_sql(
                        "SELECT pg_try_advisory_xact_lock(%s)", (_PG_LOCK_KEY,)).fetchone()[0]:
                    break  # another process is on it
                events = list(InboundEvent.select().where(InboundEvent.status == InboundStatus.PENDING,
                                                          InboundEvent.id > after_id)
                              .order_by(InboundEvent.id).limit(BATCH))
                if events:
                    after_id = events[-1].id
                batch = _Batch(settings)
                outcomes.update(_process_batch(settings, events, batch))
                parked = outcomes.pop(InboundStatus.PENDING, 0)
            _count_attributions(batch)
            _plan_now(settings, batch)
            after_batch()
            if parked:
                logger.debug("%d delivery receipt(s) wait for their send's result", parked)
            if len(events) < BATCH:
                break
    for outcome, count in outcomes.items():
        EVENTS_PROCESSED.labels(outcome).inc(count)
    return outcomes


class _Batch:
    """What every run of a batch shares: the settings, and the campaign rules read once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rules: CampaignRules | None = None
        self.contact_ids: set[int] = set()  # whose enrolments to plan once the batch is committed
        self.attributed: set[int] = set()  # events that wrote clicks or conversions: counted once committed

    @property
    def rules(self) -> CampaignRules:
        if self._rules is None:
            self._rules = CampaignRules.load()
        return self._rules


def _count_attributions(batch: _Batch) -> None:
    """Committed: the campaigns' funnels count the clicks and conversions the batch wrote (read
    back, so that a run retried one event at a time is not counted twice)."""
    if not batch.attributed:
        return
    written = rows(Attribution.select(Attribution.kind, Attribution.step, Attribution.value)
                   .where(Attribution.event.in_(sorted(batch.attributed))))
    for kind in (EventType.CLICK, EventType.CONVERSION):
        count_attributions(kind, [(step, value) for k, step, value in written if k == kind])


def _plan_now(settings: Settings, batch: _Batch) -> None:
    """Committed, and out of the lock: the steps the batch made due now are planned at once (the
    tick's claim and planning); whatever this misses, by a crash or an error, stays due for the tick."""
    try:
        plan_contacts(settings, sorted(batch.contact_ids), utcnow())
    except _DATABASE_AWAY:
        raise
    except Exception:
        logger.warning("planning the steps of %d contacts failed; the scheduler's tick plans them",
                       len(batch.contact_ids), exc_info=True)


def _process_batch(settings: Settings, events: list[InboundEvent], batch: _Batch | None = None) -> Counter:
    """In arrival order: runs of consecutive events of one set-based kind together; anything else
    one at a time."""
    batch = batch or _Batch(settings)
    outcomes: Counter = Counter()
    run: Run = []
    run_kind: str | None = None
    for event in events:
        kind, data = _lone_event(event)
        if kind is not None and kind == run_kind:
            run.append((event, data))
            continue
        if run and run_kind is not None:
            outcomes.update(_process_run(batch, run_kind, run))
            run, run_kind = [], None
        if kind is not None:
            run, run_kind = [(event, data)], kind
        else:
            outcomes[_process_one(settings, event, batch)] += 1
    if run and run_kind is not None:
        outcomes.update(_process_run(batch, run_kind, run))
    return outcomes


def _lone_event(event: InboundEvent) -> tuple[str | None, dict[str, Any]]:
    """(kind, data) when the event is a single event of a set-based kind, of the expected shape,
    else (None, {})."""
    try:
        (canonical,) = json.loads(event.payload)["events"]
        kind, data = canonical["type"], canonical["data"]
        if kind in _SET_BASED and isinstance(data, dict) and _SET_BASED[kind][1](data):
            return kind, data
    except (ValueError, KeyError, TypeError):
        pass  # the one-at-a-time path deals with it, and with its errors
    return None, {}


# An event row's outcome: (id, status, processed_at, contact_id, error), written in one bulk update.
EventUpdate = tuple[int, InboundStatus, Any, int | None, str | None]
Run = list[tuple[InboundEvent, dict[str, Any]]]


def _process_run(batch: _Batch, kind: str, run: Run) -> Counter:
    try:
        with database.atomic():
            updates = _SET_BASED[kind][0](batch, run, utcnow())
            bulk_update("inbound_event", ("status", "processed_at", "contact_id", "error"), updates,
                        casts={"processed_at": "timestamp", "contact_id": "integer"}, guard=("status", InboundStatus.PENDING))
        batch.contact_ids.update(u[3] for u in updates if u[3] is not None)
        # a parked receipt has no update: it stays pending (see _apply_deliveries)
        return +Counter({InboundStatus.PROCESSED: len(updates), InboundStatus.PENDING: len(run) - len(updates)})
    except _DATABASE_AWAY:
        raise
    except Exception:
        logger.warning("a run of %d %s events failed set-based; applying them one at a time", len(run), kind,
                       exc_info=True)
        return Counter(_process_one(batch.settings, event, batch) for event, _ in run)


def _with_notes(update: EventUpdate, notes: list[str]) -> EventUpdate:
    if not notes:
        return update
    return (*update[:4], "; ".join(([update[4]] if update[4] else []) + notes)[:2000])


def _follow(batch: _Batch, kind: str, updates: list[EventUpdate], reasons: list[str | None] | None = None,
            now: Any = None) -> list[EventUpdate]:
    """Each event's consequences for campaigns (``follow_campaigns``), its notes added to its row.

    Set-based, yet as if event after event: a contact's k-th event of the run is followed in
    round k, when it matters — a campaign that starts and ends on ``kind`` (the second event
    exits what the first enrolled), or a reason per event (the first exit's reason stays).
    Otherwise every contact is followed once, which is what following them again would leave."""
    reasons = reasons or [None] * len(updates)
    in_turn = len(set(reasons)) > 1 or batch.rules.exits_and_triggers(kind)
    rounds: list[dict[str | None, list[int]]] = []
    seen: Counter = Counter()
    for index, update in enumerate(updates):
        contact_id = update[3]
        if contact_id is None:
            continue
        number = seen[contact_id] if in_turn else 0
        seen[contact_id] += 1
        while len(rounds) <= number:
            rounds.append({})
        rounds[number].setdefault(reasons[index], []).append(index)
    out = list(updates)
    for groups in rounds:
        for reason, indexes in groups.items():
            contact_ids = sorted({c for c in (updates[i][3] for i in indexes) if c is not None})
            notes = batch.rules.follow(kind, contact_ids, reason, now)
            for i in indexes:
                out[i] = _with_notes(out[i], notes)
    return out


def _apply_clicks(batch: _Batch, run: Run, now: Any) -> list[EventUpdate]:
    """Each click attributed to its link's send, step and campaign: one query, one insert."""
    links = {link.token: link for link in TrackedLink.select(
        TrackedLink.id, TrackedLink.token, TrackedLink.contact, TrackedLink.send, TrackedLink.campaign, TrackedLink.step)
        .where(TrackedLink.token.in_(sorted({data["token"] for _, data in run})))}
    attributions: list[dict[str, Any]] = []
    clicked: list[tuple[str, dict[str, Any]]] = []  # for events out
    updates: list[EventUpdate] = []
    for event, data in run:
        link = links.get(data["token"])
        if link is None:
            updates.append((event.id, InboundStatus.PROCESSED, now, None, "unknown link"))
            continue
        attributions.append({"event": event.id, "kind": EventType.CLICK, "contact": link.contact_id, "send": link.send_id,
                             "campaign": link.campaign_id, "step": link.step_id, "created_at": now})
        clicked.append((f"e{event.id}", {"contact_id": link.contact_id, "send_id": link.send_id,
                                         "campaign_id": link.campaign_id, "step_id": link.step_id, "link_id": link.id}))
        updates.append((event.id, InboundStatus.PROCESSED, now, link.contact_id, None))
    if attributions:
        insert_many(Attribution, attributions).execute()
        batch.attributed.update(a["event"] for a in attributions)
        events_out.emit(OutEventType.LINK_CLICKED, clicked, now)
    return _follow(batch, EventType.CLICK, updates, now=now)


def _apply_deliveries(batch: _Batch, run: Run, now: Any) -> list[EventUpdate]:
    """Each receipt's status on its send (the last receipt of a send wins, as one at a time would),
    bounces and complaints suppressed on the send's channel: one query, two writes.

    A receipt naming no send we know is parked (no update: it stays pending) for RECEIPT_WAIT_S
    after it arrived: a provider may call back before the worker that sent the message has written
    its answer (the provider's id) — by a fraction of a second normally, by a database outage's
    length otherwise. After that it is kept as processed with a note."""
    sends = {send.provider_message_id: send for send in Send.select(
        Send.id, Send.provider_message_id, Send.contact, Send.channel)
        .where(Send.provider_message_id.in_(sorted({data["provider_message_id"] for _, data in run})),
               ~Send.idempotency_key.startswith(events_out.KEY_PREFIX))}  # an event send has no receipts
    statuses: dict[int, str] = {}
    suppressions: list[tuple[int, str, str]] = []
    updates: list[EventUpdate] = []
    for event, data in run:
        send = sends.get(data["provider_message_id"])
        if send is None:
            if now - event.received_at < dt.timedelta(seconds=RECEIPT_WAIT_S):
                continue  # parked: left pending, looked at again by the next processing pass
            updates.append((event.id, InboundStatus.PROCESSED, now, None,
                            f"no send with that provider_message_id (waited {RECEIPT_WAIT_S} s for one)"))
            continue
        statuses[send.id] = data["status"]
        if data["status"] in ("bounced", "complained") and send.contact_id is not None:
            suppressions.append((send.contact_id, send.channel, data["status"]))
        updates.append((event.id, InboundStatus.PROCESSED, now, send.contact_id, None))
    bulk_update("send", ("delivery_status",), list(statuses.items()))
    by_id = {send.id: send for send in sends.values()}
    for kind, meaning in ((OutEventType.SEND_DELIVERED, ("delivered",)),
                          (OutEventType.SEND_FAILED, ("failed", "bounced", "complained"))):
        events_out.emit(kind, [(f"s{send_id}:{status}", {
            "send_id": send_id, "channel": by_id[send_id].channel, "contact_id": by_id[send_id].contact_id,
            "delivery_status": status}) for send_id, status in statuses.items() if status in meaning], now)
    suppress_first(suppressions)
    return _follow(batch, EventType.DELIVERY, updates, now=now)


def _apply_upserts(batch: _Batch, run: Run, now: Any) -> list[EventUpdate]:
    """Contacts upserted as if one after another (``iter_rounds``: distinct contacts are one
    round), each round then following its campaigns and enrolling in the campaigns its events
    name, before the next round: per round one SELECT, one INSERT, one UPDATE, then one statement
    per campaign concerned."""
    campaigns: list[str | None] = []
    inputs: list[ContactInput] = []
    for _, data in run:
        fields = dict(data)
        campaigns.append(fields.pop("campaign", None))
        inputs.append(ContactInput(**fields))
    updates: list[EventUpdate] = []
    # An erased contact is not brought back by a webhook (engine/erasure.py): said on the event
    if refused := erased_among(inputs):
        logger.warning("%d contact.upsert event(s) name an erased contact: not re-created", len(refused))
        updates += [(run[i][0].id, InboundStatus.PROCESSED, now, None, ERASED_NOTE) for i in sorted(refused)]
        kept = [i for i in range(len(run)) if i not in refused]
        run, campaigns, inputs = [run[i] for i in kept], [campaigns[i] for i in kept], [inputs[i] for i in kept]
    first_kept = len(updates)
    for results in iter_rounds(inputs):
        first = len(updates) - first_kept
        ids = [r.contact_id for r in results]
        notes = batch.rules.follow(EventType.CONTACT_UPSERT, ids, now=now)
        by_campaign: dict[str, list[int]] = {}
        for offset, _ in enumerate(results):
            if campaigns[first + offset]:
                by_campaign.setdefault(str(campaigns[first + offset]), []).append(offset)
        failures: dict[int, str] = {}
        for slug, offsets in by_campaign.items():
            try:
                batch.rules.enrol([ids[o] for o in offsets], slug, now)
            except CampaignError as exc:
                failures.update((o, str(exc)) for o in offsets)
        for offset, result in enumerate(results):
            event_notes = notes + ([failures[offset]] if offset in failures else [])
            updates.append((run[first + offset][0].id, InboundStatus.PROCESSED, now, result.contact_id,
                            "; ".join(event_notes)[:2000] or None))
    return updates


def _contacts_of(batch: _Batch, run: Run) -> list[int | None]:
    """Each event's contact (``find_contact``'s rules), all found with one query."""
    keys = [contact_key(data, batch.settings.default_region) for _, data in run]
    found = find_contact_ids(keys)
    return [found.get(key) for key in keys]


def _apply_conversions(batch: _Batch, run: Run, now: Any) -> list[EventUpdate]:
    """Each conversion attributed to its contact's last touch: one query for the contacts, two for
    their last click and last message, one insert; then the campaigns that exit on it."""
    contact_ids = _contacts_of(batch, run)
    causes = _last_touches(sorted({c for c in contact_ids if c is not None}))
    attributions: list[dict[str, Any]] = []
    updates: list[EventUpdate] = []
    reasons: list[str | None] = []
    for (event, data), contact_id in zip(run, contact_ids, strict=True):
        reasons.append(data.get("name") or EventType.CONVERSION)
        if contact_id is None:
            updates.append((event.id, InboundStatus.PROCESSED, now, None, "no such contact"))
            continue
        cause = causes.get(contact_id, {})
        attributions.append({"event": event.id, "kind": EventType.CONVERSION, "contact": contact_id,
                             "send": cause.get("send"), "campaign": cause.get("campaign"), "step": cause.get("step"),
                             "name": data.get("name"), "value": data.get("value"), "created_at": now})
        updates.append((event.id, InboundStatus.PROCESSED, now, contact_id, None))
    if attributions:
        insert_many(Attribution, attributions).execute()
        batch.attributed.update(a["event"] for a in attributions)
        events_out.emit(OutEventType.CONVERSION, [(f"e{a['event']}", {
            "contact_id": a["contact"], "name": a["name"], "value": a["value"], "send_id": a["send"],
            "campaign_id": a["campaign"], "step_id": a["step"]}) for a in attributions], now)
    return _follow(batch, EventType.CONVERSION, updates, reasons, now)


def _apply_unsubscribes(batch: _Batch, run: Run, now: Any) -> list[EventUpdate]:
    """Each contact suppressed on the event's channel (one insert per channel and reason), then
    the campaigns that exit on an unsubscribe (``unsubscribe``'s rules)."""
    contact_ids = _contacts_of(batch, run)
    suppressions: list[tuple[int, str, str]] = []
    updates: list[EventUpdate] = []
    for (event, data), contact_id in zip(run, contact_ids, strict=True):
        if contact_id is None:
            updates.append((event.id, InboundStatus.PROCESSED, now, None, "no such contact"))
            continue
        suppressions.append((contact_id, data.get("channel") or "*", data.get("reason") or "unsubscribed"))
        updates.append((event.id, InboundStatus.PROCESSED, now, contact_id, None))
    suppress_first(suppressions)
    return _follow(batch, EventType.CONTACT_UNSUBSCRIBE, updates, ["unsubscribed"] * len(updates), now)


# The database failed, not the event (connection lost or refused, "database is locked"): the
# batch's transaction is gone, so nothing can be marked; the actor's retry (and the scheduler's
# next wake) takes the still-pending events again, instead of a traceback per event.
_DATABASE_AWAY = (peewee.OperationalError, peewee.InterfaceError)


def _is_text(field: str) -> Callable[[dict[str, Any]], bool]:
    return lambda data: isinstance(data.get(field), str)


def _upsert_shape(data: dict[str, Any]) -> bool:
    return data.get("campaign") is None or isinstance(data["campaign"], str)


# Event kinds applied set-based: how, and which data they take (anything else goes one at a time).
_SET_BASED: dict[str, tuple[Callable[[_Batch, Run, Any], list[EventUpdate]], Callable[[dict[str, Any]], bool]]] = {
    EventType.CLICK: (_apply_clicks, _is_text("token")),
    EventType.DELIVERY: (_apply_deliveries, _is_text("provider_message_id")),
    EventType.CONTACT_UPSERT: (_apply_upserts, _upsert_shape),
    EventType.CONVERSION: (_apply_conversions, lambda data: True),
    EventType.CONTACT_UNSUBSCRIBE: (_apply_unsubscribes, lambda data: True),
}


def _process_one(settings: Settings, event: InboundEvent, batch: _Batch | None = None) -> InboundStatus:
    batch = batch or _Batch(settings)
    notes: list[str] = []
    try:
        # A concurrent writer (an import, another source) may insert the same contact between our
        # read and our insert: the second try finds its row and updates it, as upsert_contacts does.
        for attempt in (1, 2):
            notes.clear()
            try:
                with database.atomic():
                    contact_id = None
                    for canonical in json.loads(event.payload)["events"]:
                        contact_id = _apply(batch, event, canonical, notes) or contact_id
                    (InboundEvent.update(status=InboundStatus.PROCESSED, processed_at=utcnow(), contact=contact_id,
                                         error="; ".join(notes)[:2000] or None)
                     .where(InboundEvent.id == event.id).execute())
                break
            except peewee.IntegrityError:
                if attempt == 2:
                    raise
        if contact_id is not None:
            batch.contact_ids.add(contact_id)
        return InboundStatus.PROCESSED
    except _Parked:
        return InboundStatus.PENDING  # its transaction rolled back: left as it was, for the next pass
    except _DATABASE_AWAY:
        raise
    except Exception as exc:  # one bad event must not stop the others
        logger.exception("inbound event %d from %s failed", event.id, event.source)
        (InboundEvent.update(status=InboundStatus.FAILED, processed_at=utcnow(), error=f"{type(exc).__name__}: {exc}"[:2000])
         .where(InboundEvent.id == event.id).execute())
        return InboundStatus.FAILED


class _Parked(Exception):
    """A lone event left pending for a later pass (a receipt waiting for its send's result)."""


def _apply(batch: _Batch, event: InboundEvent, canonical: dict[str, Any], notes: list[str]) -> int | None:
    kind, data = canonical["type"], dict(canonical["data"])
    if kind == EventType.CONTACT_RESUBSCRIBE:
        contact = find_contact(data, batch.settings.default_region)
        if contact is None:
            notes.append("no such contact")
            return None
        unsuppress([contact.id], data.get("channel") or "*")
        return contact.id
    if kind in _SET_BASED:  # the same rules as a run of them, for a run of one
        updates = _SET_BASED[kind][0](batch, [(event, data)], utcnow())
        if not updates:
            raise _Parked()
        ((_, _, _, contact_id, note),) = updates
        if note:
            notes.append(note)
        return contact_id
    raise ValueError(f"unknown event type {kind!r}")


def _last_touches(contact_ids: list[int]) -> dict[int, dict[str, Any]]:
    """What caused each contact's conversion: their last click, else the last message sent to them
    (the latest finished, the latest id among equals). Two queries whatever the number of contacts."""
    if not contact_ids:
        return {}
    last_click = (Attribution.select(peewee.fn.MAX(Attribution.id))
                  .where(Attribution.contact.in_(contact_ids), Attribution.kind == EventType.CLICK)
                  .group_by(Attribution.contact))
    causes = {contact_id: {"send": send_id, "campaign": campaign_id, "step": step_id}
              for contact_id, send_id, campaign_id, step_id in rows(
                  Attribution.select(Attribution.contact, Attribution.send, Attribution.campaign, Attribution.step)
                  .where(Attribution.id.in_(last_click)))}
    rest = [c for c in contact_ids if c not in causes]
    if not rest:
        return causes
    latest = peewee.fn.ROW_NUMBER().over(partition_by=[Send.contact],
                                         order_by=[Send.finished_at.desc(), Send.id.desc()])
    ranked = (Send.select(Send.contact.alias("contact_id"), Send.id.alias("send_id"), Send.campaign.alias("campaign_id"),
                          Send.step.alias("step_id"), latest.alias("n"))
              .where(Send.contact.in_(rest), Send.status == SendStatus.SENT).alias("ranked"))
    last_sends = (peewee.Select([ranked], [ranked.c.contact_id, ranked.c.send_id, ranked.c.campaign_id, ranked.c.step_id])
                  .where(ranked.c.n == 1).bind(database))
    for contact_id, send_id, campaign_id, step_id in rows(last_sends):
        causes[contact_id] = {"send": send_id, "campaign": campaign_id, "step": step_id}
    return causes


def pending_count() -> int:
    return int(InboundEvent.select().where(InboundEvent.status == InboundStatus.PENDING).count())

