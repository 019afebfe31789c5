"""Campaign files, apply, enrolment and exit: validation messages name file, step and field;
apply is an idempotent upsert that never disturbs enrolments in flight; enrolment is set-based."""

from __future__ import annotations

import datetime as dt
import logging
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from db.models import Campaign, CampaignStep, Contact, Enrolment
from engine.campaigns import (
    CampaignError,
    CampaignFileError,
    CampaignSpec,
    apply_campaigns,
    campaigns_triggered_by,
    enrol,
    exit_enrolments,
    load_campaign_file,
    parse_campaign_text,
)
from engine.durations import DurationError, format_duration, parse_duration

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "welcome.yaml"
NOW = dt.datetime(2025, 3, 1, 12, 0, 0)

GOOD = """\
slug: onboarding
name: Onboarding
trigger: {event: contact.upsert}
exit_on: [conversion]
steps:
  - channel: sms
    delay: 0s
    body: "Hi {{ contact.name }}"
  - channel: email
    delay: 1d
    subject: "Welcome"
    body: "Day one"
"""


def spec_from(text: str, name: str = "onboarding.yaml") -> CampaignSpec:
    return parse_campaign_text(textwrap.dedent(text), name)


def problems(text: str, name: str = "welcome.yaml") -> list[str]:
    with pytest.raises(CampaignFileError) as caught:
        spec_from(text, name)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


@contextmanager
def count_queries() -> Iterator[list[str]]:
    """Every SQL statement peewee runs inside the block (peewee's own assertQueryCount idea)."""
    statements: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            statements.append(str(record.msg))

    logger = logging.getLogger("peewee")
    handler, level = Collect(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield statements
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("0s", 0), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1d12h", 129600),
    ("1w", 604800), ("1w2d3h4m5s", 788645), (" 2h 30m ", 9000),
])
def test_durations_parse_to_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected a duration"), ("soon", "expected a duration"), ("1.5h", "expected a duration"),
    ("-1h", "expected a duration"), (90, "has no unit"), ("12h1d", "largest first"),
    ("1h1h", "once each"), (None, "expected a duration"), (True, "expected a duration"),
])
def test_bad_durations_say_what_is_expected(text: object, message: str) -> None:
    with pytest.raises(DurationError, match=message):
        parse_duration(text)


# -- loading and validation -----------------------------------------------------------------------


def test_the_example_file_in_the_contracts_format_loads() -> None:
    spec = load_campaign_file(EXAMPLE)
    assert spec.slug == "welcome"
    assert spec.name == "Welcome series"
    assert spec.trigger_event == "contact.upsert"
    assert spec.exit_on == ("conversion", "contact.unsubscribe")
    assert [(s.channel, s.delay_s, s.fallback_channel) for s in spec.steps] == [
        ("sms", 0, None), ("email", 86_400, "sms")]
    assert spec.steps[1].subject == "Still interested, {{ contact.name }}?"
    assert spec.limits == {}  # nothing said: the daemon's defaults apply


def test_manual_trigger_limits_and_quiet_hours_are_stored_as_limits() -> None:
    spec = spec_from(GOOD.replace("trigger: {event: contact.upsert}", "trigger: manual")
                     + "limits: {weekly_cap: 3, cooldown: 12h}\nquiet_hours: {start: \"21:00\", end: 8:30}\n")
    assert spec.trigger_event is None
    # 8:30 unquoted is YAML 1.1's sexagesimal 510; it still means half past eight.
    assert spec.limits == {"weekly_cap": 3, "cooldown_s": 43_200,
                           "quiet_hours": {"start": "21:00", "end": "08:30"}}
    assert spec_from(GOOD + "quiet_hours: false\n").limits == {"quiet_hours": None}


def test_an_unknown_channel_names_the_file_the_step_and_the_field() -> None:
    errors = problems(GOOD.replace("channel: email", "channel: fax"))
    assert errors == ["welcome.yaml: steps[1].channel: unknown channel 'fax' "
                      "(one of sms, email, call, push, webhook)"]


