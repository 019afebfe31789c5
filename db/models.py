"""The models: the whole state of retentiond. Times are naive UTC datetimes.

The schema is created only by the numbered migrations in ``db/migrations``; a test proves the
migrated schema matches these models on both engines.
"""

from __future__ import annotations

import datetime as dt

import peewee

from db.database import database
from db.fields import JSONTextField
from ground.send_states import EnrolmentStatus, SendStatus
from ground.vocabulary import InboundStatus


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class Contact(BaseModel):
    """A person a team follows up with. Keys are normalised before they get here."""

    id = peewee.AutoField()
    external_id = peewee.CharField(max_length=255, null=True, unique=True)
    email = peewee.CharField(max_length=320, null=True, unique=True)
    phone = peewee.CharField(max_length=32, null=True, unique=True)  # E.164
    name = peewee.CharField(max_length=255, null=True)
    timezone = peewee.CharField(max_length=64, null=True)
    attributes = JSONTextField(default=dict)
    consent = JSONTextField(default=dict)  # channel -> bool
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)
    erased_at = peewee.DateTimeField(null=True)  # GDPR erasure: every personal field is gone (engine/erasure.py)


class Campaign(BaseModel):
    """A sequence of steps, started by a trigger event (or manual enrolment), left on exit events."""

    id = peewee.AutoField()
    slug = peewee.CharField(max_length=100, unique=True)
    name = peewee.CharField(max_length=255)
    trigger_event = peewee.CharField(max_length=100, null=True, index=True)  # None: manual
    exit_on = JSONTextField(default=list)
    # weekly_cap (sends per contact per 7 days), cooldown_s, quiet_hours {"start": "21:00", "end": "08:00"}
    limits = JSONTextField(default=dict)
    active = peewee.BooleanField(default=True)  # the file's own switch: false takes no new enrolments
    version = peewee.IntegerField(default=1)
    # The operator's switches (admin API), apart from the file so that re-applying it keeps them:
    # paused takes no enrolment and plans no step until resumed; archived is ended for good.
    paused_at = peewee.DateTimeField(null=True)
    archived_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)


class CampaignStep(BaseModel):
    id = peewee.AutoField()
    campaign = peewee.ForeignKeyField(Campaign, backref="steps", on_delete="CASCADE")
    campaign_id: int  # Peewee's id accessor for the foreign key, declared for type checkers
    position = peewee.IntegerField()
    channel = peewee.CharField(max_length=16)
    delay_s = peewee.IntegerField(default=0)
    subject = peewee.TextField(null=True)
    body = peewee.TextField(null=True)  # None: an email whose text part is made from its html
    fallback_channel = peewee.CharField(max_length=16, null=True)
    html = peewee.TextField(null=True)  # an email's HTML part (a template)
    layout = peewee.CharField(max_length=64, null=True)  # the layout's name, and its source as applied
    layout_html = peewee.TextField(null=True)
    voice = JSONTextField(default=dict)  # a call's options: play, optout_digit, optout_prompt

    class Meta:
        indexes = ((("campaign", "position"), True),)


class Enrolment(BaseModel):
    """A contact's progress through a campaign. ``next_due_at`` drives the scheduler's due query."""

    id = peewee.AutoField()
    contact = peewee.ForeignKeyField(Contact, backref="enrolments", on_delete="CASCADE")
    campaign = peewee.ForeignKeyField(Campaign, backref="enrolments", on_delete="CASCADE")
    status = peewee.CharField(max_length=16, default=EnrolmentStatus.ACTIVE)  # see ground/send_states.py
    next_position = peewee.IntegerField(default=0)
    next_due_at = peewee.DateTimeField(null=True)
    enrolled_at = peewee.DateTimeField(default=utcnow)
    finished_at = peewee.DateTimeField(null=True)
    exit_reason = peewee.CharField(max_length=100, null=True)

    class Meta:
        indexes = (
            (("contact", "campaign"), True),
            (("status", "next_due_at"), False),  # the scheduler's due-step query
            (("campaign", "status"), False),  # analytics: a campaign's enrolments
        )


