"""PostgreSQL cut off while signed webhooks keep arriving.

A campaign triggered by ``contact.upsert`` (one sms step); a sender posts signed upserts at a
steady pace (open loop: a new one every 1/rate s, whatever the answers) before, during and after a
cut of ``outage_s``. Each answer must be 202 or 503 with ``Retry-After``; after the cut the sender
re-posts what got 503 (as a webhook sender does). Then every accepted event must be stored,
processed once (one enrolment, one sms per contact), and nothing sent twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import aiohttp

from ops.bench.common import log
from ops.chaos.rig import RECOVERY_TARGET_S, Rig, Size, Where, hold
from ops.chaos.verdict import Outcome
from ops.harness.signing import STANDARD_SECRET, standard

POSTS_PER_S = 10
LEAD_IN_S = 2.0  # posting before the cut and after it


def upsert(i: int) -> dict:
    return {"type": "contact.upsert",
            "data": {"external_id": f"hook{i}", "phone": f"+1415{2000000 + i:07d}", "email": f"hook{i}@example.com"}}


class Sender(threading.Thread):
    """Posts one signed webhook every 1/rate s on its own event loop until ``stop()``; keeps every
    answer (event id -> list of (status, Retry-After))."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True, name="chaos-sender")
        self.port, self.rate = port, rate
        self.answers: dict[str, list[tuple[int, str | None]]] = {}
        self._halt = threading.Event()
        self.sent = 0

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def run(self) -> None:
        asyncio.run(self._post_steadily())

    async def _post_steadily(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = []
            started = time.monotonic()
            while not self._halt.is_set():
                tasks.append(asyncio.ensure_future(post(session, self.port, self.sent, self.answers)))
                self.sent += 1
                await asyncio.sleep(max(0.0, started + self.sent / self.rate - time.monotonic()))
            await asyncio.gather(*tasks)


async def post(session: aiohttp.ClientSession, port: int, i: int,
               answers: dict[str, list[tuple[int, str | None]]]) -> int:
    event_id = f"hook-{i}"
    body, headers = standard(upsert(i), event_id, STANDARD_SECRET)
    try:
        async with session.post(f"http://127.0.0.1:{port}/webhooks/app", data=body, headers=headers) as response:
            await response.read()
            answer = (response.status, response.headers.get("Retry-After"))
    except (aiohttp.ClientError, TimeoutError):
        answer = (0, None)  # no answer at all: neither 202 nor 503
    answers.setdefault(event_id, []).append(answer)
    return answer[0]


async def retry_refused(port: int, ids: list[int], answers: dict[str, list[tuple[int, str | None]]],
                        deadline: float) -> None:
    """The sender's retries: re-post every refused event until it is accepted or the deadline."""
    pending = list(ids)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while pending and time.monotonic() < deadline:
            statuses = await asyncio.gather(*[post(session, port, i, answers) for i in pending])
            pending = [i for i, status in zip(pending, statuses, strict=True) if status not in (200, 202)]
            if pending:
                await asyncio.sleep(1.0)


def db_outage_ingress(size: Size, where: Where) -> Outcome:
    from peewee import fn

    from db.models import Contact, Enrolment, InboundEvent

    with Rig(where, size, proxy_db=True, SOURCE_APP_SECRET=STANDARD_SECRET) as rig:
        proxy = rig.db_proxy
        assert proxy is not None
        rig.seed_campaign(trigger_event="contact.upsert", leads=0, email_step=False)
        daemon = rig.start_daemon()
        sender = Sender(daemon.port, POSTS_PER_S)
        sender.start()
        hold(LEAD_IN_S)
        log(f"db_outage_ingress: {sender.sent} webhooks posted; PostgreSQL off for {size.outage_s:g}s")
        proxy.cut()
        hold(size.outage_s)
        proxy.restore()
        ended = time.monotonic()
        ready_at = rig.wait_ready(daemon, ended + RECOVERY_TARGET_S)
        hold(max(0.0, ended + LEAD_IN_S - time.monotonic()))
        sender.stop()
        answers = sender.answers
        first = {event_id: tries[0] for event_id, tries in answers.items()}
        refused = sorted(int(e.split("-")[1]) for e, (status, _) in first.items() if status != 202)
        log(f"db_outage_ingress: {len(answers)} posted, {len(refused)} refused; the sender retries those")
        asyncio.run(retry_refused(daemon.port, refused, answers, ended + RECOVERY_TARGET_S))
        expected = len(answers)
        done_at = rig.wait_delivered(expected, ended + RECOVERY_TARGET_S, "webhook-triggered sms delivered")
        time.sleep(1.0)
        delivered, duplicates = rig.deliveries()

        def stored() -> tuple[dict[str, str], Counter]:
            events = {e.event_id: e.status for e in InboundEvent.select(InboundEvent.event_id, InboundEvent.status)}
            enrolments = fn.COUNT(Enrolment.id)
            most = (Enrolment.select(enrolments).group_by(Enrolment.contact).order_by(enrolments.desc())
                    .limit(1).scalar())
            return events, Counter({"contacts": Contact.select().count(), "max_enrolments": most or 0})

        events, counts = rig.query(stored)
        exit_code = daemon.stop(timeout_s=90)

    every_answer = [a for tries in answers.values() for a in tries]
    # A retry may be answered 200 "duplicate": the refused attempt's commit went through but its
    # answer was lost with the connection (PostgreSQL cut between COMMIT and its reply), so the
    # daemon could only say 503; the retry then finds the event stored. Accepted, once.
    accepted = {e for e, tries in answers.items() if any(status == 202 for status, _ in tries)
                or any(status == 200 for status, _ in tries[1:])}
    accepted_first = {e for e, (status, _) in first.items() if status == 202}
    answer_kinds = Counter(f"{status}{'+Retry-After' if retry else ''}" if status == 503 else str(status)
                           for status, retry in every_answer)
    outcome = Outcome(
        name="db_outage_ingress", fault=f"PostgreSQL cut off for {size.outage_s:g} s while {POSTS_PER_S} webhooks/s "
        "arrive", expected=expected, delivered=delivered, duplicates=duplicates,
        ready_after_s=None if ready_at is None else ready_at - ended,
        recovered_after_s=None if done_at is None else max(0.0, done_at - ended), window_s=RECOVERY_TARGET_S,
        figures={"posted": expected, "answers": dict(answer_kinds), "accepted_first_time": len(accepted_first),
                 "accepted_after_retries": len(accepted), "stored": len(events),
                 "processed": sum(1 for s in events.values() if s == "processed"), "exit_code": exit_code})
    outcome.checks["every answer is 202, or 503 with Retry-After (a retry: also 200 duplicate)"] = all(
        status == 202 or (status == 503 and retry) or (status == 200 and n > 0)
        for tries in answers.values() for n, (status, retry) in enumerate(tries))
    outcome.checks["every 202 is stored"] = accepted <= set(events)
    outcome.checks["every stored event processed, once (one enrolment per contact)"] = (
        all(s == "processed" for s in events.values()) and counts["max_enrolments"] == 1
        and counts["contacts"] == len(events))
    outcome.checks["every event accepted once the database is back (sender retries)"] = len(accepted) == expected
    return outcome
