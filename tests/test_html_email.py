"""HTML email with a layout, from the campaign file to what the mail server and Postmark receive:
CSS inlined, a text part made from the HTML, tracked links, the unsubscribe link in the body equal
to the List-Unsubscribe header's, the contact's text escaped. Through SMTP (aiosmtplib to a local
aiosmtpd server) and Postmark's batch API at the simulator, on both engines."""

from __future__ import annotations

import email
import email.policy
import json
import re
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from actors.providers import build_provider
from db.models import Contact, Send, TrackedLink, UnsubscribeToken, utcnow
from engine.campaign_file import CampaignFileError, parse_campaign_text
from engine.campaigns import apply_campaign, enrol
from engine.email_parts import text_from_html
from engine.layouts import LayoutError, read_layout
from engine.planner import plan_due_steps
from engine.templates import RenderJob, TemplateError, render
from ground.settings import Secret
from ops.harness.daemon import free_port
from ops.harness.simulator_process import SimulatorProcess

PUBLIC = "https://go.example.com"
LAYOUT = """\
<!doctype html>
<html><head><style>
  .frame { max-width: 600px; font-family: Georgia, serif }
  h1 { color: #0a5 }
  a.unsub { color: #999; font-size: 12px }
</style></head>
<body><div class="frame">
  <header><h1>Acme</h1></header>
  {{ content }}
  <footer><a class="unsub" href="{{ unsubscribe_url }}">Unsubscribe</a></footer>
</div></body></html>
"""
CAMPAIGN = """\
slug: html-welcome
name: HTML welcome
trigger: manual
steps:
  - channel: email
    delay: 0s
    subject: "Welcome, {{ contact.name }}"
    layout: brand
    html: |
      <p>Hi {{ contact.name }},</p>
      <p><a href="{{ link('https://shop.example/offer?a=1&b=2') }}">See the offer</a></p>
"""


@pytest.fixture
def layouts(tmp_path: Path) -> Path:
    directory = tmp_path / "layouts"
    directory.mkdir()
    (directory / "brand.html").write_text(LAYOUT)
    return directory


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]  # noqa: N802
        self.messages.append(envelope.content)
        return "250 OK"


def _planned_html_email(layouts: Path, settings: Any) -> Contact:
    apply_campaign(parse_campaign_text(CAMPAIGN, "html-welcome.yaml", str(layouts)))
    contact = Contact.create(email="ada@example.com", name="Ada <b>Lovelace</b>")
    enrol([contact.id], "html-welcome")
    plan_due_steps(settings, utcnow())
    return contact


def _check_parts(contact: Contact, subject: str, text: str, html: str, list_unsubscribe: str) -> None:
    """What the reader gets, part by part."""
    assert subject == "Welcome, Ada <b>Lovelace</b>"  # a header is text: nothing to escape
    # HTML: the layout's rules moved into style attributes, no <style> left for Gmail to drop
    assert "<style" not in html
    assert re.search(r'<h1 style="color: #0a5;?">Acme</h1>', html), html
    assert re.search(r'<div class="frame" style="[^"]*max-width: 600px', html), html
    # the contact's name is text in the HTML, never markup
    assert "Ada &lt;b&gt;Lovelace&lt;/b&gt;" in html and "<b>Lovelace" not in html
    # the offer link is tracked, and its token leads to the target URL
    tracked = re.findall(r'href="(https://go\.example\.com/t/[^"]+)"', html)
    assert len(tracked) == 1
    token = tracked[0].rsplit("/", 1)[1]
    assert TrackedLink.get(TrackedLink.token == token).url == "https://shop.example/offer?a=1&b=2"
    # the unsubscribe link in the footer is the same token as the List-Unsubscribe header's
    unsubscribe = re.findall(r'href="(https://go\.example\.com/u/[^"]+)"', html)
    assert unsubscribe and list_unsubscribe == f"<{unsubscribe[0]}>"
    row = UnsubscribeToken.get_by_id(unsubscribe[0].rsplit("/", 1)[1])
    assert (row.contact_id, row.channel) == (contact.id, "email")
    assert "_unsubscribe_" not in html + text
    # the text part is made from the HTML: the words, and both links readable
    assert "Hi Ada <b>Lovelace</b>," in text
    assert tracked[0] in text and unsubscribe[0] in text
    assert "<p>" not in text and "style=" not in text


