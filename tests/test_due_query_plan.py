"""The planner's claim of due enrolment steps uses the (status, next_due_at) index on both
engines: its cost follows the due work, not the number of enrolments."""

from __future__ import annotations

import datetime as dt

from db.database import database, is_postgres
from db.models import Campaign, Contact, Enrolment, utcnow
from engine.planner import claim_due


def test_the_due_query_is_an_index_range_scan(migrated_db: str) -> None:
    # Given 20,000 enrolments of which 50 are due
    campaign = Campaign.create(slug="c", name="C")
    now = utcnow()
    with database.atomic():
        Contact.insert_many([{"external_id": f"x{i}"} for i in range(20_000)]).execute()
        ids = [c.id for c in Contact.select(Contact.id)]
        rows = [{"contact": cid, "campaign": campaign.id, "status": "active" if i % 3 else "completed",
                 "next_position": 0, "enrolled_at": now,
                 "next_due_at": now - dt.timedelta(minutes=1) if i < 50 else now + dt.timedelta(days=1 + i % 30)}
                for i, cid in enumerate(ids)]
        for start in range(0, len(rows), 1000):
            Enrolment.insert_many(rows[start:start + 1000]).execute()
    database.execute_sql("ANALYZE")
    # When the statement the planner runs to claim a batch is explained (not run)
    sql, params = claim_due(now, 500).sql()
    if is_postgres():
        plan = "\n".join(r[0] for r in database.execute_sql("EXPLAIN " + sql, params).fetchall())
    else:
        plan = "\n".join(str(r[-1]) for r in database.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall())
    print(f"\n{plan}")
    # Then it walks the index, never the whole table
    assert "enrolment_status_next_due_at" in plan
    assert "Seq Scan" not in plan and "SCAN enrolment" not in plan.replace("USING INDEX", "")


def test_a_planning_batch_claims_at_most_its_size(migrated_db: str) -> None:
    # Given 1,200 due enrolments, none analysed yet (a fresh table: the planner's guesses are poor)
    campaign = Campaign.create(slug="c", name="C")
    now = utcnow()
    with database.atomic():
        Contact.insert_many([{"external_id": f"x{i}"} for i in range(1200)]).execute()
        Enrolment.insert_many([{"contact": c.id, "campaign": campaign.id, "status": "active", "next_position": 0,
                                "enrolled_at": now, "next_due_at": now - dt.timedelta(seconds=1)}
                               for c in Contact.select(Contact.id)]).execute()
    # When a batch of 500 is claimed
    with database.atomic():
        claimed = list(claim_due(now, 500).execute())
    # Then 500 are claimed, not more: a subquery with LIMIT ... FOR UPDATE SKIP LOCKED under IN may
    # be run again for each row on PostgreSQL, each run skipping the rows the last one locked, so
    # the batch (one transaction, rendered in memory) grew to the whole due backlog
    assert len(claimed) == 500
    assert Enrolment.select().where(Enrolment.status == "waiting").count() == 500
