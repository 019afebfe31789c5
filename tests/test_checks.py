"""Send-time checks, one by one, on both engines: each gives the verdict a user expects, from a
constant number of queries per batch."""

from __future__ import annotations

import datetime as dt

import pytest

from db.models import Campaign, CampaignStep, Contact, Send, Suppression
from engine.checks import Candidate, SendChecks
from engine.quiet_hours import next_allowed, zone
from tests.support.settings import make_settings

NOW = dt.datetime(2026, 6, 15, 12, 0)  # a Monday, noon UTC


def contact(**fields: object) -> Contact:
    values = {"phone": "+12015550100", "email": "ada@example.com", "timezone": "UTC", **fields}
    return Contact.create(**values)


def sent(c: Contact, minutes_ago: float, campaign: Campaign | None = None, channel: str = "sms") -> None:
    at = NOW - dt.timedelta(minutes=minutes_ago)
    Send.create(idempotency_key=f"hist-{c.id}-{minutes_ago}-{channel}", channel=channel, contact=c.id,
                campaign=campaign.id if campaign else None, status="sent", finished_at=at, created_at=at)


def candidate(c: Contact, channel: str = "sms", campaign: Campaign | None = None, send_id: int = 1,
              fallback: str | None = None, recipient: str | None = "from-contact") -> Candidate:
    if recipient == "from-contact":
        recipient = c.phone if channel in ("sms", "call") else c.email
    return Candidate(send_id, channel, c.id, campaign.id if campaign else None, recipient, fallback)


def checks(**env: str) -> SendChecks:
    return SendChecks(make_settings(**{"DAILY_CAP": "0", "QUIET_HOURS": "off", **env}))


def verdict(c: Candidate, **env: str):  # type: ignore[no-untyped-def]
    return checks(**env).evaluate([c], NOW)[c.send_id]


@pytest.fixture
def campaign(migrated_db: str) -> Campaign:
    return Campaign.create(slug="welcome", name="Welcome")


def test_nothing_in_the_way_means_send(migrated_db: str) -> None:
    assert verdict(candidate(contact())).action == "send"


def test_daily_cap_counts_every_channel_in_the_last_24_hours(migrated_db: str) -> None:
    c = contact()
    sent(c, 60, channel="sms")
    sent(c, 120, channel="email")
    sent(c, 60 * 25, channel="sms")  # outside the 24 h window
    v = verdict(candidate(c), DAILY_CAP="2")
    assert v.action == "skip" and "daily cap" in (v.reason or "")
    assert verdict(candidate(c), DAILY_CAP="3").action == "send"


def test_daily_cap_counts_sends_approved_earlier_in_the_same_batch(migrated_db: str) -> None:
    c = contact()
    batch = [candidate(c, send_id=i) for i in range(1, 4)]
    verdicts = checks(DAILY_CAP="2").evaluate(batch, NOW)
    assert [verdicts[i].action for i in (1, 2, 3)] == ["send", "send", "skip"]


def test_cooldown_defers_until_the_gap_has_passed(migrated_db: str) -> None:
    c = contact()
    sent(c, 10)
    v = verdict(candidate(c), COOLDOWN_S="3600")
    assert v.action == "defer" and v.until == NOW + dt.timedelta(minutes=50)
    assert verdict(candidate(c), COOLDOWN_S="300").action == "send"


def test_campaign_cooldown_overrides_the_default(campaign: Campaign) -> None:
    campaign.limits = {"cooldown_s": 7200}
    campaign.save()
    c = contact()
    sent(c, 60)
    v = verdict(candidate(c, campaign=campaign), COOLDOWN_S="60")
    assert v.action == "defer" and v.until == NOW + dt.timedelta(hours=1)


def test_weekly_cap_is_per_campaign(campaign: Campaign) -> None:
    campaign.limits = {"weekly_cap": 2}
    campaign.save()
    other = Campaign.create(slug="other", name="Other")
    c = contact()
    sent(c, 60 * 24 * 2, campaign)
    sent(c, 60 * 24 * 3, campaign)
    sent(c, 60 * 24 * 8, campaign)  # older than a week
    sent(c, 60, other)
    v = verdict(candidate(c, campaign=campaign))
    assert v.action == "skip" and "weekly cap" in (v.reason or "")
    assert verdict(candidate(c, campaign=other)).action == "send"


