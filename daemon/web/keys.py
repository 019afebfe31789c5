"""The side server's application keys, each once: the app factory (``app.py``) stores these, the
route modules read them."""

from __future__ import annotations

from aiohttp import web

from daemon.web.group_commit import GroupCommitter
from daemon.web.health_details import CachedDetails
from daemon.web.reader_writes import ReaderWrites
from ground.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
COMMITTER = web.AppKey("committer", GroupCommitter)  # webhooks and clicks
READER_WRITES = web.AppKey("reader_writes", ReaderWrites)  # one-click unsubscribes
HEALTH_DETAILS = web.AppKey("health_details", CachedDetails)  # the operators' listener
