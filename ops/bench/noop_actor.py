"""The anchor of the dispatch benchmark: bare Dramatiq, a no-op actor, on the same RabbitMQ.

    BENCH_AMQP_URL=amqp://... python ops/bench/noop_actor.py enqueue N   # prints seconds taken
    BENCH_AMQP_URL=amqp://... python ops/bench/noop_actor.py depth       # messages left
    BENCH_AMQP_URL=amqp://... dramatiq ops.bench.noop_actor --processes 2 --threads 8
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker

QUEUE = "bench.noop"
broker = RabbitmqBroker(url=os.environ["BENCH_AMQP_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(index: int) -> None:
    return None


def depth() -> int:
    connection = pika.BlockingConnection(pika.URLParameters(os.environ["BENCH_AMQP_URL"]))
    try:
        return int(connection.channel().queue_declare(QUEUE, passive=True).method.message_count)
    finally:
        connection.close()


if __name__ == "__main__":
    if sys.argv[1] == "enqueue":
        started = time.monotonic()
        for i in range(int(sys.argv[2])):
            noop.send(i)
        print(time.monotonic() - started)
        broker.close()
    else:
        print(depth())