def test_quiet_hours_defer_to_the_next_allowed_minute_in_the_contacts_zone(migrated_db: str) -> None:
    c = contact(timezone="Asia/Tokyo")  # noon UTC is 21:00 in Tokyo
    v = verdict(candidate(c), QUIET_HOURS="21:00-08:00")
    assert v.action == "defer"
    assert v.until == dt.datetime(2026, 6, 15, 23, 0)  # 08:00 Tokyo next morning
    assert "quiet hours" in (v.reason or "")
    # email is not held by quiet hours
    assert verdict(candidate(c, channel="email"), QUIET_HOURS="21:00-08:00").action == "send"
    # a campaign may turn them off
    free = Campaign.create(slug="urgent", name="Urgent", limits={"quiet_hours": None})
    assert verdict(candidate(c, campaign=free), QUIET_HOURS="21:00-08:00").action == "send"


@pytest.mark.parametrize(("now_utc", "expected_utc"), [
    # New York, night of the spring-forward change (2026-03-08, 02:00 -> 03:00): 08:00 is EDT
    (dt.datetime(2026, 3, 8, 5, 0), dt.datetime(2026, 3, 8, 12, 0)),
    # the night before: 08:00 is still EST
    (dt.datetime(2026, 3, 7, 5, 0), dt.datetime(2026, 3, 7, 13, 0)),
    # night of the fall-back change (2026-11-01): 08:00 is EST again
    (dt.datetime(2026, 11, 1, 5, 0), dt.datetime(2026, 11, 1, 13, 0)),
    # 22:00 EDT the evening before: the window ends tomorrow morning
    (dt.datetime(2026, 3, 9, 2, 0), dt.datetime(2026, 3, 9, 12, 0)),
])
def test_quiet_hours_across_dst_changes(now_utc: dt.datetime, expected_utc: dt.datetime) -> None:
    assert next_allowed(now_utc, zone("America/New_York", "UTC"), dt.time(21), dt.time(8)) == expected_utc


def test_quiet_hours_ending_inside_a_dst_gap_resume_when_the_clock_jumps() -> None:
    # 02:30 does not exist in New York on 2026-03-08: the first allowed minute is 03:00 EDT (07:00 UTC)
    assert next_allowed(dt.datetime(2026, 3, 8, 6, 0), zone("America/New_York", "UTC"),
                        dt.time(1), dt.time(2, 30)) == dt.datetime(2026, 3, 8, 7, 0)


def test_no_consent_skips_or_falls_back(migrated_db: str) -> None:
    c = contact(consent={"sms": False})
    v = verdict(candidate(c))
    assert v.action == "skip" and v.reason == "no consent for sms"
    v = verdict(candidate(c, fallback="email"))
    assert (v.action, v.fallback_channel, v.fallback_recipient) == ("fallback", "email", "ada@example.com")
    assert "fell back to email: no consent for sms" == v.reason


def test_suppression_on_the_channel_or_on_all(migrated_db: str) -> None:
    stopped = contact()
    Suppression.create(contact=stopped.id, channel="sms", reason="STOP")
    v = verdict(candidate(stopped))
    assert v.action == "skip" and v.reason == "suppressed on sms: STOP"
    assert verdict(candidate(stopped, channel="email")).action == "send"
    bounced = contact(phone="+12015550101", email="bob@example.com")
    Suppression.create(contact=bounced.id, channel="*", reason="complained")
    assert verdict(candidate(bounced, channel="email")).action == "skip"
    # a fallback channel that is suppressed too is no way out
    assert verdict(candidate(bounced, fallback="sms")).action == "skip"


def test_no_address_falls_back_when_the_step_has_a_fallback(migrated_db: str) -> None:
    c = contact(phone=None)
    assert verdict(candidate(c, recipient=None)).reason == "no phone for sms"
    v = verdict(candidate(c, recipient=None, fallback="email"))
    assert v.action == "fallback" and v.fallback_channel == "email"


def test_a_deleted_contact_is_skipped(migrated_db: str) -> None:
    c = contact()
    cand = candidate(c)
    c.delete_instance()
    assert verdict(cand).reason == "contact deleted"


def test_checks_use_the_same_few_queries_for_5_or_400_sends(campaign: Campaign, statements) -> None:  # type: ignore[no-untyped-def]
    step = CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="hi")
    assert step.id
    contacts = [contact(phone=f"+1201555{i:04d}", email=f"p{i}@example.com") for i in range(400)]
    for c in contacts[:50]:
        sent(c, 30)

    def count(n: int) -> int:
        statements.count = 0
        checks(DAILY_CAP="3", COOLDOWN_S="60").evaluate(
            [candidate(c, campaign=campaign, send_id=i) for i, c in enumerate(contacts[:n])], NOW)
        return statements.count

    small, large = count(5), count(400)
    assert small == large <= 5
