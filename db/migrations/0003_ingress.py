"""Webhook ingress: delivery receipts on sends, and the attribution of clicks and conversions.
Models frozen here, as in 0001."""
from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_column("send", "delivery_status", CharField(max_length=16, null=True)))

    def stub(name):
        class Meta:
            database = db
            table_name = name
        return type(name.title().replace("_", ""), (Model,), {"Meta": Meta})

    InboundEvent, Contact, Send = stub("inbound_event"), stub("contact"), stub("send")
    Campaign, CampaignStep = stub("campaign"), stub("campaign_step")

    class Attribution(Model):
        event = ForeignKeyField(InboundEvent, on_delete="CASCADE")
        kind = CharField(max_length=16)
        contact = ForeignKeyField(Contact, null=True, on_delete="SET NULL")
        send = ForeignKeyField(Send, null=True, on_delete="SET NULL")
        campaign = ForeignKeyField(Campaign, null=True, on_delete="SET NULL")
        step = ForeignKeyField(CampaignStep, null=True, on_delete="SET NULL")
        name = CharField(max_length=100, null=True)
        value = DoubleField(null=True)
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "attribution"
            indexes = ((("campaign", "kind"), False), (("created_at",), False))

    db.create_tables([Attribution])