class Send(BaseModel):
    """One planned message: the outbox row, then the send log. Written before it is enqueued."""

    id = peewee.AutoField()
    idempotency_key = peewee.CharField(max_length=64, unique=True)
    channel = peewee.CharField(max_length=16)
    # a SendStatus; every transition, and the module making it, in ground/send_states.py
    status = peewee.CharField(max_length=16, default=SendStatus.PLANNED)
    contact = peewee.ForeignKeyField(Contact, null=True, backref="sends", on_delete="CASCADE")
    contact_id: int | None
    enrolment = peewee.ForeignKeyField(Enrolment, null=True, backref="sends", on_delete="SET NULL")
    campaign = peewee.ForeignKeyField(Campaign, null=True, backref="sends", on_delete="SET NULL")
    step = peewee.ForeignKeyField(CampaignStep, null=True, backref="sends", on_delete="SET NULL")
    campaign_id: int | None
    step_id: int | None
    provider = peewee.CharField(max_length=32, null=True)
    recipient = peewee.CharField(max_length=320, null=True)
    subject = peewee.TextField(null=True)
    body = peewee.TextField(null=True)
    markup = peewee.TextField(null=True)  # the rich part: an email's HTML, a call's TwiML (ground/channels.py)
    attempts = peewee.IntegerField(default=0)
    deferrals = peewee.IntegerField(default=0)  # quiet hours, 429s: waits that spent no attempt
    fallback_of = peewee.ForeignKeyField("self", null=True, backref="fallbacks", on_delete="SET NULL")
    reason = peewee.CharField(max_length=255, null=True)  # why skipped / deferred / failed
    error = peewee.TextField(null=True)
    provider_message_id = peewee.CharField(max_length=128, null=True, index=True)
    delivery_status = peewee.CharField(max_length=16, null=True)  # from the provider's receipt: delivered, bounced...
    due_at = peewee.DateTimeField(default=utcnow)
    created_at = peewee.DateTimeField(default=utcnow)
    queued_at = peewee.DateTimeField(null=True)
    claimed_at = peewee.DateTimeField(null=True)
    # the worker process holding a 'sending' claim (WorkerHeartbeat.instance): the reconciler
    # re-offers the send only once that worker stopped beating
    claimed_by = peewee.CharField(max_length=100, null=True)
    finished_at = peewee.DateTimeField(null=True)

    class Meta:
        indexes = (
            (("status", "due_at"), False),  # planner and reconciler
            (("status", "channel", "due_at"), False),  # the relay's pacing: due and in flight per channel
            (("contact", "created_at"), False),  # caps and cooldowns, one query per batch
            (("finished_at",), False),  # retention cleanup
            (("campaign", "step"), False),  # analytics: a campaign's sends (engine/analytics.py)
        )


class InboundEvent(BaseModel):
    """A webhook event, committed before its 2xx; unique per source and the sender's event id."""

    id = peewee.AutoField()
    source = peewee.CharField(max_length=64)
    event_id = peewee.CharField(max_length=255)
    type = peewee.CharField(max_length=100, null=True)
    payload = peewee.TextField()
    status = peewee.CharField(max_length=16, default=InboundStatus.PENDING)  # an InboundStatus
    error = peewee.TextField(null=True)
    contact = peewee.ForeignKeyField(Contact, null=True, backref="events", on_delete="SET NULL")
    received_at = peewee.DateTimeField(default=utcnow)
    processed_at = peewee.DateTimeField(null=True)

    class Meta:
        indexes = (
            (("source", "event_id"), True),
            (("status", "id"), False),
            (("received_at",), False),
        )


class Suppression(BaseModel):
    """Do not send to this contact on this channel ('*' for all): unsubscribed, bounced, STOP..."""

    id = peewee.AutoField()
    contact = peewee.ForeignKeyField(Contact, backref="suppressions", on_delete="CASCADE")
    contact_id: int
    channel = peewee.CharField(max_length=16, default="*")
    reason = peewee.CharField(max_length=32)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("contact", "channel"), True),)


class Lease(BaseModel):
    """Who runs a periodic job right now, until when."""

    name = peewee.CharField(max_length=100, primary_key=True)
    holder = peewee.CharField(max_length=255, null=True)
    expires_at = peewee.DateTimeField(null=True)
    acquired_at = peewee.DateTimeField(null=True)
    renewed_at = peewee.DateTimeField(null=True)


class WorkerHeartbeat(BaseModel):
    """A worker process that may hold claims, and when it last said it was alive (engine/workers.py)."""

    instance = peewee.CharField(max_length=100, primary_key=True)  # host:pid:random, see engine/workers.py
    started_at = peewee.DateTimeField(default=utcnow)
    beat_at = peewee.DateTimeField(default=utcnow)
    # first beat of the current unbroken run of beats: it reached the database all along since then
    alive_since = peewee.DateTimeField(default=utcnow)


class JobRun(BaseModel):
    """One run of a periodic job: who, when, how it ended."""

    id = peewee.AutoField()
    job = peewee.CharField(max_length=100)
    instance = peewee.CharField(max_length=255)
    started_at = peewee.DateTimeField(default=utcnow)
    finished_at = peewee.DateTimeField(null=True)
    outcome = peewee.CharField(max_length=16, default="running")  # running | ok | error
    items = peewee.IntegerField(default=0)
    error = peewee.TextField(null=True)

    class Meta:
        indexes = ((("job", "started_at"), False), (("started_at",), False))


