"""Requests no well-behaved client sends (header or path bytes that are not UTF-8), written on the
socket by hand: aiohttp's client would refuse to build them."""

from __future__ import annotations

import asyncio
from typing import Any


async def raw_request(client: Any, head: bytes, body: bytes = b"") -> int:
    """Send ``head`` (request line and headers, each ending in CRLF) and ``body`` to an aiohttp test
    client's server; return the response's status."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()
