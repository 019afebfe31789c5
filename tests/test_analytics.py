"""Campaign analytics (engine/analytics.py, GET /api/v1/campaigns/{slug}/analytics): the figures
equal hand counts on a seeded campaign, equal a row-by-row count for random data, and are read on
indexes that lead with the campaign, shown on a million sends (both engines)."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.web.app import build_admin_app
from db.database import database, is_postgres
from db.models import Attribution, Campaign, CampaignStep, Contact, Enrolment, InboundEvent, Send
from engine.analytics import campaign_report
from tests.support.settings import make_settings

TOKEN = "admin-token-0123456789abcdef"
DAY1 = dt.datetime(2026, 11, 20, 9, 0)
DAY2 = dt.datetime(2026, 11, 21, 18, 30)


def _campaign() -> tuple[Campaign, CampaignStep, CampaignStep]:
    campaign = Campaign.create(slug="welcome", name="Welcome")
    sms = CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="hi")
    email = CampaignStep.create(campaign=campaign.id, position=1, channel="email", subject="s", body="b", delay_s=86400)
    return campaign, sms, email


_keys = iter(range(10**9))


def _send(step: CampaignStep, contact: int, status: str, at: dt.datetime, *, channel: str | None = None,
          delivery: str | None = None, reason: str | None = None, campaign: int | None = None) -> Send:
    return Send.create(idempotency_key=f"k{next(_keys)}", channel=channel or step.channel, status=status,
                       contact=contact, campaign=step.campaign_id if campaign is None else campaign, step=step.id,
                       delivery_status=delivery, reason=reason, created_at=at, due_at=at)


def _attribution(kind: str, send: Send, at: dt.datetime, value: float | None = None) -> None:
    event = InboundEvent.create(source="shop", event_id=f"e{next(_keys)}", type=kind, payload="{}")
    Attribution.create(event=event.id, kind=kind, contact=send.contact_id, send=send.id, campaign=send.campaign_id,
                       step=send.step_id, value=value, created_at=at)


async def test_the_figures_equal_hand_counts(aiohttp_client, migrated_db: str) -> None:  # type: ignore[no-untyped-def]
    # Given a two-step campaign seeded by hand: 4 contacts; 3 enrolments still running, 1 exited
    campaign, sms, email = _campaign()
    a, b, c, d = (Contact.create(external_id=x).id for x in "abcd")
    for contact, status in ((a, "waiting"), (b, "active"), (c, "completed"), (d, "exited")):
        Enrolment.create(contact=contact, campaign=campaign.id, status=status)
    # step 0 (sms), day 1: a sent+delivered, b sent (no receipt), c skipped by the cap, d fell back to email
    sa = _send(sms, a, "sent", DAY1, delivery="delivered")
    sb = _send(sms, b, "sent", DAY1)
    _send(sms, c, "skipped", DAY1, reason="daily cap: 3 sends in the last 24 h (cap 3)")
    _send(sms, d, "skipped", DAY1, reason="fell back to email: no phone")
    sd = _send(sms, d, "sent", DAY1, channel="email", delivery="delivered")  # the fallback, same step
    # step 1 (email), day 2: a sent+bounced, b failed, c still queued
    se = _send(email, a, "sent", DAY2, delivery="bounced")
    _send(email, b, "failed", DAY2, reason="retries exhausted")
    _send(email, c, "queued", DAY2)
    # clicks: a twice on the sms (day 1), d once on its fallback email (day 1), a once on the email (day 2)
    _attribution("click", sa, DAY1)
    _attribution("click", sa, DAY1 + dt.timedelta(minutes=5))
    _attribution("click", sd, DAY1)
    _attribution("click", se, DAY2)
    # conversions: a (last touch the email) for 30 on day 2, b (the sms) for 12.5 on day 2
    _attribution("conversion", se, DAY2, 30.0)
    _attribution("conversion", sb, DAY2, 12.5)
    # and another campaign's send and a test send (no campaign), which must not count
    other = Campaign.create(slug="other", name="O")
    _send(sms, a, "sent", DAY1, campaign=other.id)
    Send.create(idempotency_key="test-1", channel="sms", status="sent", contact=a, created_at=DAY1, due_at=DAY1)
    client = await aiohttp_client(build_admin_app(make_settings(DATABASE_URL=migrated_db, ADMIN_TOKEN=TOKEN)))
    # When the operator asks for the campaign's analytics
    async with client.get("/api/v1/campaigns/welcome/analytics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200
        report = await r.json()
    # Then every figure is the hand count
    assert report["enrolled"] == {"waiting": 1, "active": 1, "completed": 1, "exited": 1}
    overall = report["overall"]
    assert {k: overall[k] for k in ("planned", "in_flight", "sent", "delivered", "failed", "skipped")} == \
        {"planned": 8, "in_flight": 1, "sent": 4, "delivered": 2, "failed": 1, "skipped": 2}
    assert overall["skipped_by_reason"] == {"daily cap": 1, "fell back to email": 1}
    assert (overall["clicks"], overall["clicked"], overall["conversions"], overall["converted"], overall["revenue"]) == \
        (4, 2, 2, 2, 42.5)
    assert (overall["click_through_rate"], overall["conversion_rate"]) == (0.5, 0.5)  # 2 of 4 sent, each
    step0, step1 = report["steps"]
    assert (step0["position"], step0["channel"], step1["position"], step1["channel"]) == (0, "sms", 1, "email")
    assert {k: step0["funnel"][k] for k in ("planned", "sent", "delivered", "skipped", "clicks", "clicked", "converted")} == \
        {"planned": 5, "sent": 3, "delivered": 2, "skipped": 2, "clicks": 3, "clicked": 2, "converted": 1}
    assert step0["funnel"]["revenue"] == 12.5
    assert {k: step1["funnel"][k] for k in ("planned", "sent", "failed", "in_flight", "clicks", "converted")} == \
        {"planned": 3, "sent": 1, "failed": 1, "in_flight": 1, "clicks": 1, "converted": 1}
    assert step1["funnel"]["revenue"] == 30.0
    # by channel: sends, clicks and conversions by the channel the send went by (d's fallback: email)
    assert (report["by_channel"]["sms"]["sent"], report["by_channel"]["email"]["sent"]) == (2, 2)
    assert (report["by_channel"]["sms"]["clicks"], report["by_channel"]["email"]["clicks"]) == (2, 2)
    assert (report["by_channel"]["sms"]["revenue"], report["by_channel"]["email"]["revenue"]) == (12.5, 30.0)
    # by day: what was planned, clicked and converted that day
    day1, day2 = report["by_day"]["2026-11-20"], report["by_day"]["2026-11-21"]
    assert (day1["planned"], day1["sent"], day1["clicks"], day1["conversions"]) == (5, 3, 3, 0)
    assert (day2["planned"], day2["sent"], day2["clicks"], day2["conversions"], day2["revenue"]) == (3, 1, 1, 2, 42.5)
    # an unknown campaign is a 404 problem
    async with client.get("/api/v1/campaigns/nope/analytics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 404 and r.content_type == "application/problem+json"


STATUSES = ("planned", "queued", "sending", "retrying", "sent", "failed", "skipped")
REASONS = ("daily cap: 3 sends", "daily cap: 4 sends", "no consent", None)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sends=st.lists(st.tuples(st.integers(0, 1), st.sampled_from(STATUSES), st.sampled_from((None, "delivered", "bounced")),
                                st.sampled_from(REASONS), st.integers(0, 2), st.integers(0, 3), st.booleans()),
                      max_size=25),
       clicks=st.lists(st.tuples(st.integers(0, 24), st.sampled_from(("click", "conversion")), st.integers(0, 2),
                                 st.floats(0, 100, allow_nan=False)), max_size=25))
def test_the_grouped_figures_equal_a_row_by_row_count(migrated_db: str, sends: list[Any], clicks: list[Any]) -> None:
    # Given random sends and attributions (the set-based report) and the same rows counted one by one
    for model in (Attribution, InboundEvent, Send, Enrolment, CampaignStep, Campaign, Contact):
        model.delete().execute()
    campaign, *steps = _campaign()
    contacts = [Contact.create(external_id=f"c{i}").id for i in range(4)]
    made = [_send(steps[s], contacts[who], status, DAY1 + dt.timedelta(days=day), delivery=delivery, reason=reason,
                  channel="email" if other_channel else None)
            for s, status, delivery, reason, day, who, other_channel in sends]
    attributed = []
    for index, kind, day, value in clicks:
        if made:
            send = made[index % len(made)]
            _attribution(kind, send, DAY1 + dt.timedelta(days=day), value if kind == "conversion" else None)
            attributed.append((send, kind, day, value))
    report = campaign_report(campaign)
    # Then overall, and each step, channel and day, equal the count of their rows
    def expected(keep: Any, keep_attribution: Any) -> dict[str, Any]:
        rows = [s for s in made if keep(s)]
        skipped = Counter(((s.reason or "unknown").split(":")[0]) for s in rows if s.status == "skipped")
        chosen = [(s, k, v) for s, k, _, v in attributed if keep_attribution(s, _)]
        return {"planned": len(rows), "sent": sum(s.status == "sent" for s in rows),
                "failed": sum(s.status == "failed" for s in rows), "skipped": sum(s.status == "skipped" for s in rows),
                "in_flight": sum(s.status not in ("sent", "failed", "skipped") for s in rows),
                "delivered": sum(s.delivery_status == "delivered" for s in rows), "skipped_by_reason": dict(skipped),
                "clicks": sum(k == "click" for _, k, _ in chosen),
                "clicked": len({s.contact_id for s, k, _ in chosen if k == "click"}),
                "conversions": sum(k == "conversion" for _, k, _ in chosen),
                "converted": len({s.contact_id for s, k, _ in chosen if k == "conversion"}),
                "revenue": round(sum(v for _, k, v in chosen if k == "conversion"), 6)}

    def got(f: Any) -> dict[str, Any]:
        return {"planned": f.planned, "sent": f.sent, "failed": f.failed, "skipped": f.skipped, "in_flight": f.in_flight,
                "delivered": f.delivered, "skipped_by_reason": f.skipped_by_reason, "clicks": f.clicks,
                "clicked": f.unique_clicks, "conversions": f.conversions, "converted": f.converted,
                "revenue": round(f.revenue, 6)}

    assert got(report.overall) == expected(lambda s: True, lambda s, d: True)
    for step in report.steps:
        step_id = step.step_id
        assert got(step.funnel) == expected(lambda s, i=step_id: s.step_id == i, lambda s, d, i=step_id: s.step_id == i)
    for day, funnel in report.by_day.items():
        offset = (day - DAY1.date()).days
        assert got(funnel) == expected(lambda s, on=day: s.created_at.date() == on, lambda s, d, o=offset: d == o)
    for channel, funnel in report.by_channel.items():
        assert got(funnel) == expected(lambda s, ch=channel: s.channel == ch, lambda s, d, ch=channel: s.channel == ch)


@pytest.mark.slow
def test_the_report_reads_a_campaigns_rows_on_its_indexes_among_a_million_sends(migrated_db: str) -> None:
    # Given a million sends over 20 campaigns, analysed
    campaigns = [Campaign.create(slug=f"c{i}", name=f"C{i}") for i in range(20)]
    for campaign in campaigns:
        CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="hi")
    first, steps = campaigns[0].id, {s.campaign_id: s.id for s in CampaignStep.select()}
    Contact.create(external_id="x")
    with database.atomic():
        if is_postgres():
            database.execute_sql(
                "INSERT INTO send (idempotency_key, channel, status, contact_id, campaign_id, step_id, attempts, "
                "deferrals, due_at, created_at) SELECT 'k' || g, 'sms', CASE WHEN (g / 20) %% 10 = 0 THEN 'failed' ELSE 'sent' "
                "END, (SELECT MIN(id) FROM contact), %s + g %% 20, %s + g %% 20, 0, 0, now(), now() - (g %% 30) * interval "
                "'1 day' FROM generate_series(1, 1000000) AS g", (first, steps[first]))
        else:
            database.execute_sql(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 1000000) "
                "INSERT INTO send (idempotency_key, channel, status, contact_id, campaign_id, step_id, attempts, "
                "deferrals, due_at, created_at) SELECT 'k' || n, 'sms', CASE WHEN (n / 20) % 10 = 0 THEN 'failed' ELSE 'sent' "
                "END, (SELECT MIN(id) FROM contact), ? + n % 20, ? + n % 20, 0, 0, datetime('now'), "
                "datetime('now', '-' || (n % 30) || ' days') FROM g", (first, steps[first]))
    database.execute_sql("ANALYZE")
    # When one campaign's report is built (its statement explained, and timed for the record)
    from engine import analytics

    statements: list[tuple[str, tuple]] = []
    real_rows = analytics.rows

    def recording(query):  # type: ignore[no-untyped-def]
        statements.append(query.sql())
        return real_rows(query)

    analytics.rows = recording  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        report = campaign_report(campaigns[3])
        elapsed = time.perf_counter() - started
    finally:
        analytics.rows = real_rows  # type: ignore[assignment]
    assert report.overall.planned == 50_000 and report.overall.failed == 5_000
    sql, params = statements[0]  # the sends' query
    if is_postgres():
        plan = "\n".join(r[0] for r in database.execute_sql("EXPLAIN " + sql, params).fetchall())
    else:
        plan = "\n".join(str(r[-1]) for r in database.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall())
    print(f"\nreport of 50,000 sends among 1,000,000: {elapsed * 1000:.0f} ms\n{plan}")
    # Then it reads the campaign's rows on the index that leads with the campaign, not the table
    assert "send_campaign_id_step_id" in plan, plan
    assert "Seq Scan on send" not in plan and "SCAN send" not in plan.replace("USING INDEX", ""), plan
