"""The operators' listener through a PostgreSQL outage (cut by a TCP proxy): the admin API answers
503 problem+json with Retry-After, the console a 503 page, and both answer again once it is back,
without a restart."""

from __future__ import annotations

import pytest

from daemon.web.app import build_admin_app
from db.database import close_database, init_database
from tests.support.outage import proxied_postgres
from tests.support.settings import make_settings

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.postgres
async def test_a_database_outage_is_a_503_then_the_api_and_console_answer_again(aiohttp_client, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    with proxied_postgres(pg_url) as (proxied, proxy):
        settings = make_settings(DATABASE_URL=proxied, ADMIN_TOKEN=TOKEN, DB_TIMEOUT_S="2")
        init_database(proxied)
        client = await aiohttp_client(build_admin_app(settings))
        assert (await client.get("/api/v1/contacts", headers=AUTH)).status == 200
        # When the database is cut off
        proxy.cut()
        async with client.get("/api/v1/contacts", headers=AUTH) as response:
            # Then the API says so, as a problem, and when to try again
            assert (response.status, response.content_type) == (503, "application/problem+json")
            assert response.headers["Retry-After"] == "5"
            assert "database is unavailable" in (await response.json())["detail"]
        async with client.get("/", headers=AUTH) as response:
            assert response.status == 503 and "The database is unavailable" in await response.text()
        # and once it is back, both answer again
        proxy.restore()
        async with client.get("/api/v1/contacts", headers=AUTH) as response:
            assert response.status == 200
        async with client.get("/", headers=AUTH) as response:
            assert response.status == 200
        close_database()
