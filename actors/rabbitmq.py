"""Dramatiq's RabbitMQ broker, declaring its queues as quorum queues when asked.

Dramatiq declares classic queues, which live on one node: on a cluster, losing that node loses
the queue. A queue's type is an argument of its declaration, so this subclass extends the
declaration methods of ``dramatiq.brokers.rabbitmq.RabbitmqBroker`` (private ones: setup.cfg pins
Dramatiq's minor version, and tests/test_quorum_queues.py fails if their shape changes).

Quorum queues on RabbitMQ 3.x take no ``x-max-priority`` (refused below) and support the message
TTL the ``.XQ`` queue uses. ``x-delivery-limit`` dead-letters a message to ``.XQ`` after that many
failed deliveries (a worker killed in the middle of it, again and again) instead of looping.

An existing queue cannot change type: RabbitMQ answers a re-declaration with other arguments
``406 PRECONDITION_FAILED inequivalent arg``. ``QueueMismatch`` turns that into one line that tells
the operator what to do, and ``check_queues`` makes the daemon meet it at start.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import dramatiq
import pika.exceptions
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware

from ground.errors import ConfigError
from ground.settings import PREFIX, Settings

logger = logging.getLogger(__name__)

QUEUE_TYPES = ("classic", "quorum")
# Failed deliveries before a message is dead-lettered. Every redelivery counts on RabbitMQ 3.x,
# including those after a lost consumer connection (a node loss, a worker restart), so this is far
# above what a healthy message meets; Dramatiq's own retries publish a new message and do not count.
# It is an argument of the queue: changing it means re-creating the queues, like a type change.
DELIVERY_LIMIT = 20
SETTING = f"{PREFIX}QUEUE_TYPE"


def queue_type(settings: Settings) -> str:
    """The queue type in force: ``auto`` means quorum when BROKER_URL names several nodes.

    A single URL stays classic under ``auto``: one node replicates nothing, a quorum queue costs a
    Raft log write per message, and an installation upgraded in place keeps the classic queues it
    already has (re-declaring them as quorum would stop it at start). A single URL in front of a
    cluster (a load balancer) sets ``QUEUE_TYPE=quorum``.
    """
    wanted = settings.queue_type.lower()
    if wanted != "auto":
        return wanted
    return "quorum" if len(settings.broker_url.split(";")) > 1 else "classic"


def rabbitmq_broker(settings: Settings, middleware: list[Middleware], **kwargs: Any) -> QueueTypeRabbitmqBroker:
    """The broker for ``settings.broker_url`` with the queue type in force."""
    kind = queue_type(settings)
    setting = settings.queue_type.lower()
    urls = len(settings.broker_url.split(";"))
    why = f"{SETTING}={setting}" + (f" and {urls} broker URL{'s' if urls > 1 else ''}" if setting == "auto" else "")
    return QueueTypeRabbitmqBroker(url=settings.broker_url, middleware=middleware, queue_type=kind, why=why, **kwargs)


class QueueMismatch(ConfigError):
    """A queue exists on the broker with other arguments than this daemon declares."""

    def __init__(self, queue: str, wanted: str, reply_text: str, why_wanted: str) -> None:
        arg_match = re.search(r"arg '([^']+)'", reply_text)
        arg = arg_match[1] if arg_match else "arguments"
        if arg == "x-queue-type":
            existing = "quorum" if "current is the value 'quorum'" in reply_text else "classic"
            other = "classic" if wanted == "quorum" else "quorum"
            problem = (f"queue {queue!r} exists as a {existing} queue but {wanted} queues are asked for "
                       f"({why_wanted}); to switch, stop every retentiond, delete the retentiond.* queues "
                       f"(the outbox re-offers what they held) and start again; or set {SETTING}={other}")
        else:
            problem = (f"queue {queue!r} exists with another {arg} than this version declares "
                       f"({wanted} queues, {why_wanted}); stop every retentiond, delete the retentiond.* "
                       "queues (the outbox re-offers what they held) and start again")
        super().__init__(SETTING, problem)
        self.queue = queue


class QueueTypeRabbitmqBroker(RabbitmqBroker):
    """``RabbitmqBroker`` whose queues (``q``, ``q.DQ``, ``q.XQ``) are of ``queue_type``."""

    def __init__(self, *, queue_type: str = "classic", why: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue_type must be one of {QUEUE_TYPES}, not {queue_type!r}")
        if queue_type == "quorum" and self.max_priority:
            raise ValueError("quorum queues have no priorities on RabbitMQ 3.x (x-max-priority)")
        self.queue_type = queue_type
        self.why = why or f"{SETTING}={queue_type}"

    # The three overrides keep Dramatiq's signatures (self, queue_name) and return values.

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments: dict[str, Any] = super()._build_queue_arguments(queue_name)
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
            arguments["x-delivery-limit"] = DELIVERY_LIMIT
        return arguments

    def _declare_queue(self, queue_name: str) -> Any:
        return self._checked(queue_name, lambda: super(QueueTypeRabbitmqBroker, self)._declare_queue(queue_name))

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return self._checked(dq_name(queue_name),
                             lambda: super(QueueTypeRabbitmqBroker, self)._declare_dq_queue(queue_name))

    def _declare_xq_queue(self, queue_name: str) -> Any:
        if self.queue_type == "classic":
            return self._checked(xq_name(queue_name),
                                 lambda: super(QueueTypeRabbitmqBroker, self)._declare_xq_queue(queue_name))
        # Dramatiq's arguments plus the type; nothing consumes .XQ, so no delivery limit.
        arguments = {"x-message-ttl": DEAD_MESSAGE_TTL, "x-queue-type": "quorum"}
        return self._checked(xq_name(queue_name), lambda: self.channel.queue_declare(
            queue=xq_name(queue_name), durable=True, arguments=arguments))

    def _checked(self, name: str, declare: Callable[[], Any]) -> Any:
        try:
            return declare()
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 406 and "inequivalent arg" in (exc.reply_text or ""):
                del self.channel  # closed by the broker: the next caller opens a new one
                raise QueueMismatch(name, self.queue_type, exc.reply_text, self.why) from None
            raise


class _Hide406(logging.Filter):
    """pika logs the broker's 406 as a warning; QueueMismatch says it in one line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "(406)" not in record.getMessage()


def check_queues(broker: dramatiq.Broker) -> None:
    """Declare every queue of ``broker`` now, so a type mismatch stops the daemon at start.

    Raises ``QueueMismatch`` (a ConfigError: exit 2, one line). A broker that cannot be reached is
    no error here: the daemon starts without it, as before, and the queues are declared when it
    comes back.
    """
    if not isinstance(broker, QueueTypeRabbitmqBroker):
        return
    hide = _Hide406()
    pika_channel_log = logging.getLogger("pika.channel")
    pika_channel_log.addFilter(hide)
    try:
        for queue in sorted(broker.get_declared_queues()):
            broker.declare_queue(queue, ensure=True)
    except ConnectionClosed as exc:
        logger.warning("broker unreachable at start (%s): queues are declared when it is back", exc)
    finally:
        pika_channel_log.removeFilter(hide)
