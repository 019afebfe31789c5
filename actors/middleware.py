"""Middleware the channel actors share."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.middleware import Middleware

from actors.registry import channel_of_actor
from daemon.metrics import SENDS
from db.database import db_session
from db.models import Send, utcnow

logger = logging.getLogger(__name__)


class DeadLetterSends(Middleware):
    """When a message is dead-lettered (retries exhausted), mark its unfinished sends failed.

    The message itself stays on the channel's dead-letter queue (``retentiond.<channel>.XQ``) for
    an operator; the database says what happened to each send.
    """

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        channel = channel_of_actor(message.actor_name)
        if channel is None or not message.args:
            return
        send_ids = list(message.args[0])
        with db_session():
            failed = (Send.update(status="failed", reason="retries exhausted", finished_at=utcnow())
                      .where(Send.id.in_(send_ids), Send.status.in_(("retrying", "queued")))
                      .execute())
        if failed:
            SENDS.labels(channel, "failed").inc(failed)
            logger.warning("dead-lettered %d %s send(s) after %s retries", failed, channel,
                           message.options.get("retries"))
