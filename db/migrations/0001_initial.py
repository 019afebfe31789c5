"""The initial schema: contacts, campaigns, enrolments, the send outbox/log, inbound events,
suppressions, leases, job runs, ops alerts and the rate limiter's state.

Models are frozen here on purpose (peewee's migration runner contract): later changes to
db/models.py need a new numbered migration, never an edit of this one. JSON columns are TEXT.
"""
from peewee import *


def up(migrator, db):
    class Campaign(Model):
        slug = CharField(unique=True, max_length=100)
        name = CharField()
        trigger_event = CharField(index=True, null=True, max_length=100)
        exit_on = TextField()
        active = BooleanField(default=True)
        version = IntegerField(default=1)
        created_at = DateTimeField()
        updated_at = DateTimeField()
        class Meta:
            database = db
            table_name = 'campaign'
    db.create_tables([Campaign])

    class CampaignStep(Model):
        campaign = ForeignKeyField(Campaign, on_delete='CASCADE')
        position = IntegerField()
        channel = CharField(max_length=16)
        delay_s = IntegerField(default=0)
        subject = TextField(null=True)
        body = TextField()
        fallback_channel = CharField(null=True, max_length=16)
        class Meta:
            database = db
            table_name = 'campaign_step'
            indexes = ((('campaign', 'position'), True),)
    db.create_tables([CampaignStep])

    class Contact(Model):
        external_id = CharField(unique=True, null=True)
        email = CharField(unique=True, null=True, max_length=320)
        phone = CharField(unique=True, null=True, max_length=32)
        name = CharField(null=True)
        timezone = CharField(null=True, max_length=64)
        attributes = TextField()
        consent = TextField()
        created_at = DateTimeField()
        updated_at = DateTimeField()
        class Meta:
            database = db
            table_name = 'contact'
    db.create_tables([Contact])

    class Enrolment(Model):
        contact = ForeignKeyField(Contact, on_delete='CASCADE')
        campaign = ForeignKeyField(Campaign, on_delete='CASCADE')
        status = CharField(max_length=16, default='active')
        next_position = IntegerField(default=0)
        next_due_at = DateTimeField(null=True)
        enrolled_at = DateTimeField()
        finished_at = DateTimeField(null=True)
        exit_reason = CharField(null=True, max_length=100)
        class Meta:
            database = db
            table_name = 'enrolment'
            indexes = ((('contact', 'campaign'), True), (('status', 'next_due_at'), False))
    db.create_tables([Enrolment])

    class InboundEvent(Model):
        source = CharField(max_length=64)
        event_id = CharField()
        type = CharField(null=True, max_length=100)
        payload = TextField()
        status = CharField(max_length=16, default='pending')
        error = TextField(null=True)
        contact = ForeignKeyField(Contact, null=True, on_delete='SET NULL')
        received_at = DateTimeField()
        processed_at = DateTimeField(null=True)
        class Meta:
            database = db
            table_name = 'inbound_event'
            indexes = ((('source', 'event_id'), True), (('status', 'id'), False), (('received_at',), False))
    db.create_tables([InboundEvent])

    class JobRun(Model):
        job = CharField(max_length=100)
        instance = CharField()
        started_at = DateTimeField()
        finished_at = DateTimeField(null=True)
        outcome = CharField(max_length=16, default='running')
        items = IntegerField(default=0)
        error = TextField(null=True)
        class Meta:
            database = db
            table_name = 'job_run'
            indexes = ((('job', 'started_at'), False), (('started_at',), False))
    db.create_tables([JobRun])

    class Lease(Model):
        name = CharField(primary_key=True, max_length=100)
        holder = CharField(null=True)
        expires_at = DateTimeField(null=True)
        acquired_at = DateTimeField(null=True)
        renewed_at = DateTimeField(null=True)
        class Meta:
            database = db
            table_name = 'lease'
    db.create_tables([Lease])

    class OpsAlert(Model):
        component = CharField(max_length=64)
        level = CharField(max_length=16)
        message = TextField()
        created_at = DateTimeField(index=True)
        resolved_at = DateTimeField(null=True)
        class Meta:
            database = db
            table_name = 'ops_alert'
    db.create_tables([OpsAlert])

    class RateLimit(Model):
        channel = CharField(primary_key=True, max_length=16)
        tat = DoubleField(default=0.0)
        class Meta:
            database = db
            table_name = 'rate_limit'
    db.create_tables([RateLimit])

    class Send(Model):
        idempotency_key = CharField(unique=True, max_length=64)
        channel = CharField(max_length=16)
        status = CharField(max_length=16, default='planned')
        contact = ForeignKeyField(Contact, null=True, on_delete='CASCADE')
        enrolment = ForeignKeyField(Enrolment, null=True, on_delete='SET NULL')
        campaign = ForeignKeyField(Campaign, null=True, on_delete='SET NULL')
        step = ForeignKeyField(CampaignStep, null=True, on_delete='SET NULL')
        provider = CharField(null=True, max_length=32)
        recipient = CharField(null=True, max_length=320)
        subject = TextField(null=True)
        body = TextField(null=True)
        attempts = IntegerField(default=0)
        reason = CharField(null=True)
        error = TextField(null=True)
        provider_message_id = CharField(index=True, null=True, max_length=128)
        due_at = DateTimeField()
        created_at = DateTimeField()
        queued_at = DateTimeField(null=True)
        claimed_at = DateTimeField(null=True)
        finished_at = DateTimeField(null=True)
        class Meta:
            database = db
            table_name = 'send'
            indexes = ((('status', 'due_at'), False), (('contact', 'created_at'), False), (('finished_at',), False))
    db.create_tables([Send])

    class Suppression(Model):
        contact = ForeignKeyField(Contact, on_delete='CASCADE')
        channel = CharField(max_length=16, default='*')
        reason = CharField(max_length=32)
        created_at = DateTimeField()
        class Meta:
            database = db
            table_name = 'suppression'
            indexes = ((('contact', 'channel'), True),)
    db.create_tables([Suppression])


def down(migrator, db):
    migrator.migrate(migrator.drop_table('suppression'))
    migrator.migrate(migrator.drop_table('send'))
    migrator.migrate(migrator.drop_table('rate_limit'))
    migrator.migrate(migrator.drop_table('ops_alert'))
    migrator.migrate(migrator.drop_table('lease'))
    migrator.migrate(migrator.drop_table('job_run'))
    migrator.migrate(migrator.drop_table('inbound_event'))
    migrator.migrate(migrator.drop_table('enrolment'))
    migrator.migrate(migrator.drop_table('contact'))
    migrator.migrate(migrator.drop_table('campaign_step'))
    migrator.migrate(migrator.drop_table('campaign'))

