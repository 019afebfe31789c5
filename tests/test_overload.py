"""Load shedding while the database cannot take writes (both engines).

The database is locked from another connection — SQLite ``BEGIN EXCLUSIVE`` (readers go on, in WAL
mode), PostgreSQL ``LOCK TABLE inbound_event IN EXCLUSIVE MODE`` (SELECTs go on, INSERTs wait) —
and many webhooks arrive. Each one must be answered while the lock lasts: 503 with ``Retry-After``
and nothing accepted, never a 202 after a long wait, never committed later; the ingest queue stays
within its bound; after the lock is released new events get 202 again. A tracked-link reader is
redirected all the same, and the click that could not be recorded is counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator

import psycopg2
import pytest
from prometheus_client import REGISTRY

from daemon.web.app import build_public_app
from daemon.web.webhooks import COMMITTER
from db.database import database, sqlite_path
from db.models import Contact, InboundEvent, Suppression, TrackedLink
from engine.links import make_unsubscribe_tokens
from tests.support.settings import make_settings

TOKEN = "overload-test-token-0123456789abcdef"
LINK = "tok-locked-0123456789abc"  # a tracked-link token has the renderer's shape: 24 base64url characters
QUEUE_MAX = 40
REQUESTS = 200
# A guard against hanging, far above the configured deadlines; not a measure of speed.
GUARD_S = 60.0


@contextlib.contextmanager
def database_locked(db_url: str, table: str = "inbound_event") -> Iterator[None]:
    """Another connection holds the write lock until the block ends (on PostgreSQL, of ``table``)."""
    if db_url.startswith("sqlite"):
        locker = sqlite3.connect(sqlite_path(db_url), isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    else:
        connection = psycopg2.connect(db_url)
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            connection.rollback()
            connection.close()


def settings_for(db_url: str, **extra: str):  # type: ignore[no-untyped-def]
    env = dict(DATABASE_URL=db_url, SOURCE_ZAP_SCHEME="token", SOURCE_ZAP_SECRET=TOKEN,
               INGEST_QUEUE_MAX=str(QUEUE_MAX), INGEST_MAX_WAIT_S="0.5", CLICK_MAX_WAIT_S="0.3")
    return make_settings(**{**env, **extra})


async def post_event(client, event_id: str):  # type: ignore[no-untyped-def]
    body = json.dumps({"id": event_id, "type": "conversion", "data": {"email": f"{event_id}@example.com"}})
    response = await client.post("/webhooks/zap", data=body,
                                 headers={"X-Webhook-Token": TOKEN, "Content-Type": "application/json"})
    await response.read()
    return response


async def wait_until_idle(client) -> None:  # type: ignore[no-untyped-def]
    committer = client.app[COMMITTER]
    async with asyncio.timeout(GUARD_S):
        while not committer.idle:
            await asyncio.sleep(0.02)


def stored_event_ids(source: str) -> set[str]:
    return {e.event_id for e in InboundEvent.select().where(InboundEvent.source == source)}


def dropped_clicks() -> float:
    return REGISTRY.get_sample_value("retentiond_webhook_events_total",
                                     {"source": "tracked-link", "outcome": "dropped"}) or 0.0


async def until_dropped_clicks(expected: float) -> None:
    """A click whose batch had started when its reader was redirected is counted once the batch's
    outcome is known: wait for that (a guard against hanging only)."""
    async with asyncio.timeout(GUARD_S):
        while dropped_clicks() < expected:
            await asyncio.sleep(0.02)
    assert dropped_clicks() == expected


async def test_webhooks_get_503_with_retry_after_and_nothing_stored_while_the_database_is_locked(
        aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_public_app(settings_for(migrated_db)))
    ids = [f"locked-{i}" for i in range(REQUESTS)]
    # Given the database locked by another connection
    with database_locked(migrated_db):
        # When many webhooks arrive at once
        tasks = [asyncio.create_task(post_event(client, event_id)) for event_id in ids]
        done, waiting = await asyncio.wait(tasks, timeout=GUARD_S)
        # Then every one is answered while the lock lasts: 503 with Retry-After, nothing accepted
        assert not waiting, f"{len(waiting)} webhook(s) still waiting while the database is locked"
        responses = [task.result() for task in tasks]
    assert [r.status for r in responses] == [503] * REQUESTS
    assert all(int(r.headers["Retry-After"]) >= 1 for r in responses)
    # and the queue never held more than its bound (memory bounded)
    assert client.app[COMMITTER].peak_queued <= QUEUE_MAX
    # When the lock is released, new events are accepted again
    accepted = []
    async with asyncio.timeout(GUARD_S):
        while True:
            response = await post_event(client, f"after-{len(accepted)}")
            accepted.append(f"after-{len(accepted)}")
            if response.status == 202:
                break
            assert response.status == 503
            await asyncio.sleep(0.05)
    # Then once everything queued has been settled, none of the refused events was written later
    await wait_until_idle(client)
    stored = stored_event_ids("zap")
    assert stored & set(ids) == set()
    assert accepted[-1] in stored


async def test_a_click_still_redirects_while_the_database_is_locked(
        aiohttp_client, migrated_db: str, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com")
    TrackedLink.create(token=LINK, url="https://example.com/offer", contact=ada.id)
    client = await aiohttp_client(build_public_app(settings_for(migrated_db)))
    before = dropped_clicks()
    # Given the database locked by another connection
    with database_locked(migrated_db):
        # When a reader clicks a tracked link
        response = await asyncio.wait_for(client.get(f"/t/{LINK}", allow_redirects=False), GUARD_S)
        # Then the reader is redirected all the same, and the click is counted as dropped (once its
        # batch gave up on the lock)
        assert response.status == 302 and response.headers["Location"] == "https://example.com/offer"
        await until_dropped_clicks(before + 1)
        # and more readers meanwhile are redirected too, with one log line for all of them
        for _ in range(2):
            response = await asyncio.wait_for(client.get(f"/t/{LINK}", allow_redirects=False), GUARD_S)
            assert response.status == 302
        await until_dropped_clicks(before + 3)
        assert len([r for r in caplog.records if "click records" in r.getMessage()]) == 1
        # a lock that outlasts the commit's timeout is load, not a bug: no traceback in the log
        assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    # and, once the database is back, that click was not written behind the reader's back
    await wait_until_idle(client)
    assert stored_event_ids("tracked-link") == set()
    # When the reader clicks again, the click is recorded as usual
    response = await client.get(f"/t/{LINK}", allow_redirects=False)
    assert response.status == 302
    assert InboundEvent.select().where(InboundEvent.source == "tracked-link").count() == 1
    assert dropped_clicks() == before + 3
    # and the log says the click records work again
    assert any("click records" in r.getMessage() and "recovered" in r.getMessage() for r in caplog.records)


# Far longer than a reader may wait, and than REDIRECT_GUARD_S: a reader held for the commit would show.
LONG_INGEST_WAIT_S = "90"
REDIRECT_GUARD_S = 20.0


async def test_a_click_redirects_within_its_own_deadline_while_its_batch_waits_for_the_lock(
        aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com")
    TrackedLink.create(token=LINK, url="https://example.com/offer", contact=ada.id)
    # Given webhooks allowed to wait long for the database, readers only CLICK_MAX_WAIT_S (0.3 s)
    client = await aiohttp_client(build_public_app(settings_for(migrated_db, INGEST_MAX_WAIT_S=LONG_INGEST_WAIT_S)))
    before = dropped_clicks()
    # and the database locked by another connection
    with database_locked(migrated_db):
        # When a reader clicks, and the click's batch starts at once and waits for the write lock
        response = await asyncio.wait_for(client.get(f"/t/{LINK}", allow_redirects=False), REDIRECT_GUARD_S)
        # Then the reader is redirected while the database is still locked, not after the commit
        assert response.status == 302 and response.headers["Location"] == "https://example.com/offer"
        # and the click is not counted as dropped: its batch may still write it
        assert dropped_clicks() == before
    # When the lock is released, that batch writes the click: recorded, and never counted as dropped
    await wait_until_idle(client)
    assert len(stored_event_ids("tracked-link")) == 1
    assert dropped_clicks() == before


UNSUBSCRIBES = 8  # more than the pool's 3 connections and the default thread pool's spare threads


async def test_one_click_unsubscribes_are_shed_while_suppressions_are_locked_and_clicks_go_on(
        aiohttp_client, migrated_db: str, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    ada = Contact.create(email="ada@example.com")
    TrackedLink.create(token=LINK, url="https://example.com/offer", contact=ada.id)
    (token,) = make_unsubscribe_tokens([(ada.id, "email", None)])
    database.close()  # the test's own connection back to the pool: the daemon has all of it
    client = await aiohttp_client(build_public_app(settings_for(migrated_db)))
    # Given the suppression table locked by another connection (SQLite: the whole database)
    with database_locked(migrated_db, "suppression"):
        # When many readers press "unsubscribe" at once
        tasks = [asyncio.create_task(client.post(f"/u/{token}")) for _ in range(UNSUBSCRIBES)]
        done, waiting = await asyncio.wait(tasks, timeout=REDIRECT_GUARD_S)
        # Then each is told to come back shortly (503 + Retry-After) while the lock lasts, no 500
        assert not waiting, f"{len(waiting)} unsubscribe(s) still waiting while the table is locked"
        responses = [task.result() for task in tasks]
        assert [r.status for r in responses] == [503] * UNSUBSCRIBES
        assert all(int(r.headers["Retry-After"]) >= 1 for r in responses)
        # and meanwhile a reader's click is redirected and the daemon says it is ready
        click = await asyncio.wait_for(client.get(f"/t/{LINK}", allow_redirects=False), REDIRECT_GUARD_S)
        assert click.status == 302
        ready = await asyncio.wait_for(client.get("/health/ready"), REDIRECT_GUARD_S)
        assert ready.status == 200, await ready.text()
    assert Suppression.select().count() == 0
    # When the lock is gone, the reader's retry unsubscribes
    response = await client.post(f"/u/{token}")
    assert response.status == 200
    assert [(s.contact_id, s.channel) for s in Suppression.select()] == [(ada.id, "email")]
    # and nothing of this logged a traceback
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
