"""The ``retentiond_campaign_*`` counters: a campaign's funnel for Prometheus and Grafana, counted
where it happens (planning, settling, dead-lettering, clicks, conversions), after the write.

Labels are the campaign's slug and the step's position, read once per step and kept: a step's id
never changes campaign or position (``campaigns.apply_campaign`` changes steps in place by
position), so the map only grows, by the few steps there are. Sends without a step (test sends, a
step deleted since) are not counted here; ``retentiond_sends_total`` counts every send.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable

import peewee

from db.database import database, db_session
from db.models import Campaign, CampaignStep
from ground.metrics import CAMPAIGN_CLICKS, CAMPAIGN_CONVERSIONS, CAMPAIGN_REVENUE, CAMPAIGN_SENDS
from ground.vocabulary import EventType

logger = logging.getLogger(__name__)

# (database, step id) -> (campaign slug, step position); the database in the key because a process
# that opens another one (a test, a restore) must not reuse the first one's steps
_labels: dict[tuple[int, int], tuple[str, str]] = {}
_lock = threading.Lock()


def _labels_of(step_ids: Iterable[int | None]) -> dict[int, tuple[str, str]]:
    wanted = {i for i in step_ids if i is not None}
    db = id(database.obj)
    with _lock:
        missing = sorted(i for i in wanted if (db, i) not in _labels)
    if missing:
        try:
            found = _read(missing)
        except peewee.PeeweeException:  # the database away: these are counted by the next ones
            logger.debug("campaign labels unavailable", exc_info=True)
            found = {}
        with _lock:
            _labels.update(((db, i), labels) for i, labels in found.items())
    with _lock:
        return {i: _labels[(db, i)] for i in wanted if (db, i) in _labels}


def _read(step_ids: list[int]) -> dict[int, tuple[str, str]]:
    def query() -> dict[int, tuple[str, str]]:
        return {step.id: (step.campaign.slug, str(step.position))
                for step in CampaignStep.select(CampaignStep.id, CampaignStep.position, Campaign.slug)
                .join(Campaign).where(CampaignStep.id.in_(step_ids))}
    if database.is_closed():  # called after a session (a worker's settle): borrow a connection
        with db_session():
            return query()
    return query()  # inside the caller's session: a nested one would give its connection back


def count_sends(status: str, step_ids: Iterable[int | None]) -> None:
    """``status`` (planned, sent, failed, skipped) for each send of these steps."""
    counts = Counter(i for i in step_ids if i is not None)
    if not counts:
        return
    labels = _labels_of(counts)
    for step_id, n in counts.items():
        if step_id in labels:
            CAMPAIGN_SENDS.labels(*labels[step_id], status).inc(n)


def count_attributions(kind: str, items: Iterable[tuple[int | None, float | None]]) -> None:
    """Clicks, or conversions with their value, by (step id, value)."""
    items = [(step_id, value) for step_id, value in items if step_id is not None]
    if not items:
        return
    labels = _labels_of(step_id for step_id, _ in items)
    for step_id, value in items:
        if step_id not in labels:
            continue
        if kind == EventType.CLICK:
            CAMPAIGN_CLICKS.labels(*labels[step_id]).inc()
        else:
            CAMPAIGN_CONVERSIONS.labels(*labels[step_id]).inc()
            if value:
                CAMPAIGN_REVENUE.labels(*labels[step_id]).inc(max(0.0, float(value)))
