"""Templates: contact fields and attributes, tracked links, strict undefined names, the sandbox,
the compile cache; then the rows rendering leads to (tracked links, unsubscribe tokens)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from db.models import Contact, Send, TrackedLink, UnsubscribeToken
from engine import templates
from engine.links import make_unsubscribe_tokens, save_links, unsubscribe_url
from engine.templates import Rendered, RenderJob, TemplateError, compile_check, render, render_batch
from ground.errors import PermanentChannelError

PUBLIC_URL = "https://go.example.com/"
ADA = {"id": 7, "external_id": "crm-7", "email": "ada@example.com", "phone": "+15550001", "name": "Ada",
       "timezone": "Europe/London", "attributes": {"plan": "pro", "email": "other@example.com",
                                                   "items": 3, "address": {"city": "Leeds"}}}


def job(body: str, subject: str | None = None, contact: dict | None = None, channel: str = "sms") -> RenderJob:
    return RenderJob(contact=ADA if contact is None else contact, subject=subject, body=body, channel=channel)


def failure(body: str, **kw: object) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        render(job(body, **kw), PUBLIC_URL)  # type: ignore[arg-type]
    return caught.value


def test_fields_and_attributes_render() -> None:
    rendered = render(job("Hi {{ contact.name }} ({{ contact.external_id }}, {{ contact.timezone }}) on "
                          "{{ contact.plan }}/{{ contact.attributes.plan }} via {{ channel }}",
                          subject="{{ contact.email }} #{{ contact.id }}"), PUBLIC_URL)
    assert rendered == Rendered(subject="ada@example.com #7",
                                body="Hi Ada (crm-7, Europe/London) on pro/pro via sms", links=())


def test_fields_win_over_attributes_and_any_key_is_reachable() -> None:
    # An attribute named like a field is only under contact.attributes; one named like a dict
    # method is the attribute, not the method; nested objects read the same way.
    rendered = render(job("{{ contact.email }} {{ contact.attributes.email }} {{ contact.items }} "
                          "{{ contact.attributes['items'] }} {{ contact.address.city }}"), PUBLIC_URL)
    assert rendered.body == "ada@example.com other@example.com 3 3 Leeds"


def test_missing_optional_fields_render_as_empty_text() -> None:
    rendered = render(job("Hi {{ contact.name }}!{{ contact.phone }}|{{ contact.timezone }}|",
                          contact={"id": 1, "email": "x@example.com", "name": None}), PUBLIC_URL)
    assert rendered.body == "Hi !||"


def test_optional_attributes_use_default_or_is_defined() -> None:
    rendered = render(job("{{ contact.coupon | default('none') }}"
                          "{% if contact.vip is defined %} vip{% endif %}"), PUBLIC_URL)
    assert rendered.body == "none"


@pytest.mark.parametrize(("body", "message"), [
    ("{{ contact.coupon }}", "body: UndefinedError: no field or attribute 'coupon'"),
    ("{{ contact.address.zip }}", "body: UndefinedError: no field or attribute 'zip'"),
    ("{{ coupon }}", "body: UndefinedError: 'coupon' is undefined"),
])
def test_unknown_names_are_template_errors(body: str, message: str) -> None:
    error = failure(body)
    assert str(error).startswith(message)
    assert isinstance(error, PermanentChannelError)  # the actor does not retry it
    assert error.field == "body"


def test_link_gives_unguessable_unique_tokens_under_the_public_url() -> None:
    rendered = render(job("{{ link('https://shop.example.com/offer?x=1') }} "
                          "{{ link('http://example.com/b') }} {{ link('https://shop.example.com/offer?x=1') }}",
                          subject="{{ link('https://example.com/s') }}"), PUBLIC_URL)
    urls = rendered.body.split() + [rendered.subject]
    tokens = [url.rsplit("/", 1)[1] for url in urls]
    assert all(url.startswith("https://go.example.com/t/") for url in urls)  # one slash: PUBLIC_URL is trimmed
    assert tokens[0] == tokens[2]  # the same URL twice in one message is one link
    assert len({tokens[0], tokens[1], tokens[3]}) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22,64}", t) for t in tokens)  # >= 128 bits, fits the column
    assert dict(rendered.links) == {tokens[3]: "https://example.com/s", tokens[0]: "https://shop.example.com/offer?x=1",
                                    tokens[1]: "http://example.com/b"}
    # Rendering the same job again mints fresh tokens: they cannot be derived from the contact or URL.
    again = render(job("{{ link('https://shop.example.com/offer?x=1') }}"), PUBLIC_URL)
    assert urlsplit(again.body).path.rsplit("/", 1)[1] not in tokens


@pytest.mark.parametrize("url", ["javascript:alert(1)", "ftp://example.com/f", "/relative/path",
                                 "example.com/no-scheme", "https://"])
def test_link_accepts_only_absolute_http_urls(url: str) -> None:
    error = failure("{{ link(url) }}".replace("url", repr(url)))
    assert str(error).startswith("body: link() needs an absolute http(s) URL")
    assert url not in str(error)  # the URL may hold contact data: it is not echoed


@pytest.mark.parametrize("body", [
    "{{ ''.__class__.__mro__ }}",
    "{{ contact.__class__.__init__.__globals__ }}",
    "{{ contact._data }}",
    "{{ link.__globals__['secrets'] }}",
    "{{ contact.attributes.address.update({'city': 'x'}) }}",
    "{% set l = [1] %}{{ l.append(2) }}",
])
def test_sandbox_escapes_are_template_errors(body: str) -> None:
    error = failure(body)
    assert error.field == "body"
    assert "Error" in str(error)


def test_errors_never_quote_contact_data() -> None:
    # A lookup with a computed key would name the key, here an email address: it is not quoted.
    error = failure("{{ {'a': 1}[contact.email] }}")
    assert str(error) == "body: UndefinedError: no such key"
    # Python's own errors may quote values: only their type is reported.
    assert str(failure("{{ contact.email + 1 }}")) == "body: render failed: TypeError"


def test_a_syntax_error_is_a_template_error_naming_the_field() -> None:
    error = failure("fine", subject="Hello {{ contact.name")
    assert error.field == "subject"
    assert str(error).startswith("subject: template syntax error at line 1")
    with pytest.raises(TemplateError, match=r"^steps\[2\].body: template syntax error at line 2"):
        compile_check("ok\n{% for x in %}", "steps[2].body")
    with pytest.raises(TemplateError, match=r"^body: unknown variable 'contcat'"):
        compile_check("{{ contcat.name }}", "body")
    compile_check("{% for x in range(2) %}{{ x }}{{ link('https://e.com') }}{{ contact.a }}{% endfor %}", "body")


def test_render_batch_keeps_going_past_a_failure() -> None:
    jobs = [job("Hi {{ contact.name }}"), job("{{ contact.coupon }}"), job("Bye {{ contact.name }}")]
    results = render_batch(jobs, PUBLIC_URL)
    assert isinstance(results[1], TemplateError)
    assert [r.body for r in results if isinstance(r, Rendered)] == ["Hi Ada", "Bye Ada"]


def test_compiled_templates_are_cached_by_source() -> None:
    source = "Cached {{ contact.name }} {{ link('https://example.com/c') }}"
    before = templates.cache_info()
    results = render_batch([job(source, contact={**ADA, "id": i}) for i in range(500)], PUBLIC_URL)
    after = templates.cache_info()
    assert after.misses - before.misses <= 1  # compiled once (if it was not already)...
    assert after.hits - before.hits >= 499  # ...and reused for the rest
    assert len({r.links[0][0] for r in results if isinstance(r, Rendered)}) == 500  # one token each


# -- persisted rows -------------------------------------------------------------------------------


def test_save_links_persists_what_rendering_produced(migrated_db: str) -> None:
    contact = Contact.create(email="ada@example.com")
    send = Send.create(idempotency_key="k1", channel="sms", contact=contact)
    rendered = [render(job(f"{{{{ link('https://example.com/{i}') }}}}"), PUBLIC_URL) for i in range(1200)]
    rows = [(token, url, contact.id, send.id, None, None) for r in rendered for token, url in r.links]

    assert save_links(rows) == 1200  # three chunks
    assert save_links([]) == 0
    saved = {link.token: (link.url, link.contact_id, link.send_id) for link in TrackedLink.select()}
    assert saved == {token: (url, contact.id, send.id) for token, url, *_ in rows}


def test_unsubscribe_tokens_are_persisted_in_order(migrated_db: str) -> None:
    first, second = Contact.create(email="a@example.com"), Contact.create(email="b@example.com")
    send = Send.create(idempotency_key="k2", channel="email", contact=first)

    tokens = make_unsubscribe_tokens([(first.id, "email", send.id), (second.id, "*", None)])

    assert len(set(tokens)) == 2
    stored = {t.token: (t.contact_id, t.channel, t.send_id) for t in UnsubscribeToken.select()}
    assert stored == {tokens[0]: (first.id, "email", send.id), tokens[1]: (second.id, "*", None)}
    assert unsubscribe_url(PUBLIC_URL, tokens[0]) == f"https://go.example.com/u/{tokens[0]}"
    assert make_unsubscribe_tokens([]) == []


@pytest.mark.parametrize("name", ["Ada\r\nBcc: all@example.com", "Ada\nBcc: all@example.com",
                                  "Ada\rBcc: all@example.com", "Ada\u2028Bcc: all@example.com",
                                  "Ada \x85\x0b\x0c Bcc: all@example.com"])
def test_line_breaks_in_a_rendered_subject_become_one_space_and_the_body_keeps_them(name: str) -> None:
    # Given a contact whose name carries a line break (a form's textarea, or a header injection)
    contact = {**ADA, "name": name}
    # When a subject and a body that both print it are rendered
    rendered = render(job("Dear {{ contact.name }}", subject="Hi {{ contact.name }}\n", contact=contact), PUBLIC_URL)
    # Then the subject is one header line, and the body is the text as given
    assert rendered.subject == "Hi Ada Bcc: all@example.com"
    assert rendered.body == f"Dear {name}"


# -- a rendered message is bounded (issue 10, follow-up defect 9) --------------------------------

def test_a_subject_over_998_characters_fails_its_send() -> None:
    # RFC 5322: a header line is at most 998 characters
    assert len(render(job("b", subject="{{ 'x' * 998 }}"), PUBLIC_URL).subject or "") == 998
    error = failure("b", subject="{{ 'x' * 999 }}")
    assert error.field == "subject" and "998" in str(error)
    assert isinstance(error, PermanentChannelError)  # failed once, never retried


def test_a_body_over_256_kib_fails_its_send() -> None:
    assert len(render(job(f"{{{{ 'x' * {templates.MAX_BODY_CHARS} }}}}"), PUBLIC_URL).body) == templates.MAX_BODY_CHARS
    error = failure(f"{{% for i in range(2) %}}{{{{ 'x' * {templates.MAX_BODY_CHARS // 2 + 1} }}}}{{% endfor %}}")
    assert error.field == "body" and "characters" in str(error)


# Ways a few characters of template become megabytes: each must fail without building them.
AMPLIFIERS = [
    "{{ 'x' * 30000000 }}",
    "{{ 30000000 * 'x' }}",
    "{{ ['x'] * 30000000 }}",
    "{{ 10 ** 100000000 }}",
    "{{ 'x'.ljust(30000000) }}",
    "{{ 'x'.center(30000000) }}",
    "{{ 'x'.zfill(30000000) }}",
    "{{ 'x' | center(30000000) }}",
    "{{ 'x' | indent(30000000, true) }}",
    "{{ '%30000000s' | format('x') }}",
    "{{ '%30000000s' % 'x' }}",
    "{{ '{:>30000000}'.format('x') }}",
    "{{ ('x' * 200000) | replace('x', 'x' * 200000) }}",
    "{{ ('x' * 200000).replace('x', 'x' * 200000) }}",
    "{% set ns = namespace(s='x' * 1000) %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ 1 }}",
    "{% set ns = namespace(s='x' * 1000) %}{% for i in range(30) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ 1 }}",
    "{{ range(100000000) | list | length }}",
    "{{ (range(10000) | join('x' * 100000)) | length }}",
    "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("body", AMPLIFIERS)
def test_a_template_cannot_build_a_huge_value(body: str) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        error = failure(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.field == "body"
    assert peak < 16 * 1024 * 1024, f"{peak / 1e6:.0f} MB held while failing"


def test_ordinary_templates_still_render() -> None:
    body = ("{{ '%5.2f' | format(3.14159) }} {{ '{:>6}'.format('ab') }} {{ 'ab' | center(6) }} {{ 2 ** 10 }} "
            "{{ 'ab' * 3 }} {{ [1, 2] + [3] }} {{ 'a' ~ 'b' ~ contact.name }} {{ range(3) | join(',') }} "
            "{{ contact.name | replace('A', 'a') }} {{ '{:,}'.format(1234567890) }}")
    assert render(job(body), PUBLIC_URL).body == " 3.14     ab   ab   1024 ababab [1, 2, 3] abAda 0,1,2 ada 1,234,567,890"


def test_campaign_apply_warns_about_a_subject_that_renders_too_long(migrated_db: str) -> None:
    from engine.campaign_file import parse_campaign_text
    from engine.campaigns import template_warnings

    spec = parse_campaign_text("slug: big\nname: Big\ntrigger: manual\nsteps:\n  - channel: email\n    delay: 0s\n"
                               "    subject: \"{{ 'x' * 30000000 }}\"\n    body: \"{{ 'y' * 1000 }}\"\n"
                               "  - channel: email\n    delay: 0s\n    subject: \"{{ 'x' * 1000 }}\"\n    body: hi\n",
                               "big.yaml")
    warnings = template_warnings([spec])
    assert [w.split(":")[1].strip() for w in warnings] == ["steps[0].subject", "steps[1].subject"], warnings


@pytest.mark.parametrize("body", ["{{ '%*s' | format(30000000, 'x') }}", "{{ '{:>{}}'.format('x', 30000000) }}",
                                  "{{ '{:.30000000f}'.format(1.5) }}", "{{ '%.*f' % (30000000, 1.5) }}"])
def test_a_width_from_the_arguments_is_bounded_too(body: str) -> None:
    assert "too large" in str(failure(body))


def test_long_numbers_in_format_strings_are_not_widths() -> None:
    body = "{{ 'order 12345678: {}'.format(1) }} {{ 'order 12345678: %s' | format(2) }} {{ '{:>3}'.format(12345678) }}"
    assert render(job(body), PUBLIC_URL).body == "order 12345678: 1 order 12345678: 2 12345678"


@pytest.mark.parametrize("body", ["{{ ['x' * 200000] * 1000 }}", "{{ (['x' * 200000] * 2) * 500 }}",
                                  "{{ (['x' * 200000] * 1) | join('') }}{{ ['x' * 200000, 'y' * 200000] | join }}",
                                  "{{ ''.join(['x' * 200000] * 1 + ['y' * 200000] * 1) }}"])
def test_a_list_is_weighed_by_what_it_prints(body: str) -> None:
    assert "too large" in str(failure(body))


def test_join_and_map_still_work() -> None:
    body = "{{ [1, 2, 3] | map('string') | join('-') }} {{ '+'.join(['a', 'b']) }} {{ contact.name | list | join }}"
    assert render(job(body), PUBLIC_URL).body == "1-2-3 a+b Ada"