@pytest.mark.parametrize(("change", "expected"), [
    (("slug: onboarding", "slug: Not A Slug"), "welcome.yaml: slug: expected lowercase letters"),
    (("name: Onboarding", "name: ''"), "welcome.yaml: name: expected non-empty text"),
    (("name: Onboarding\n", ""), "welcome.yaml: name: required"),
    (("{event: contact.upsert}", "{event: signup}"), "welcome.yaml: trigger.event: unknown event type 'signup'"),
    (("{event: contact.upsert}", "contact.upsert"), "welcome.yaml: trigger: write {event: contact.upsert}"),
    (("{event: contact.upsert}", "{evnt: contact.upsert}"), "welcome.yaml: trigger.evnt: unknown key 'evnt' "
                                                           "(did you mean 'event'?"),
    (("exit_on: [conversion]", "exit_on: [refund]"), "welcome.yaml: exit_on[0]: unknown event type 'refund'"),
    (("exit_on: [conversion]", "exit_on: conversion"), "welcome.yaml: exit_on: expected a list"),
    (("delay: 1d", "delay: tomorrow"), "welcome.yaml: steps[1].delay: expected a duration"),
    (("delay: 1d", "delay: 1"), "welcome.yaml: steps[1].delay: 1 has no unit"),
    (("    delay: 1d\n", ""), "welcome.yaml: steps[1].delay: required"),
    (('body: "Day one"', "body: ''"), "welcome.yaml: steps[1].body: expected non-empty text"),
    (('    body: "Day one"\n', ""), "welcome.yaml: steps[1].body: required"),
    (('    subject: "Welcome"\n', ""), "welcome.yaml: steps[1].subject: required for an email step"),
    (('body: "Day one"', 'body: "Day one"\n    fallback: pigeon'), "welcome.yaml: steps[1].fallback: "
                                                                  "unknown channel 'pigeon'"),
    (('body: "Day one"', 'body: "Day one"\n    fallback: email'), "welcome.yaml: steps[1].fallback: "
                                                                 "must differ from the step's channel 'email'"),
    (('body: "Day one"', 'body: "Day one"\n    delya: 1h'), "welcome.yaml: steps[1].delya: unknown key "
                                                            "'delya' (did you mean 'delay'?"),
    (("exit_on:", "exitOn:"), "welcome.yaml: exitOn: unknown key 'exitOn' (did you mean 'exit_on'?"),
    (('body: "Day one"', 'body: "Day {{ one"'), "welcome.yaml: steps[1].body: template syntax error at line 1"),
    (('subject: "Welcome"', 'subject: "{% if %}"'), "welcome.yaml: steps[1].subject: template syntax error"),
    (('body: "Hi {{ contact.name }}"', 'body: "Hi {{ contcat.name }}"'),
     "welcome.yaml: steps[0].body: unknown variable 'contcat'"),
])
def test_each_invalid_field_is_reported_with_file_step_and_field(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in GOOD
    errors = problems(GOOD.replace(old, new, 1))
    assert any(line.startswith(expected) for line in errors), errors


@pytest.mark.parametrize(("extra", "expected"), [
    ("limits: {weekly_cap: 0}\n", "welcome.yaml: limits.weekly_cap: expected a whole number"),
    ("limits: {cooldown: 3}\n", "welcome.yaml: limits.cooldown: 3 has no unit"),
    ("limits: {weekly: 3}\n", "welcome.yaml: limits.weekly: unknown key 'weekly' (did you mean 'weekly_cap'?"),
    ("quiet_hours: {start: '25:00', end: '08:00'}\n", "welcome.yaml: quiet_hours.start: expected a time"),
    ("quiet_hours: {start: '21:00'}\n", "welcome.yaml: quiet_hours.end: required"),
    ("quiet_hours: {start: '08:00', end: '08:00'}\n", "welcome.yaml: quiet_hours: start and end are the same"),
    ("quiet_hours: true\n", "welcome.yaml: quiet_hours: expected {start"),
    ("active: maybe\n", "welcome.yaml: active: expected true or false"),
])
def test_limits_and_quiet_hours_are_validated(extra: str, expected: str) -> None:
    errors = problems(GOOD + extra)
    assert any(line.startswith(expected) for line in errors), errors


def test_every_problem_of_a_file_is_reported_together_one_per_line() -> None:
    errors = problems("""\
        slug: Bad Slug
        trigger: {event: signup}
        steps:
          - channel: fax
            delay: soon
            body: "{{ oops"
          - channel: email
            delay: 1h
            body: hello
        """)
    fields = [line.split(": ")[1] for line in errors]
    assert fields == ["name", "slug", "trigger.event", "steps[0].channel", "steps[0].delay", "steps[0].body",
                      "steps[1].subject"]
    assert all(line.startswith("welcome.yaml: ") for line in errors)


@pytest.mark.parametrize(("text", "expected"), [
    ("", "welcome.yaml: the file is empty"),
    ("- just\n- a list\n", "welcome.yaml: expected a mapping"),
    ("slug: [unclosed\n", "welcome.yaml: line 2, column 1: invalid YAML"),
    ("slug: x\nname: X\ntrigger: manual\nsteps: []\n", "welcome.yaml: steps: expected a non-empty list"),
])
def test_unusable_documents_are_reported(text: str, expected: str) -> None:
    errors = problems(text)
    assert errors[0].startswith(expected), errors


def test_a_missing_file_is_a_campaign_file_error(tmp_path: Path) -> None:
    with pytest.raises(CampaignFileError, match="nope.yaml: cannot read"):
        load_campaign_file(tmp_path / "nope.yaml")


# -- apply ----------------------------------------------------------------------------------------


def _steps(slug: str) -> list[tuple[int, int, str, str]]:
    return [(s.id, s.position, s.channel, s.body) for s in
            CampaignStep.select().join(Campaign).where(Campaign.slug == slug).order_by(CampaignStep.position)]


def test_apply_creates_then_is_unchanged_then_updates_with_a_new_version(migrated_db: str) -> None:
    spec = spec_from(GOOD + "limits: {weekly_cap: 2}\n")
    assert [(r.slug, r.action, r.version) for r in apply_campaigns([spec])] == [("onboarding", "created", 1)]
    campaign = Campaign.get(Campaign.slug == "onboarding")
    assert (campaign.trigger_event, campaign.exit_on, campaign.limits, campaign.active) == (
        "contact.upsert", ["conversion"], {"weekly_cap": 2}, True)
    assert [(p, c) for _, p, c, _ in _steps("onboarding")] == [(0, "sms"), (1, "email")]

    # The same file again changes nothing, not even the version.
    assert [(r.action, r.version) for r in apply_campaigns([spec])] == [("unchanged", 1)]

    # A changed name is an update.
    renamed = spec_from(GOOD.replace("name: Onboarding", "name: Onboarding v2") + "limits: {weekly_cap: 2}\n")
    assert [(r.action, r.version) for r in apply_campaigns([renamed])] == [("updated", 2)]
    # A changed limit too.
    assert [(r.action, r.version) for r in apply_campaigns([spec_from(GOOD)])] == [("updated", 3)]
    assert Campaign.get(Campaign.slug == "onboarding").limits == {}
    assert Campaign.select().count() == 1


def _contacts(n: int) -> list[int]:
    start = Contact.select().count()
    Contact.insert_many([{"email": f"c{start + i}@example.com"} for i in range(n)]).execute()
    return [c.id for c in Contact.select(Contact.id).order_by(Contact.id)][start:]


def test_reapplying_a_changed_campaign_leaves_enrolments_in_flight_alone(migrated_db: str) -> None:
    # Given a three-step campaign with contacts waiting at each step...
    three = GOOD + '  - channel: sms\n    delay: 2d\n    body: "Last call"\n'
    apply_campaigns([spec_from(three)])
    ids = _contacts(3)
    assert enrol(ids, "onboarding", now=NOW) == 3
    for position, contact_id in enumerate(ids):
        (Enrolment.update(next_position=position, next_due_at=NOW + dt.timedelta(hours=position),
                          status="waiting" if position else "active")
         .where(Enrolment.contact == contact_id).execute())
    before = sorted(Enrolment.select().tuples())
    original_steps = _steps("onboarding")

    # ...when the body of step 1 changes, a fourth step is added...
    four = three.replace('body: "Day one"', 'body: "Day one, revised"') + \
        '  - channel: push\n    delay: 1w\n    body: "Bye"\n'
    assert [(r.action, r.version) for r in apply_campaigns([spec_from(four)])] == [("updated", 2)]
    # ...then the last two are removed...
    assert [(r.action, r.version) for r in apply_campaigns([spec_from(GOOD)])] == [("updated", 3)]

    # ...no enrolment moved: the one at position 2 completes later (the scheduler's job).
    assert sorted(Enrolment.select().tuples()) == before
    steps = _steps("onboarding")
    assert [s[:3] for s in steps] == [s[:3] for s in original_steps[:2]]  # updated in place: same ids
    assert steps[1][3] == "Day one"
    assert CampaignStep.select().count() == 2


def test_apply_is_one_transaction_per_campaign(migrated_db: str) -> None:
    results = apply_campaigns([spec_from(GOOD), spec_from(GOOD.replace("onboarding", "second"))])
    assert [(r.slug, r.action) for r in results] == [("onboarding", "created"), ("second", "created")]
    assert CampaignStep.select().count() == 4


def test_apply_racing_another_process_on_the_same_slug_updates_instead(
        migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given another process created the campaign after this one looked for it...
    apply_campaigns([spec_from(GOOD)])
    real = Campaign.get_or_none
    looks = []

    def stale_then_real(*args: object) -> Campaign | None:
        looks.append(args)
        return None if len(looks) == 1 else real(*args)

    monkeypatch.setattr(Campaign, "get_or_none", stale_then_real)
    # ...the insert hits the unique slug, and the second pass updates the existing campaign.
    results = apply_campaigns([spec_from(GOOD.replace("name: Onboarding", "name: Renamed"))])
    assert [(r.action, r.version) for r in results] == [("updated", 2)]
    assert [c.name for c in Campaign.select()] == ["Renamed"]
    assert CampaignStep.select().count() == 2


# -- enrolment ------------------------------------------------------------------------------------


def test_enrol_is_set_based_idempotent_and_due_after_the_first_delay(migrated_db: str) -> None:
    apply_campaigns([spec_from(GOOD.replace("delay: 0s", "delay: 15m"))])
    ids = _contacts(3)

    assert enrol(ids[:2], "onboarding", now=NOW) == 2
    # Again, with one more: only the new one counts; the others keep their enrolment.
    assert enrol(ids + ids, "onboarding", now=NOW + dt.timedelta(hours=1)) == 1
    rows = list(Enrolment.select().order_by(Enrolment.contact))
    assert [(r.contact_id, r.status, r.next_position) for r in rows] == [(i, "active", 0) for i in ids]
    assert [r.next_due_at for r in rows] == [NOW + dt.timedelta(minutes=15)] * 2 + [
        NOW + dt.timedelta(hours=1, minutes=15)]

    # Never twice, not even after completing; ids without a contact are skipped.
    Enrolment.update(status="completed").execute()
    assert enrol([*ids, 999_999], Campaign.get(Campaign.slug == "onboarding"), now=NOW) == 0
    assert Enrolment.select().where(Enrolment.status == "completed").count() == 3


def test_enrolling_10_or_2000_contacts_takes_the_same_number_of_statements(migrated_db: str) -> None:
    apply_campaigns([spec_from(GOOD), spec_from(GOOD.replace("onboarding", "other"))])
    few, many = _contacts(10), _contacts(2000)

    with count_queries() as small:
        assert enrol(few, "onboarding") == 10
    with count_queries() as large:
        assert enrol(many, "other") == 2000
    assert len(small) == len(large), (small, large)
    assert [s.startswith("('INSERT") for s in large].count(True) == 1  # one INSERT ... SELECT for all 2,000
    assert len(large) <= 5  # and the campaign, its first step (and BEGIN/COMMIT where logged)
    assert Enrolment.select().count() == 2010


def test_enrol_refuses_unknown_and_inactive_campaigns(migrated_db: str) -> None:
    apply_campaigns([spec_from(GOOD + "active: false\n")])
    ids = _contacts(1)
    with pytest.raises(CampaignError, match="unknown campaign 'nope'"):
        enrol(ids, "nope")
    with pytest.raises(CampaignError, match="'onboarding' is inactive"):
        enrol(ids, "onboarding")
    assert Enrolment.select().count() == 0


def test_campaigns_triggered_by_lists_the_active_ones_for_that_event(migrated_db: str) -> None:
    apply_campaigns([
        spec_from(GOOD),
        spec_from(GOOD.replace("onboarding", "paused") + "active: false\n"),
        spec_from(GOOD.replace("onboarding", "manual").replace("{event: contact.upsert}", "manual")),
        spec_from(GOOD.replace("onboarding", "clicked").replace("contact.upsert", "click")),
    ])
    assert [c.slug for c in campaigns_triggered_by("contact.upsert")] == ["onboarding"]
    assert [c.slug for c in campaigns_triggered_by("click")] == ["clicked"]
    assert campaigns_triggered_by("conversion") == []


def test_exit_enrolments_only_in_campaigns_that_exit_on_that_event(migrated_db: str) -> None:
    # Given three campaigns, two of which exit on conversion...
    apply_campaigns([
        spec_from(GOOD),  # exit_on: [conversion]
        spec_from(GOOD.replace("onboarding", "nurture").replace("[conversion]", "[click, conversion]")),
        spec_from(GOOD.replace("onboarding", "sticky").replace("[conversion]", "[contact.unsubscribe]")),
    ])
    ids = _contacts(3)
    for slug in ("onboarding", "nurture", "sticky"):
        enrol(ids, slug, now=NOW)
    Enrolment.update(status="waiting").where(Enrolment.contact == ids[1]).execute()
    Enrolment.update(status="completed").where(Enrolment.contact == ids[2]).execute()

    # ...a conversion of all three contacts...
    with count_queries() as statements:
        exited = exit_enrolments(ids, "conversion", reason="conversion: order 42", now=NOW)

    # ...exits the open (active or waiting) enrolments of the two campaigns, nothing else.
    assert exited == 4
    assert len(statements) <= 4  # the campaigns, one UPDATE (and BEGIN/COMMIT)
    state = {(e.contact_id, e.campaign.slug): (e.status, e.exit_reason, e.finished_at)
             for e in Enrolment.select(Enrolment, Campaign).join(Campaign)}
    for contact_id in ids[:2]:
        for slug in ("onboarding", "nurture"):
            assert state[(contact_id, slug)] == ("exited", "conversion: order 42", NOW)
        assert state[(contact_id, "sticky")][0] in ("active", "waiting")
    assert all(state[(ids[2], slug)][0] == "completed" for slug in ("onboarding", "nurture", "sticky"))
    assert exit_enrolments(ids, "delivery") == 0


# -- hostile files and template typos (issue 10, defect 21) -------------------------------------------

def alias_bomb(levels: int, width: int = 10) -> str:
    """The 'billion laughs' in YAML: each level is ``width`` aliases of the one below."""
    lines = ['l0: &l0 "lol"']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + f"\nslug: bomb\nname: Bomb\ntrigger: *l{levels}\nsteps: *l{levels}\n"


def test_yaml_aliases_are_refused_before_anything_expands() -> None:
    # Given an alias bomb whose values, printed in full, would be ~7 MB (and exponentially more per level)
    errors = problems(alias_bomb(levels=6), "bomb.yaml")
    # Then one short line says aliases are not allowed, and where
    assert len(errors) == 1 and len(errors[0]) < 300
    assert errors[0].startswith("bomb.yaml: line 2, column ") and "alias" in errors[0]


def test_values_in_messages_are_bounded() -> None:
    # Given wrong values that are huge without any alias
    huge_list = "[" + ", ".join(["x" * 50] * 5000) + "]"
    errors = problems(f"slug: {'s' * 100_000}\nname: N\ntrigger: {huge_list}\nexit_on: [{'y' * 100_000}]\n"
                      f"{'k' * 1000}: 1\nsteps:\n  - channel: {'c' * 100_000}\n    delay: 0s\n    body: hi\n"
                      f"limits: {{weekly_cap: {huge_list}}}\n")
    assert len(errors) == 6
    assert all(len(line) < 400 for line in errors), [len(line) for line in errors]


TYPO = """\
slug: typo
name: Typo
trigger: manual
steps:
  - channel: email
    delay: 0s
    subject: "Hello {{ contact.nme }}"
    body: "Your plan: {{ contact.plan }}; your tier: {{ contact.attributes.tier }}"
  - channel: sms
    delay: 1d
    body: "Hi {{ contact.name }}, {{ contact.email }} {{ contact.plan | default('') }}"
"""


def test_template_names_are_checked_against_contact_fields_and_attributes_in_use(migrated_db: str) -> None:
    from engine.campaigns import template_warnings

    # Given contacts whose attributes include `plan` but nobody has `tier`
    Contact.create(external_id="u1", attributes={"plan": "pro"})
    Contact.create(external_id="u2", attributes={"score": 3})
    warnings = template_warnings([spec_from(TYPO, "typo.yaml")])
    # Then the typo and the unknown attribute are named, by file, step and field; the rest is fine
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("typo.yaml: steps[0].subject: ") and "'nme'" in warnings[0]
    assert warnings[1].startswith("typo.yaml: steps[0].body: ") and "'tier'" in warnings[1]
    assert all("pro" not in w for w in warnings)  # no contact data in the messages


def test_campaign_apply_warns_about_a_template_typo_and_still_applies(sqlite_url: str, tmp_path: Path) -> None:
    from ops.harness.daemon import base_env, cli

    env = base_env(DATABASE_URL=sqlite_url)
    assert cli("migrate", env=env).returncode == 0
    path = tmp_path / "typo.yaml"
    path.write_text(TYPO)
    result = cli("campaign", "apply", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "typo: created (version 1)" in result.stdout
    warned = [line for line in result.stderr.splitlines() if line.startswith("retentiond: warning: ")]
    assert any("steps[0].subject" in line and "'nme'" in line for line in warned), result.stderr


# -- a NUL character (YAML's "\0"): PostgreSQL text cannot hold one (issue 10, follow-up defect 6) --

@pytest.mark.parametrize(("line", "where"), [
    ('name: "Nul\\0name"', "name"),
    ('subject: "a\\0b"', "steps[0].subject"),
    ('body: "hi\\0"', "steps[0].body"),
])
def test_a_nul_character_in_a_campaign_file_is_refused(line: str, where: str) -> None:
    fields = {"name": 'name: "N"', "subject": 'subject: "S"', "body": 'body: "hi"'}
    fields[line.split(":")[0]] = line
    text = (f"slug: nul\n{fields['name']}\ntrigger: manual\nsteps:\n  - channel: email\n    delay: 0s\n"
            f"    {fields['subject']}\n    {fields['body']}\n")
    assert problems(text, "nul.yaml") == [f"nul.yaml: {where}: holds a NUL character (\\0)"]


@pytest.mark.postgres
def test_campaign_apply_of_a_nul_on_postgresql_exits_2_with_one_line(pg_url: str, tmp_path: Path) -> None:
    from ops.harness.daemon import base_env, cli

    env = base_env(DATABASE_URL=pg_url)
    assert cli("migrate", env=env).returncode == 0
    path = tmp_path / "nul.yaml"
    path.write_text('slug: nul\nname: N\ntrigger: manual\nsteps:\n  - channel: email\n    delay: 0s\n'
                    '    subject: "a\\0b"\n    body: "hi"\n')
    result = cli("campaign", "apply", str(path), env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"retentiond: error: {path}: steps[0].subject: holds a NUL character (\\0)"]
