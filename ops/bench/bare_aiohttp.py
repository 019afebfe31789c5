"""The ingress benchmark's anchor: a bare aiohttp JSON POST endpoint, nothing durable, one process."""

from __future__ import annotations

import json
import sys

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    document = json.loads(await request.read())
    return web.json_response({"status": "accepted", "type": document.get("type")}, status=202)


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/webhooks/{source}", accept)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
