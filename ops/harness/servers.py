"""Where the real RabbitMQ and PostgreSQL of this machine listen, for benchmarks, chaos and tests."""

from __future__ import annotations

import socket

RABBITMQ = ("127.0.0.1", 5672)
POSTGRES = ("127.0.0.1", 5432)


def reachable(address: tuple[str, int], timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return True
    except OSError:
        return False
