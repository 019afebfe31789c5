"""Claims carry the worker that holds them, and each worker process keeps a heartbeat row, so the
reconciler tells a dead worker from a slow database. Models frozen here, as in 0001."""
from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_column("send", "claimed_by", CharField(max_length=100, null=True)))

    class WorkerHeartbeat(Model):
        instance = CharField(primary_key=True, max_length=100)
        started_at = DateTimeField()
        beat_at = DateTimeField()
        alive_since = DateTimeField()

        class Meta:
            database = db
            table_name = "worker_heartbeat"

    db.create_tables([WorkerHeartbeat])
