"""Persisting what rendering produced: tracked links and unsubscribe tokens, one INSERT per chunk."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from itertools import islice

from db.database import database
from db.models import TrackedLink, UnsubscribeToken, utcnow
from engine.templates import TOKEN_BYTES

# Rows per INSERT: 7 columns x 500 stays far below SQLite's bound-parameter limit.
CHUNK = 500

LinkRow = tuple[str, str, int | None, int | None, int | None, int | None]
"""(token, url, contact_id, send_id, campaign_id, step_id)"""


def save_links(rows: Iterable[LinkRow]) -> int:
    """Store tracked links (as rendered: token and target URL, plus who and what they belong to).

    Returns how many rows were written. All chunks commit together.
    """
    fields = [TrackedLink.token, TrackedLink.url, TrackedLink.contact, TrackedLink.send,
              TrackedLink.campaign, TrackedLink.step, TrackedLink.created_at]
    now = utcnow()
    iterator = iter(rows)
    saved = 0
    with database.atomic():
        while chunk := [(*row, now) for row in islice(iterator, CHUNK)]:
            TrackedLink.insert_many(chunk, fields=fields).execute()
            saved += len(chunk)
    return saved


def make_unsubscribe_tokens(items: Sequence[tuple[int, str, int | None]]) -> list[str]:
    """Create one unsubscribe token per (contact_id, channel, send_id); return them in order.

    ``channel`` may be ``'*'`` for every channel.
    """
    tokens = [secrets.token_urlsafe(TOKEN_BYTES) for _ in items]
    fields = [UnsubscribeToken.token, UnsubscribeToken.contact, UnsubscribeToken.channel,
              UnsubscribeToken.send, UnsubscribeToken.created_at]
    now = utcnow()
    rows = [(token, contact_id, channel, send_id, now)
            for token, (contact_id, channel, send_id) in zip(tokens, items, strict=True)]
    with database.atomic():
        for start in range(0, len(rows), CHUNK):
            UnsubscribeToken.insert_many(rows[start:start + CHUNK], fields=fields).execute()
    return tokens


def unsubscribe_url(public_url: str, token: str) -> str:
    """The page behind an unsubscribe token (``GET``: confirm; ``POST``: RFC 8058 one-click)."""
    return f"{public_url.rstrip('/')}/u/{token}"

