"""What a reader and an operator see over HTTP: one-click unsubscribe, tracked-link redirects, the
admin API's stats and a contact's decision log, behind the bearer token."""

from __future__ import annotations

import asyncio

from daemon.side_server import build_app
from db.models import Contact, Decision, InboundEvent, Send, Suppression, TrackedLink
from engine.links import make_unsubscribe_tokens
from tests.conftest import make_settings


def app_for(db_url: str, **env: str):  # type: ignore[no-untyped-def]
    return build_app(make_settings(DATABASE_URL=db_url, **env))


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
    assert (await client.get("/u/no-such-token")).status == 404
    assert (await client.post("/u/no-such-token")).status == 404


async def test_a_tracked_link_redirects_to_its_recorded_url(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com")
    TrackedLink.create(token="tok123", url="https://example.com/offer?x=1", contact=ada.id)
    client = await aiohttp_client(app_for(migrated_db))
    response = await client.get("/t/tok123?url=https://evil.example", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "https://example.com/offer?x=1"
    assert InboundEvent.get().type == "click"
    assert (await client.get("/t/unknown", allow_redirects=False)).status == 404


async def test_admin_api_needs_the_token(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    open_client = await aiohttp_client(app_for(migrated_db))  # no token configured: refuse all
    assert (await open_client.get("/api/v1/stats", headers={"Authorization": "Bearer x"})).status == 401
    client = await aiohttp_client(app_for(migrated_db, ADMIN_TOKEN="s3cret-admin-token"))
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
    client = await aiohttp_client(app_for(migrated_db, ADMIN_TOKEN="s3cret-admin-token"))
    auth = {"Authorization": "Bearer s3cret-admin-token"}
    body = await (await client.get("/api/v1/contacts/history?email=ADA@example.com", headers=auth)).json()
    assert body["decisions"][0]["outcome"] == "skipped"
    assert body["decisions"][0]["reason"].startswith("daily cap")
    assert (await client.get("/api/v1/contacts/history?email=nobody@example.com", headers=auth)).status == 404
    assert (await client.get("/api/v1/contacts/history", headers=auth)).status == 400
