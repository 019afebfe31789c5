"""The machine's RabbitMQ as the tests address it: a vhost's URL and its queue depths."""

from __future__ import annotations

from tests.support.services import RABBITMQ
from tests.support.settings import make_settings


def amqp_url_for(vhost: str, host_port: str = f"{RABBITMQ[0]}:{RABBITMQ[1]}") -> str:
    """The guest account's URL for ``vhost`` (through ``host_port``, a proxy's address maybe)."""
    return f"amqp://guest:guest@{host_port}/{vhost}"


def rabbitmq_queue_depths(vhost: str) -> dict[str, int]:
    """Ready messages per retentiond queue (including .DQ and .XQ), as /health/details reads them."""
    from daemon.web.health_details import queue_depths

    return queue_depths(make_settings(BROKER_URL=amqp_url_for(vhost)))
