"""The outbox relay paces each rate-limited channel: its due planned sends, oldest first, are read
per channel (and its in-flight sends counted per channel) on this index."""
from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_index("send", ("status", "channel", "due_at"), False))
