"""The outreach engine: campaign limits, send deferrals and fallbacks, tracked links,
unsubscribe tokens and the decision log. Models frozen here, as in 0001."""
from peewee import *


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("campaign", "limits", TextField(default="{}")),
        migrator.add_column("send", "deferrals", IntegerField(default=0)),
    )

    class Send(Model):
        class Meta:
            database = db
            table_name = "send"

    migrator.migrate(
        migrator.add_column("send", "fallback_of_id",
                            ForeignKeyField(Send, field=Send._meta.primary_key, null=True, on_delete="SET NULL")),
    )

    class Contact(Model):
        class Meta:
            database = db
            table_name = "contact"

    class Campaign(Model):
        class Meta:
            database = db
            table_name = "campaign"

    class CampaignStep(Model):
        class Meta:
            database = db
            table_name = "campaign_step"

    class TrackedLink(Model):
        token = CharField(unique=True, max_length=64)
        url = TextField()
        contact = ForeignKeyField(Contact, null=True, on_delete="CASCADE")
        send = ForeignKeyField(Send, null=True, on_delete="SET NULL")
        campaign = ForeignKeyField(Campaign, null=True, on_delete="SET NULL")
        step = ForeignKeyField(CampaignStep, null=True, on_delete="SET NULL")
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "tracked_link"

    class UnsubscribeToken(Model):
        token = CharField(primary_key=True, max_length=64)
        contact = ForeignKeyField(Contact, on_delete="CASCADE")
        channel = CharField(max_length=16, default="*")
        send = ForeignKeyField(Send, null=True, on_delete="SET NULL")
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "unsubscribe_token"

    class Decision(Model):
        send = ForeignKeyField(Send, null=True, on_delete="CASCADE")
        contact = ForeignKeyField(Contact, null=True, on_delete="CASCADE")
        campaign = ForeignKeyField(Campaign, null=True, on_delete="SET NULL")
        step = ForeignKeyField(CampaignStep, null=True, on_delete="SET NULL")
        channel = CharField(null=True, max_length=16)
        outcome = CharField(max_length=24)
        reason = CharField(null=True)
        until = DateTimeField(null=True)
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "decision"
            indexes = ((("contact", "created_at"), False), (("created_at",), False))

    db.create_tables([TrackedLink, UnsubscribeToken, Decision])
