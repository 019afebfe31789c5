"""What operators do through the admin API: a campaign can be paused (no new enrolment, no step
planned, until resumed) and archived (ended for good); a contact can be erased (GDPR), leaving a
tombstone of its keys' hashes so that a later webhook does not bring it back silently. Analytics
read a campaign's sends and enrolments on indexes that lead with the campaign."""
from peewee import *


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("campaign", "paused_at", DateTimeField(null=True)),
        migrator.add_column("campaign", "archived_at", DateTimeField(null=True)),
        migrator.add_column("contact", "erased_at", DateTimeField(null=True)),
        migrator.add_index("send", ("campaign_id", "step_id"), False),
        migrator.add_index("enrolment", ("campaign_id", "status"), False),
    )

    class ErasedKey(Model):
        key_hash = CharField(primary_key=True, max_length=64)
        erased_at = DateTimeField()

        class Meta:
            database = db
            table_name = "erased_key"

    db.create_tables([ErasedKey])
