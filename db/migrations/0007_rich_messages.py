"""Messages people expect (issue 15): an email step may have an HTML part in a layout (its text
part then made from it, so a step's body may be empty), a call step voice options; a send keeps
its rich part (an email's HTML, a call's TwiML) beside its text."""
from peewee import *


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("campaign_step", "html", TextField(null=True)),
        migrator.add_column("campaign_step", "layout", CharField(max_length=64, null=True)),
        migrator.add_column("campaign_step", "layout_html", TextField(null=True)),
        migrator.add_column("campaign_step", "voice", TextField(default="{}")),
        migrator.drop_not_null("campaign_step", "body"),
        migrator.add_column("send", "markup", TextField(null=True)),
    )
