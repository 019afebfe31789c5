"""What a reader and an operator see over HTTP: one-click unsubscribe, tracked-link redirects, the
admin API's stats and a contact's decision log, behind the bearer token."""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest

from daemon.web.app import build_admin_app, build_public_app
from db.models import Contact, Decision, InboundEvent, Send, Suppression, TrackedLink
from engine.links import make_unsubscribe_tokens
from engine.templates import TOKEN_BYTES
from tests.support.raw_http import raw_request
from tests.support.settings import make_settings

ADMIN_TOKEN = "s3cret-admin-token"


def app_for(db_url: str, **env: str):  # type: ignore[no-untyped-def]
    """The public listener's application."""
    return build_public_app(make_settings(DATABASE_URL=db_url, **env))


def admin_app_for(db_url: str, **env: str):  # type: ignore[no-untyped-def]
    """The operators' listener's application."""
    return build_admin_app(make_settings(DATABASE_URL=db_url, **env))


async def test_get_shows_a_page_and_post_unsubscribes(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com")
    (token,) = await asyncio.to_thread(make_unsubscribe_tokens, [(ada.id, "email", None)])
    client = await aiohttp_client(app_for(migrated_db))
    page = await client.get(f"/u/{token}")
    assert page.status == 200 and "<form method=post" in await page.text()
    assert Suppression.select().count() == 0  # a GET (a mail scanner's prefetch) changes nothing
    # RFC 8058 one-click: a POST with List-Unsubscribe=One-Click
    done = await client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert done.status == 200
    again = await client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert again.status == 200
    assert [(s.contact_id, s.channel, s.reason) for s in Suppression.select()] == [(ada.id, "email", "unsubscribed")]
    unknown = secrets.token_urlsafe(TOKEN_BYTES)  # well-formed, and in no row
    for path in ("/u/no-such-token", f"/u/{unknown}"):
        assert (await client.get(path)).status == 404
        assert (await client.post(path)).status == 404


async def test_a_tracked_link_redirects_to_its_recorded_url(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com")
    token = secrets.token_urlsafe(TOKEN_BYTES)  # the shape the renderer gives a link
    TrackedLink.create(token=token, url="https://example.com/offer?x=1", contact=ada.id)
    client = await aiohttp_client(app_for(migrated_db))
    response = await client.get(f"/t/{token}?url=https://evil.example", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "https://example.com/offer?x=1"
    assert InboundEvent.get().type == "click"
    assert (await client.get("/t/unknown", allow_redirects=False)).status == 404


async def test_admin_api_needs_the_token(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    open_client = await aiohttp_client(admin_app_for(migrated_db))  # no token configured: refuse all
    assert (await open_client.get("/api/v1/stats", headers={"Authorization": "Bearer x"})).status == 401
    client = await aiohttp_client(admin_app_for(migrated_db, ADMIN_TOKEN="s3cret-admin-token"))
    assert (await client.get("/api/v1/stats")).status == 401
    assert (await client.get("/api/v1/stats", headers={"Authorization": "Bearer wrong"})).status == 401
    ok = await client.get("/api/v1/stats", headers={"Authorization": "Bearer s3cret-admin-token"})
    assert ok.status == 200 and "sends" in await ok.json()
    spec = await (await client.get("/api/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and "/api/v1/contacts/history" in spec["paths"]


async def test_a_contacts_history_says_why(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com", phone="+12015550100")
    send = Send.create(idempotency_key="k", channel="sms", contact=ada.id, status="skipped", reason="daily cap")
    Decision.create(send=send.id, contact=ada.id, channel="sms", outcome="skipped",
                    reason="daily cap: 3 sends in the last 24 h (cap 3)")
    client = await aiohttp_client(admin_app_for(migrated_db, ADMIN_TOKEN="s3cret-admin-token"))
    auth = {"Authorization": "Bearer s3cret-admin-token"}
    body = await (await client.get("/api/v1/contacts/history?email=ADA@example.com", headers=auth)).json()
    assert body["decisions"][0]["outcome"] == "skipped"
    assert body["decisions"][0]["reason"].startswith("daily cap")
    assert (await client.get("/api/v1/contacts/history?email=nobody@example.com", headers=auth)).status == 404
    assert (await client.get("/api/v1/contacts/history", headers=auth)).status == 400


@pytest.mark.parametrize("authorization", [b"Bearer \xff\xfe", b"Bearer \xc3\xa9", b"\xff"])
async def test_an_authorization_header_that_is_not_ascii_is_a_401(aiohttp_client, migrated_db: str,  # type: ignore[no-untyped-def]
                                                                  authorization: bytes) -> None:
    client = await aiohttp_client(admin_app_for(migrated_db, ADMIN_TOKEN=ADMIN_TOKEN))
    status = await raw_request(client, b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization
                               + b"\r\n")
    assert status == 401


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/t/%00", 404),
    ("GET", "/u/%00", 404),
    ("POST", "/u/%00", 404),
    ("GET", "/t/abc%00def", 404),
    ("GET", "/t/" + "A" * 200, 404),  # longer than any token (and than the column)
    ("POST", "/u/%C3%A9t%C3%A9", 404),
    ("GET", "/api/v1/contacts/history?external_id=%00", 400),
    ("GET", "/api/v1/contacts/history?external_id=u%00&email=ada@example.com", 400),
])
async def test_a_nul_or_a_malformed_token_is_refused_before_the_database(  # type: ignore[no-untyped-def]
        aiohttp_client, migrated_db: str, caplog: pytest.LogCaptureFixture, method: str, path: str,
        status: int) -> None:
    # Given a reader link or an admin query that no token or contact can have (PostgreSQL refuses NUL)
    build = admin_app_for if path.startswith("/api/") else app_for
    client = await aiohttp_client(build(migrated_db, ADMIN_TOKEN=ADMIN_TOKEN))
    # When it is requested, Then it is an unknown link (or a bad query), not a 500 with a traceback
    response = await client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                    allow_redirects=False)
    assert response.status == status, await response.text()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert InboundEvent.select().count() == 0 and Suppression.select().count() == 0