class OpsAlert(BaseModel):
    """A critical health finding, kept for the operator."""

    id = peewee.AutoField()
    component = peewee.CharField(max_length=64)
    level = peewee.CharField(max_length=16)
    message = peewee.TextField()
    created_at = peewee.DateTimeField(default=utcnow, index=True)
    resolved_at = peewee.DateTimeField(null=True)


class RateLimit(BaseModel):
    """The global rate limiter's state for one channel (see actors/rate_limit.py).

    ``tat`` is the theoretical arrival time of GCRA: the epoch second at which the next slot is
    free. Every process on every host reserves slots by moving it forward in one UPDATE.
    """

    channel = peewee.CharField(max_length=16, primary_key=True)
    tat = peewee.DoubleField(default=0.0)


class TrackedLink(BaseModel):
    """A link in a message, rewritten to ``/t/<token>``: the click is recorded, then redirected here."""

    id = peewee.AutoField()
    token = peewee.CharField(max_length=64, unique=True)
    url = peewee.TextField()
    contact = peewee.ForeignKeyField(Contact, null=True, backref="links", on_delete="CASCADE")
    contact_id: int | None
    send = peewee.ForeignKeyField(Send, null=True, backref="links", on_delete="SET NULL")
    send_id: int | None
    campaign = peewee.ForeignKeyField(Campaign, null=True, on_delete="SET NULL")
    campaign_id: int | None
    step = peewee.ForeignKeyField(CampaignStep, null=True, on_delete="SET NULL")
    step_id: int | None
    created_at = peewee.DateTimeField(default=utcnow)


class UnsubscribeToken(BaseModel):
    """Behind ``/u/<token>`` (List-Unsubscribe, RFC 8058 one-click): unsubscribes a contact from a channel."""

    token = peewee.CharField(max_length=64, primary_key=True)
    contact = peewee.ForeignKeyField(Contact, backref="unsubscribe_tokens", on_delete="CASCADE")
    contact_id: int
    channel = peewee.CharField(max_length=16, default="*")
    send = peewee.ForeignKeyField(Send, null=True, on_delete="SET NULL")
    created_at = peewee.DateTimeField(default=utcnow)


class Decision(BaseModel):
    """The decision log: what happened to a planned send and why (sent, deferred until T by quiet
    hours, skipped by the daily cap, suppressed by STOP, fell back to email...)."""

    id = peewee.AutoField()
    send = peewee.ForeignKeyField(Send, null=True, backref="decisions", on_delete="CASCADE")
    send_id: int | None
    contact = peewee.ForeignKeyField(Contact, null=True, backref="decisions", on_delete="CASCADE")
    campaign = peewee.ForeignKeyField(Campaign, null=True, on_delete="SET NULL")
    campaign_id: int | None
    step = peewee.ForeignKeyField(CampaignStep, null=True, on_delete="SET NULL")
    channel = peewee.CharField(max_length=16, null=True)
    outcome = peewee.CharField(max_length=24)
    reason = peewee.CharField(max_length=255, null=True)
    until = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("contact", "created_at"), False), (("created_at",), False))


class ErasedKey(BaseModel):
    """A tombstone: the SHA-256 of an erased contact's key (``external_id:...``, ``email:...``,
    ``phone:...``), so that a later webhook naming it is refused instead of re-creating the person."""

    key_hash = peewee.CharField(max_length=64, primary_key=True)
    erased_at = peewee.DateTimeField(default=utcnow)


class Attribution(BaseModel):
    """A click or a conversion, tied to the send, step and campaign that caused it (when known)."""

    id = peewee.AutoField()
    event = peewee.ForeignKeyField(InboundEvent, backref="attributions", on_delete="CASCADE")
    kind = peewee.CharField(max_length=16)  # click | conversion
    contact = peewee.ForeignKeyField(Contact, null=True, on_delete="SET NULL")
    send = peewee.ForeignKeyField(Send, null=True, on_delete="SET NULL")
    send_id: int | None
    campaign = peewee.ForeignKeyField(Campaign, null=True, on_delete="SET NULL")
    campaign_id: int | None
    step = peewee.ForeignKeyField(CampaignStep, null=True, on_delete="SET NULL")
    step_id: int | None
    name = peewee.CharField(max_length=100, null=True)
    value = peewee.DoubleField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("campaign", "kind"), False), (("created_at",), False))


ALL_MODELS: list[type[BaseModel]] = [
    Contact, Campaign, CampaignStep, Enrolment, Send, InboundEvent, Suppression,
    Lease, WorkerHeartbeat, JobRun, OpsAlert, RateLimit, TrackedLink, UnsubscribeToken, Decision, Attribution,
    ErasedKey,
]
