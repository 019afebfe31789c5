"""Multi-row writes keep every row's columns.

Peewee's ``insert_many`` takes its column list from the first row, so a batch whose rows have
different keys loses columns without an error (campaign emails went out blank). Here: the shared
helper refuses such rows; no ``Model.insert_many`` of dicts bypasses it anywhere in the project;
and a property test plans random mixes of good and failing templates in random order and checks
that what is planned and what the provider is handed is exactly what rendering that message on
its own gives.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from actors.providers.base import has_line_break
from db.bulk import MismatchedRows, insert_many, uniform_rows
from db.models import Campaign, CampaignStep, Contact, Decision, Send, TrackedLink, utcnow
from db.queries import bulk_update
from engine.enrolments import enrol
from engine.planner import contact_fields, plan_due_steps
from engine.templates import RenderJob, TemplateError, render
from tests.support.pipeline import InProcessPipeline, PipelineFactory
from tests.support.providers import RecordingProvider
from tests.support.settings import make_settings

REPO = Path(__file__).resolve().parent.parent
PUBLIC_URL = "https://go.example.com"
PLANNER = make_settings(PUBLIC_URL=PUBLIC_URL)

# -- the helper -----------------------------------------------------------------------------------


def test_rows_with_different_keys_are_refused_naming_keys_not_values() -> None:
    with pytest.raises(MismatchedRows) as caught:
        uniform_rows([{"a": 1, "error": "secret@example.com"}, {"a": 2, "body": "Dear Ada"}])
    message = str(caught.value)
    assert "['error']" in message and "['body']" in message
    assert "secret" not in message and "Ada" not in message
    assert uniform_rows([{"a": 1, "b": None}, {"b": 2, "a": 3}]) == [{"a": 1, "b": None}, {"b": 2, "a": 3}]
    assert uniform_rows([]) == []


def test_the_helper_inserts_every_column_of_every_row(migrated_db: str) -> None:
    # Given a first row that differs from the second only in its values, including NULLs
    rows = [{"idempotency_key": "k1", "channel": "email", "subject": None, "body": None, "status": "failed"},
            {"idempotency_key": "k2", "channel": "email", "subject": "S", "body": "B", "status": "planned"}]
    insert_many(Send, rows).execute()
    assert [(s.subject, s.body, s.status) for s in Send.select().order_by(Send.idempotency_key)] == [
        (None, None, "failed"), ("S", "B", "planned")]
    with pytest.raises(MismatchedRows):
        insert_many(Send, [{"idempotency_key": "k3", "channel": "sms"},
                           {"idempotency_key": "k4", "channel": "sms", "body": "lost"}])
    assert Send.select().count() == 2


def test_bulk_update_refuses_rows_of_the_wrong_width(migrated_db: str) -> None:
    # a short row beside a long one: the parameter count matches, the values would shift silently
    send = Send.create(idempotency_key="k", channel="sms")
    with pytest.raises(MismatchedRows):
        bulk_update("send", ("status", "reason"), [(send.id, "failed"), (send.id, "failed", "why", "extra")])
    assert Send.get_by_id(send.id).status == "planned"


def _unchecked_insert_many_calls(path: Path) -> Iterator[int]:
    """Lines of ``X.insert_many(...)`` calls that neither go through db.bulk nor name their fields."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "insert_many"
                and not any(k.arg == "fields" for k in node.keywords)):
            yield node.lineno


def test_no_multi_row_insert_of_dicts_bypasses_the_checked_helper() -> None:
    # Rows given as tuples with explicit fields= cannot lose a column; dict rows go through db.bulk.
    offenders = [f"{path.relative_to(REPO)}:{line}"
                 for folder in ("engine", "db", "actors", "daemon", "ops")
                 for path in sorted((REPO / folder).rglob("*.py")) if path != REPO / "db" / "bulk.py"
                 for line in _unchecked_insert_many_calls(path)]
    assert offenders == []


# -- planning and sending random mixes --------------------------------------------------------------