def test_an_html_email_in_its_layout_through_smtp(stub_pipeline, layouts: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a local SMTP server and a campaign whose email step has html in the brand layout
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = build_provider("smtp", {"host": Secret("127.0.0.1"), "port": Secret(str(port)),
                                       "from": Secret("team@example.com")}, "email")
        p = stub_pipeline({"email": smtp}, DAILY_CAP="0", PUBLIC_URL=PUBLIC)
        contact = _planned_html_email(layouts, p.settings)
        # When the send goes out
        p.relay_and_wait()
    finally:
        controller.stop()
    # Then the mail server got one multipart/alternative message: text first, HTML preferred
    assert Send.get().status == "sent"
    assert len(inbox.messages) == 1
    mail = email.message_from_bytes(inbox.messages[0], policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail.get_content_type() == "multipart/alternative"
    parts = list(mail.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    _check_parts(contact, str(mail["Subject"]), parts[0].get_content(), parts[1].get_content(),
                 str(mail["List-Unsubscribe"]))


def test_an_html_email_in_its_layout_through_postmark_batch(stub_pipeline, layouts: Path,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    # Given Postmark's batch API at the simulator
    simulator = SimulatorProcess(tmp_path).start()
    try:
        env = {k: v for k, v in simulator.provider_env().items() if k.startswith("PROVIDER_POSTMARK")}
        p = stub_pipeline({}, DAILY_CAP="0", PUBLIC_URL=PUBLIC, CHANNEL_EMAIL_PROVIDER="postmark",
                          PROVIDER_POSTMARK_BATCH_WAIT_MS="50", **env)
        contact = _planned_html_email(layouts, p.settings)
        # When the send goes out
        p.relay_and_wait()
        with urllib.request.urlopen(f"{simulator.url}/messages?channel=email", timeout=5) as answer:
            messages = json.loads(answer.read())["messages"]
    finally:
        simulator.stop()
    # Then the batch carried HtmlBody and TextBody, and the headers
    assert Send.get().status == "sent"
    assert len(messages) == 1
    message = messages[0]
    assert message.get("html") and message.get("text")
    headers = message["headers"]
    if isinstance(headers, list):  # Postmark's own shape: [{"Name", "Value"}]
        headers = {h["Name"]: h["Value"] for h in headers}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    _check_parts(contact, message["subject"], message["text"], message["html"], headers["List-Unsubscribe"])


def test_a_step_text_part_wins_over_the_one_made_from_html() -> None:
    rendered = render(RenderJob(contact={"name": "Ada"}, subject="s", body="Plain for {{ contact.name }}",
                                channel="email", html="<p>Rich</p>"), PUBLIC)
    assert rendered.body == "Plain for Ada"
    assert rendered.html is not None and "<p>Rich</p>" in rendered.html


def test_the_text_part_keeps_links_and_does_not_wrap_them() -> None:
    url = "https://go.example.com/t/" + "x" * 120
    text = text_from_html(f"<p>Hello <a href='{url}'>there</a></p><ul><li>one</li></ul>")
    assert url in text and "one" in text and "<" not in text


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("../etc/passwd", None, "expected a layout name"),
    ("missing", None, "no layout 'missing'"),
    ("nocontent", "<p>{{ unsubscribe_url }}</p>", "must use {{ content }}"),
    ("nounsub", "<div>{{ content }}</div>", "must use {{ unsubscribe_url }}"),
    ("broken", "{{ content }}{{ unsubscribe_url }}{% if %}", "template syntax error"),
    ("typo", "{{ content }}{{ unsubscribe_url }}{{ contnt }}", "unknown variable 'contnt'"),
])
def test_a_layout_that_cannot_frame_a_message_is_refused_at_apply(tmp_path: Path, name: str, content: str | None,
                                                                  problem: str) -> None:
    if content is not None:
        (tmp_path / f"{name}.html").write_text(content)
    with pytest.raises(LayoutError, match=re.escape(problem)):
        read_layout(str(tmp_path), name)
    # and the campaign naming it lists the problem with the step's place
    text = CAMPAIGN.replace("layout: brand", f"layout: {json.dumps(name)}")
    with pytest.raises(CampaignFileError) as refused:
        parse_campaign_text(text, "c.yaml", str(tmp_path))
    assert any("steps[0].layout" in e and problem in e for e in refused.value.errors), refused.value.errors


def _refused_step(layouts: Path, step: str) -> list[str]:
    """The problems of a one-step manual campaign whose step (after ``delay: 0s``) is ``step``."""
    text = "slug: c\nname: C\ntrigger: manual\nsteps:\n  - delay: 0s\n    " + step + "\n"
    with pytest.raises(CampaignFileError) as refused:
        parse_campaign_text(text, "c.yaml", str(layouts))
    return refused.value.errors


@pytest.mark.parametrize(("step", "problem"), [
    ("channel: sms\n    body: hi\n    html: <p>x</p>", "only an email step has an HTML part"),
    ("channel: email\n    subject: s\n    body: hi\n    layout: brand", "give html too"),
    ("channel: email\n    subject: s", "steps[0].body: required (or html)"),
    ("channel: email\n    subject: s\n    html: '<p>{{ contact.nme | upper }}</p>{% for %}'", "steps[0].html"),
    ("channel: sms\n    body: hi\n    voice: {optout_digit: 9}", "only a call step has voice options"),
    ("channel: sms\n    body: hi\n    layout: brand", "only an email step has a layout"),
    ("channel: call\n    body: hi\n    voice: {optout_digit: 12}", "expected one key"),
    ("channel: call\n    body: hi\n    voice: {optout_digit: '#'}", "# ends a keypad entry"),
    ("channel: call\n    body: hi\n    voice: {play: 'file:///etc/passwd'}", "http(s) URL of an audio file"),
])
def test_rich_step_keys_are_checked(layouts: Path, step: str, problem: str) -> None:
    errors = _refused_step(layouts, step)
    assert any(problem in e for e in errors), errors


def test_the_example_layout_and_campaign_apply_and_render() -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    spec = parse_campaign_text((examples / "html-welcome.yaml").read_text(), "html-welcome.yaml",
                               str(examples / "layouts"))
    step = spec.steps[0]
    rendered = render(RenderJob(contact={"name": "Ada"}, subject=step.subject, body=step.body, channel="email",
                                html=step.html, layout=step.layout_html), PUBLIC)
    assert rendered.html is not None and "<style" not in rendered.html and "Hi Ada," in rendered.html
    assert "Start shopping" in rendered.body and f"{PUBLIC}/u/_unsubscribe_" in rendered.body
    assert spec.steps[1].voice == {"optout_digit": "9", "optout_prompt": "To stop calls from Acme, press 9."}


def test_html_nested_past_the_bound_is_a_template_error_not_a_crash() -> None:
    # 15,000 unclosed <div> (75 KB, under the body bound) crashed css-inline's parser with a segfault
    with pytest.raises(TemplateError, match="nested deeper than"):
        render(RenderJob(contact={}, subject="s", body=None, channel="email",
                         html="{% for i in range(150) %}{% for j in range(100) %}<div>x{% endfor %}{% endfor %}"), PUBLIC)
    # a list per contact item, closed as it should be, is fine however long
    rendered = render(RenderJob(contact={}, subject="s", body=None, channel="email",
                                html="<ul>{% for i in range(5000) %}<li>item {{ i }}</li>{% endfor %}</ul>"), PUBLIC)
    assert "item 4999" in rendered.body


def test_erasure_empties_the_html_part_too(stub_pipeline, layouts: Path) -> None:  # type: ignore[no-untyped-def]
    from engine.erasure import erase_contact

    # Given an HTML email planned for Ada (her name is in its HTML part)
    p = stub_pipeline({}, DAILY_CAP="0", PUBLIC_URL=PUBLIC)
    contact = _planned_html_email(layouts, p.settings)
    assert "Lovelace" in (Send.get().markup or "")
    # When she is erased, then no part of the message keeps her name
    erase_contact(Contact.get_by_id(contact.id))
    send = Send.get()
    assert (send.subject, send.body, send.markup, send.recipient) == (None, None, None, None)


@pytest.mark.parametrize(("step", "blamed"), [
    ("channel: call\n    body: hi\n    voice: {optout_digit: '#', optout_prompt: 'Press it'}", "optout_prompt"),
    ("channel: email\n    subject: s\n    html: '{{ contatc.name }}'", "steps[0].body"),
])
def test_an_invalid_field_does_not_make_another_look_missing(layouts: Path, step: str, blamed: str) -> None:
    errors = _refused_step(layouts, step)
    assert len(errors) == 1 and blamed not in errors[0], errors
