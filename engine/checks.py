"""Send-time checks for a batch of claimed sends, from counts fetched once per batch.

Order, for each send: the contact still exists; suppression (unsubscribed, bounced, STOP) on the
channel or on all channels; consent (an explicit ``false`` for the channel blocks, a missing entry
allows); an address for the channel; the per-contact daily cap across channels (rolling 24 h);
the per-campaign weekly cap (rolling 7 days); the cooldown since the contact's previous send;
quiet hours in the contact's timezone (channels whose ``quiet_hours`` flag is set in
ground/channels.py). The first three, and a missing
address, fall back to the step's fallback channel when it has one.

Caps and cooldowns are skips or deferrals, never drops: a deferral is a new due time in the
database. Counts come from five queries per batch whatever its size (contacts, suppressions,
24 h/last-send counts, 7-day per-campaign counts, campaign limits); sends approved earlier in the
same batch count against later ones. Two batches for one contact running at the same instant in
two processes can each see the other's send as not yet made: the caps can be exceeded by that
overlap, never by more.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import peewee

from db.database import rows
from db.models import Campaign, Contact, Send, Suppression
from engine.quiet_hours import next_allowed, zone
from ground.channels import CHANNELS
from ground.send_states import SendStatus
from ground.settings import Settings, parse_quiet_hours

_IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's variable limit


@dataclass(frozen=True)
class Candidate:
    """A claimed send, as the checks see it."""

    send_id: int
    channel: str
    contact_id: int | None
    campaign_id: int | None
    recipient: str | None
    fallback_channel: str | None = None  # the step's, when this send is not itself a fallback


# What the checks say of a send: go ahead, or hold it back (engine/outcomes.from_verdict says how).
Action = Literal["send", "skip", "defer", "fallback"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str | None = None
    until: dt.datetime | None = None
    fallback_channel: str | None = None
    fallback_recipient: str | None = None


SEND = Verdict("send")


def _chunks(ids: Iterable[int]) -> Iterable[list[int]]:
    items = sorted(set(ids))
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start:start + _IN_CHUNK]


class SendChecks:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default_quiet = parse_quiet_hours(settings.quiet_hours)

    def evaluate(self, candidates: Sequence[Candidate], now: dt.datetime) -> dict[int, Verdict]:
        contact_ids = {c.contact_id for c in candidates if c.contact_id is not None}
        campaign_ids = {c.campaign_id for c in candidates if c.campaign_id is not None}
        contacts = self._contacts(contact_ids)
        suppressed = self._suppressions(contact_ids)
        limits = self._campaign_limits(campaign_ids)
        window = max(dt.timedelta(days=1), dt.timedelta(seconds=self._max_cooldown_s(limits.values())))
        daily, last_sent = self._recent(contact_ids, now - window, now - dt.timedelta(days=1))
        weekly = self._weekly(contact_ids, campaign_ids, now - dt.timedelta(days=7))

        verdicts: dict[int, Verdict] = {}
        for c in candidates:
            verdict = self._judge(c, now, contacts, suppressed, limits, daily, last_sent, weekly)
            verdicts[c.send_id] = verdict
            if verdict.action == "send" and c.contact_id is not None:
                # later sends of this batch see this one as made
                daily[c.contact_id] += 1
                last_sent[c.contact_id] = now
                if c.campaign_id is not None:
                    weekly[(c.contact_id, c.campaign_id)] += 1
        return verdicts

    # -- one send -------------------------------------------------------------------------------

    def _judge(self, c: Candidate, now: dt.datetime, contacts: dict, suppressed: dict, limits: dict,
               daily: Counter, last_sent: dict, weekly: Counter) -> Verdict:
        if c.contact_id is None:  # a send not about a contact (e.g. a team webhook): no checks
            return SEND
        contact = contacts.get(c.contact_id)
        if contact is None:
            return Verdict("skip", "contact deleted")
        blocked = self._blocked(c.channel, contact, suppressed.get(c.contact_id, {}), c.recipient)
        if blocked:
            return self._fallback_or_skip(c, contact, suppressed.get(c.contact_id, {}), blocked)

        campaign_limits = limits.get(c.campaign_id, {}) if c.campaign_id is not None else {}
        if self.settings.daily_cap and daily[c.contact_id] >= self.settings.daily_cap:
            return Verdict("skip", f"daily cap: {daily[c.contact_id]} sends in the last 24 h "
                                   f"(cap {self.settings.daily_cap})")
        weekly_cap = campaign_limits.get("weekly_cap")
        if c.campaign_id is not None and weekly_cap and weekly[(c.contact_id, c.campaign_id)] >= weekly_cap:
            return Verdict("skip", f"weekly cap of the campaign: {weekly_cap} sends in 7 days")
        cooldown_s = campaign_limits.get("cooldown_s", self.settings.cooldown_s) or 0
        previous = last_sent.get(c.contact_id)
        if cooldown_s and previous is not None and previous + dt.timedelta(seconds=cooldown_s) > now:
            until = previous + dt.timedelta(seconds=cooldown_s)
            return Verdict("defer", f"cooldown of {int(cooldown_s)} s since the previous send", until=until)
        if CHANNELS[c.channel].quiet_hours:
            quiet = self._quiet_window(campaign_limits)
            if quiet is not None:
                until = next_allowed(now, zone(contact.timezone, self.settings.default_timezone), *quiet)
                if until is not None:
                    return Verdict("defer", f"quiet hours {quiet[0]:%H:%M}-{quiet[1]:%H:%M} "
                                            f"in {contact.timezone or self.settings.default_timezone}", until=until)
        return SEND

    @staticmethod
    def _blocked(channel: str, contact: Contact, suppressions: dict[str, str], recipient: str | None) -> str | None:
        """Why this contact cannot get this channel at all, or None."""
        for scope in (channel, "*"):
            if scope in suppressions:
                return f"suppressed on {'all channels' if scope == '*' else channel}: {suppressions[scope]}"
        if (contact.consent or {}).get(channel) is False:
            return f"no consent for {channel}"
        if not recipient:
            return f"no {CHANNELS[channel].address_field.replace('_', ' ')} for {channel}"
        return None

    def _fallback_or_skip(self, c: Candidate, contact: Contact, suppressions: dict[str, str], why: str) -> Verdict:
        fallback = c.fallback_channel
        if fallback and fallback != c.channel:
            address = getattr(contact, CHANNELS[fallback].address_field)
            if not self._blocked(fallback, contact, suppressions, address):
                return Verdict("fallback", f"fell back to {fallback}: {why}", fallback_channel=fallback,
                               fallback_recipient=address)
        return Verdict("skip", why)

    def _quiet_window(self, campaign_limits: dict) -> tuple[dt.time, dt.time] | None:
        if "quiet_hours" not in campaign_limits:
            return self.default_quiet
        window = campaign_limits["quiet_hours"]
        if not window:
            return None
        return dt.time.fromisoformat(window["start"]), dt.time.fromisoformat(window["end"])

    def _max_cooldown_s(self, limits: Iterable[dict]) -> float:
        return max([self.settings.cooldown_s, *[(lim.get("cooldown_s") or 0) for lim in limits]])

    # -- the batch's counts, one query each -------------------------------------------------------

    @staticmethod
    def _contacts(ids: set[int]) -> dict[int, Contact]:
        found: dict[int, Contact] = {}
        for chunk in _chunks(ids):
            for contact in Contact.select(Contact.id, Contact.email, Contact.phone, Contact.external_id,
                                          Contact.timezone, Contact.consent).where(Contact.id.in_(chunk)):
                found[contact.id] = contact
        return found

    @staticmethod
    def _suppressions(ids: set[int]) -> dict[int, dict[str, str]]:
        found: dict[int, dict[str, str]] = {}
        for chunk in _chunks(ids):
            for row in rows(Suppression.select(Suppression.contact, Suppression.channel, Suppression.reason)
                            .where(Suppression.contact.in_(chunk))):
                found.setdefault(row[0], {})[row[1]] = row[2]
        return found

    @staticmethod
    def _campaign_limits(ids: set[int]) -> dict[int, dict]:
        found: dict[int, dict] = {}
        for chunk in _chunks(ids):
            for campaign in Campaign.select(Campaign.id, Campaign.limits).where(Campaign.id.in_(chunk)):
                found[campaign.id] = campaign.limits or {}
        return found

    @staticmethod
    def _recent(ids: set[int], since: dt.datetime, day_ago: dt.datetime) -> tuple[Counter, dict[int, dt.datetime]]:
        daily: Counter = Counter()
        last: dict[int, dt.datetime] = {}
        in_last_day = peewee.fn.SUM(peewee.Case(None, [(Send.finished_at >= day_ago, 1)], 0))
        for chunk in _chunks(ids):
            found = rows(Send.select(Send.contact, in_last_day, peewee.fn.MAX(Send.finished_at))
                         .where(Send.contact.in_(chunk), Send.status == SendStatus.SENT, Send.finished_at >= since)
                         .group_by(Send.contact))
            for contact_id, count, latest in found:
                daily[contact_id] = int(count or 0)
                if latest is not None:
                    last[contact_id] = latest if isinstance(latest, dt.datetime) else dt.datetime.fromisoformat(latest)
        return daily, last

    @staticmethod
    def _weekly(contact_ids: set[int], campaign_ids: set[int], since: dt.datetime) -> Counter:
        weekly: Counter = Counter()
        if not campaign_ids:
            return weekly
        for chunk in _chunks(contact_ids):
            found = rows(Send.select(Send.contact, Send.campaign, peewee.fn.COUNT(Send.id))
                         .where(Send.contact.in_(chunk), Send.campaign.in_(sorted(campaign_ids)),
                                Send.status == SendStatus.SENT, Send.finished_at >= since)
                         .group_by(Send.contact, Send.campaign))
            for contact_id, campaign_id, count in found:
                weekly[(contact_id, campaign_id)] = count
        return weekly