# (channel, subject, body, renders?) -- a step's templates, stored as they are (campaign apply
# would refuse some of the broken ones; a database edited by hand, or an older version, need not).
TEMPLATES = [
    ("email", "Hi {{ contact.name }}", "Dear {{ contact.name }}, on {{ contact.plan | default('no plan') }}", True),
    ("sms", None, "{{ contact.name }}: {{ link('https://example.com/offer?a=1') }}", True),
    ("email", "{{ contact.attributes['k'] | default('') }} news", "{% for i in range(2) %}{{ i }}{% endfor %}", True),
    ("sms", None, "plain text, no names", True),
    ("email", "Subject", "{{ contact.nme }}", False),  # a typo: undefined
    ("sms", None, "{{ contact.name ", False),  # a syntax error
    ("email", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "x", False),  # the sandbox
    ("sms", None, "{{ link('javascript:alert(1)') }}", False),  # a refused link
]
GOOD = [i for i, t in enumerate(TEMPLATES) if t[3]]
BAD = [i for i, t in enumerate(TEMPLATES) if not t[3]]
# Text PostgreSQL and SQLite both store as given (no NUL, no lone surrogates); line breaks included.
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20)
_TOKEN = re.compile(r"/t/[A-Za-z0-9_-]+")


def _tokens_out(text: str | None) -> str | None:
    return None if text is None else _TOKEN.sub("/t/TOKEN", text)


@pytest.fixture
def delivery(stub_pipeline: PipelineFactory) -> tuple[InProcessPipeline, RecordingProvider]:
    provider = RecordingProvider()
    # checks that would hold sends back (daily cap, quiet hours) off: every send must go out
    return stub_pipeline({"sms": provider, "email": provider}, DAILY_CAP="0", QUIET_HOURS="off"), provider


@pytest.mark.slow
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(items=st.lists(st.tuples(st.sampled_from(range(len(TEMPLATES))), TEXT, st.one_of(st.none(), TEXT)),
                      min_size=1, max_size=8))
@example(items=[(BAD[0], "Ada", None), (GOOD[0], "Bea", "pro"), (GOOD[2], "Cy", None)])  # the blank emails seen
def test_every_planned_and_sent_message_is_exactly_its_own_rendering(
        delivery: tuple[InProcessPipeline, RecordingProvider], items: list[tuple[int, str, str | None]]) -> None:
    pipeline, provider = delivery
    run = uuid.uuid4().hex[:10]
    now = utcnow()
    # Given one contact per item, each enrolled in a one-step campaign with that item's template,
    # due in the list's order, so the planner meets them in that order in one batch
    expected: dict[int, tuple[str, str | None, str | None]] = {}
    for position, (template, name, plan) in enumerate(items):
        channel, subject, body, _ = TEMPLATES[template]
        campaign = Campaign.create(slug=f"p-{run}-{position}", name="Property")
        CampaignStep.create(campaign=campaign.id, position=0, channel=channel, subject=subject, body=body, delay_s=0)
        contact = Contact.create(external_id=f"{run}-{position}", email=f"{run}-{position}@example.com",
                                 phone=f"+1201{uuid.uuid4().int % 10_000_000:07d}", name=name,
                                 attributes={} if plan is None else {"plan": plan, "k": plan})
        enrol([contact.id], campaign, now=now - dt.timedelta(seconds=10) + dt.timedelta(milliseconds=position))
        # the oracle: this message rendered on its own
        try:
            alone = render(RenderJob(contact_fields(contact), subject, body, channel), PUBLIC_URL)
            expected[contact.id] = ("sent", _tokens_out(alone.subject), _tokens_out(alone.body))
        except TemplateError as exc:
            expected[contact.id] = ("failed", None, str(exc))

    # When they are planned together (one batch, one INSERT) and the outbox is delivered
    report = plan_due_steps(PLANNER, now)
    pipeline.relay_and_wait()

    # Then every good one was handed to the provider once, with exactly its own text; every
    # failed one failed with its own error and never reached the provider
    assert report.failed == sum(1 for status, _, _ in expected.values() if status == "failed")
    sends = {s.contact_id: s for s in Send.select().where(Send.contact.in_(list(expected)))}
    assert sends.keys() == expected.keys()
    for contact_id, (status, subject, text) in expected.items():
        send = sends[contact_id]
        if status == "failed":
            assert (send.status, send.subject, send.body, send.error) == ("failed", None, None, text)
            assert send.id not in provider.messages
            assert Decision.get(Decision.send == send.id).outcome == "failed"
            continue
        assert (send.status, _tokens_out(send.subject), _tokens_out(send.body)) == ("sent", subject, text)
        assert send.subject is None or not has_line_break(send.subject)  # names may carry line breaks
        (handed,) = provider.messages[send.id]
        assert (handed.subject, handed.body) == (send.subject, send.body)
        for token in re.findall(r"/t/([A-Za-z0-9_-]+)", send.body or ""):
            assert TrackedLink.get(TrackedLink.token == token).send_id == send.id
