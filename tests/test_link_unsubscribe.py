"""An unsubscribe is one thing whichever way it arrives: the link in a message (``/u/<token>``,
RFC 8058 one-click or the page's button) and a ``contact.unsubscribe`` webhook suppress the contact
AND take it out of every campaign that exits on ``contact.unsubscribe`` — both engines."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from daemon.web.app import build_public_app
from db.models import Campaign, CampaignStep, Contact, Enrolment, Send, Suppression, utcnow
from engine.enrolments import enrol
from engine.links import make_unsubscribe_tokens
from engine.planner import plan_due_steps
from engine.processing import process_pending
from ops.harness.signing import settings_for, standard


def _campaigns() -> None:
    """``drip`` exits on an unsubscribe, ``news`` does not, ``goodbye`` starts with one."""
    for slug, exit_on, trigger in (("drip", ["contact.unsubscribe"], None), ("news", ["conversion"], None),
                                   ("goodbye", [], "contact.unsubscribe")):
        campaign = Campaign.create(slug=slug, name=slug, exit_on=exit_on, trigger_event=trigger)
        for position in (0, 1):
            CampaignStep.create(campaign=campaign.id, position=position, channel="email", subject="s", body="b",
                                delay_s=3600 * position)


def _state() -> dict[str, tuple[str, str | None]]:
    return {e.campaign.slug: (e.status, e.exit_reason) for e in Enrolment.select(Enrolment, Campaign).join(Campaign)}


@pytest.mark.parametrize("way", ["webhook", "one-click", "page button"])
async def test_an_unsubscribe_exits_the_campaigns_that_exit_on_it_whichever_way_it_came(  # type: ignore[no-untyped-def]
        aiohttp_client, migrated_db: str, way: str) -> None:
    # Given Ada enrolled in a campaign that exits on contact.unsubscribe and in one that does not
    settings = settings_for(migrated_db)
    _campaigns()
    ada = Contact.create(email="ada@example.com")
    enrol([ada.id], "drip")
    enrol([ada.id], "news")
    (token,) = await asyncio.to_thread(make_unsubscribe_tokens, [(ada.id, "email", None)])
    client = await aiohttp_client(build_public_app(settings))

    # When she unsubscribes from email
    if way == "webhook":
        event = {"type": "contact.unsubscribe", "data": {"email": "ada@example.com", "channel": "email"}}
        body, headers = standard(event, "msg_unsub")
        assert (await client.post("/webhooks/app", data=body, headers=headers)).status == 202
        assert await asyncio.to_thread(process_pending, settings) == {"processed": 1}
    else:
        if way == "page button":
            page = await client.get(f"/u/{token}")
            assert page.status == 200 and "<button type=submit>" in await page.text()
            assert _state()["drip"] == ("active", None)  # the page alone changes nothing
        form = {"List-Unsubscribe": "One-Click"} if way == "one-click" else {}
        done = await client.post(f"/u/{token}", data=form)
        assert done.status == 200 and "You are unsubscribed." in await done.text()

    # Then she is suppressed on email, out of drip, still in news, and in the campaign her
    # unsubscribe starts
    assert [(s.contact_id, s.channel, s.reason) for s in Suppression.select()] == [(ada.id, "email", "unsubscribed")]
    # (the event processor plans the first steps due at once: by webhook they wait for their send)
    still_in = "waiting" if way == "webhook" else "active"
    assert _state() == {"drip": ("exited", "unsubscribed"), "news": (still_in, None),
                        "goodbye": (still_in, None)}
    # and drip plans nothing more for her (the others' first steps are planned, then skipped by
    # the suppression when they are checked: not this test's business)
    await asyncio.to_thread(plan_due_steps, settings, utcnow() + dt.timedelta(days=2))
    assert not Send.select().join(Campaign, on=Send.campaign == Campaign.id).where(Campaign.slug == "drip").exists()
