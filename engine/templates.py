"""Message templates: Jinja2 in its immutable sandbox, rendered without touching the database.

What a template sees:

- ``contact``: the contact's fields ``id``, ``external_id``, ``email``, ``phone``, ``name``,
  ``timezone`` and ``attributes``. A field the contact does not have (``None`` or absent) renders
  as empty text. Free attributes are reachable both as ``contact.attributes.plan`` and, when no
  field has that name, as ``contact.plan`` (fields win: an attribute called ``email`` is only
  ``contact.attributes.email``). ``contact.attributes['items']`` works for any key, even one
  that is not a valid identifier.
- ``channel``: the step's channel name.
- ``link(url)``: an absolute http(s) URL, rewritten to ``{public_url}/t/{token}``; the click
  is recorded there and redirected to ``url``. The same URL twice in one message is one token.

Undefined names are strict (``StrictUndefined``): a misspelt variable, or an attribute this
contact does not have, fails the render with a TemplateError instead of sending "Hi ," to 50,000
people. Templates that expect optional attributes say so: ``{{ contact.plan | default('') }}``
or ``{% if contact.plan is defined %}``.

The subject is header text (an email's Subject, a push title): line breaks in it — CR, LF and
every other character ``str.splitlines`` breaks on, wherever they come from (a contact's name, an
attribute, the template's own trailing newline) — are replaced by one space, so a name such as
``"Ada\r\nBcc: ..."`` cannot add a header and a subject is never refused for a stray newline.
Bodies keep their line breaks.

Autoescaping is off: sms, call and push bodies are plain text. Sandbox violations (``''.__class__``,
mutating a list...) are TemplateErrors. Compiled templates are cached by source.

A rendered message is bounded: a subject at most MAX_SUBJECT_CHARS (998, RFC 5322's line limit),
a body at most MAX_BODY_CHARS (256 KiB); over that, the send fails with a TemplateError (permanent,
never retried) and ``campaign apply`` warns. The output is counted as it is produced, and the
constructs that make a few characters of template into megabytes are bounded before they build
anything: repetition and powers (``'x' * 30000000``, ``10 ** 10 ** 8``), ``+`` and ``~``, padding
(``center``, ``ljust``, ``indent``, ``%30000000s``, ``{:>30000000}``), ``replace`` and ``join``,
and ``range`` (at most MAX_RANGE items). No value a template computes may be longer than a body.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jinja2
import markupsafe
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine import email_parts
from ground.errors import PermanentChannelError

CONTACT_FIELDS = ("id", "external_id", "email", "phone", "name", "timezone", "attributes")
TEMPLATE_NAMES = frozenset({"contact", "channel", "link", "unsubscribe_url"})
LAYOUT_NAMES = frozenset({"content"})  # what a layout has beyond a step's names: the step's HTML
# What ``unsubscribe_url`` renders to while planning: the send's own /u/<token> is made when the
# send is checked (engine/sends.py, the same token as its List-Unsubscribe header) and put here.
UNSUBSCRIBE_PLACEHOLDER = "_unsubscribe_"  # never a token: tokens are 24 characters
TOKEN_BYTES = 18  # 144 bits, 24 URL-safe characters: unguessable, and fits TrackedLink.token
_CACHE_SIZE = 2048
# What str.splitlines() breaks on (and so what Python's email headers refuse), with the blanks around it.
_LINE_BREAKS = re.compile(r"[ \t]*[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+[ \t]*")


MAX_SUBJECT_CHARS = 998  # RFC 5322: a header line is at most 998 characters
MAX_BODY_CHARS = 256 * 1024
MAX_VALUE_CHARS = MAX_BODY_CHARS  # no value a template computes may be longer than a message
MAX_RANGE = 10_000  # range() items (Jinja's sandbox allows 100,000: nested loops multiply them)
MAX_EXPONENT = 1024  # ** beyond this builds numbers of thousands of digits
# A width or precision of a million or more in a format string: "%30000000s", "{:>30000000}"
_WIDE_FORMAT = re.compile(r"%[-#0 +]*(?:\d{7,}|\d*\.\d{7,})|\{[^{}]*:[^{}]*\d{7,}")
# A width taken from the arguments: "%*s", "{:>{}}"
_WIDTH_FROM_ARGUMENTS = re.compile(r"%[-#0 +]*\*|%[-#0 +]*\d*\.\*|\{[^{}]*\{")
_PADDING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "indent"})


class TemplateError(PermanentChannelError):
    """A template that does not compile or render. Names the field and the Jinja error, never contact data."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class RenderJob:
    """One message to render: the contact's fields and the step's template sources. An email step
    may give ``html`` (and a ``layout`` around it); its ``body`` (the text part) may then be None:
    it is made from the HTML."""

    contact: Mapping[str, object]
    subject: str | None
    body: str | None
    channel: str
    html: str | None = None
    layout: str | None = None


@dataclass(frozen=True)
class Rendered:
    """A rendered message and the tracked links it uses, as (token, target url) pairs; ``html``
    is the HTML part with its CSS inlined (engine/email_parts.py)."""

    subject: str | None
    body: str
    links: tuple[tuple[str, str], ...] = ()
    html: str | None = None


def _finalize(value: object) -> object:
    # JSON nulls in attributes print as nothing, not "None".
    return "" if value is None else value


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined with a message that names the missing key, not our wrapper class."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        name = self._undefined_name
        if self._undefined_hint or self._undefined_obj is jinja2.utils.missing:
            return str(super()._undefined_message)
        if not (isinstance(name, str) and name.isidentifier() and len(name) <= 64):
            # A computed key such as {{ table[contact.email] }} may be contact data: not quoted.
            return "no such key"
        if isinstance(self._undefined_obj, _Record):
            return f"no field or attribute {name!r} (use | default('') if it is optional)"
        return str(super()._undefined_message)


class _TooLarge(Exception):
    """A value or an output over its bound; the message names the bound, never the value."""


def _weight(value: object, budget: int = MAX_VALUE_CHARS) -> int:
    """About how many characters ``str(value)`` has, counted until it passes ``budget``: a list
    of the same long string 10,000 times weighs its printed size, not 10,000."""
    total, stack = 0, [value]
    while stack and total <= budget:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            total += 1
    return total


def _check_size(value: object) -> object:
    if _weight(value) > MAX_VALUE_CHARS:
        raise _TooLarge(f"a value longer than {MAX_VALUE_CHARS} characters")
    return value


def _check_widths(name: str, owner: object, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse, before they run, the calls whose result can be far larger than their inputs."""
    if name in _PADDING:
        if any(isinstance(a, int) and a > MAX_VALUE_CHARS for a in (*args, *kwargs.values())):
            raise _TooLarge(f"{name}() wider than {MAX_VALUE_CHARS} characters")
    elif name in ("format", "format_map") and isinstance(owner, str):
        if _WIDE_FORMAT.search(owner):
            raise _TooLarge("a format width of a million or more")
        if _WIDTH_FROM_ARGUMENTS.search(owner) and any(
                isinstance(a, int) and a > MAX_VALUE_CHARS for a in (*args, *kwargs.values())):
            raise _TooLarge(f"a format width over {MAX_VALUE_CHARS}")
    elif name == "replace" and isinstance(owner, str) and len(args) >= 2 \
            and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        # "" matches between every two characters: the new text goes in len + 1 times
        inserted = owner.count(old) if old else len(owner) + 1
        if len(owner) + inserted * (len(new) - len(old)) > MAX_VALUE_CHARS:
            raise _TooLarge(f"replace() longer than {MAX_VALUE_CHARS} characters")


def _check_join(separator: object, items: list[Any]) -> None:
    if _weight(items) + len(str(separator)) * max(len(items) - 1, 0) > MAX_VALUE_CHARS:
        raise _TooLarge(f"join() longer than {MAX_VALUE_CHARS} characters")


def _bounded_filter(name: str, function: Any) -> Any:
    """A built-in filter with the same bounds as the string methods it stands for."""

    @functools.wraps(function)  # keeps Jinja's pass_context/pass_eval_context marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        # Marked filters get Jinja's context first: the filtered value is the first other argument.
        first = next((i for i, a in enumerate(args) if not isinstance(
            a, jinja2.runtime.Context | jinja2.Environment | nodes.EvalContext)), None)
        if first is not None:
            if name == "join":
                args = (*args[:first], list(args[first]), *args[first + 1:])  # a generator is read once
                separator = args[first + 1] if len(args) > first + 1 else kwargs.get("d", "")
                if kwargs.get("attribute") is None and len(args) <= first + 2:
                    _check_join(separator, args[first])
            else:
                _check_widths(name, args[first], tuple(args[first + 1:]), kwargs)
        return _check_size(function(*args, **kwargs))

    return bounded


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise _TooLarge(f"range() of more than {MAX_RANGE} items")
    return numbers


class _BoundedCodeGenerator(CodeGenerator):
    """``a ~ b`` joins through the environment, so the result is bounded like ``a + b``."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802
        self.write("environment.bounded_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every way to a huge value bounded (see the module's doc)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(times, int) and _weight(sequence) * max(times, 0) > MAX_VALUE_CHARS:
                raise _TooLarge(f"a repetition longer than {MAX_VALUE_CHARS}")
        elif operator == "**":
            if isinstance(right, int) and right > MAX_EXPONENT and isinstance(left, int) and abs(left) > 1:
                raise _TooLarge(f"a power above {MAX_EXPONENT}")
        elif operator == "%" and isinstance(left, str):
            _check_widths("format", left, right if isinstance(right, tuple) else (right,), {})
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: jinja2.runtime.Context, __obj: Any,  # noqa: N805
             *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name == "join" and len(args) == 1:
                args = (list(args[0]),)  # a generator is read once
                _check_join(owner, args[0])
            else:
                _check_widths(name, owner, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        # Jinja hands templates its own wrapper of str.format: bounded here, where it is made.
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            _check_widths("format", template, args, kwargs)  # "{:>{}}".format(x, 30000000) too
            return str(_check_size(wrapped(*args, **kwargs)))

        return bounded

    @staticmethod
    def bounded_join(values: Iterable[object]) -> str:
        parts = [str(v) for v in values]
        if sum(map(len, parts)) > MAX_VALUE_CHARS:
            raise _TooLarge(f"a value longer than {MAX_VALUE_CHARS} characters")
        return "".join(parts)


def _environment(autoescape: bool) -> _BoundedSandbox:
    env = _BoundedSandbox(undefined=_Undefined, autoescape=autoescape, finalize=_finalize,
                          keep_trailing_newline=True)
    env.globals["range"] = _bounded_range
    env.filters.update({name: _bounded_filter(name, f) for name, f in env.filters.items()})
    return env


_ENV = _environment(autoescape=False)  # text: an SMS, a subject, what a call says
# HTML: every value a template prints is escaped (a contact called "<script>" stays text), except
# what is marked safe (a layout's ``content``: the step's own HTML, escaped when it was rendered)
_HTML_ENV = _environment(autoescape=True)
_ALLOWED_NAMES = TEMPLATE_NAMES | frozenset(_ENV.globals)


class _LinkRejected(Exception):
    """link() was given something other than an absolute http(s) URL."""


class _Record:
    """Read-only attribute access over a mapping for templates.

    It has no public methods, so an attribute called ``items`` or ``keys`` is the attribute and
    not a dict method; nested mappings are wrapped the same way.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self._data[name])
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __str__(self) -> str:
        return str(dict(self._data))


def _wrap(value: Any) -> Any:
    return _Record(value) if isinstance(value, Mapping) else value


def _contact_record(contact: Mapping[str, object]) -> _Record:
    attributes = contact.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        attributes = {}
    merged: dict[str, Any] = dict(attributes)  # attributes first, so fields win on a clash
    for name in CONTACT_FIELDS:
        value = contact.get(name)
        merged[name] = "" if value is None else value
    merged["attributes"] = attributes
    return _Record(merged)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile(source: str, html: bool = False) -> jinja2.Template | jinja2.TemplateSyntaxError:
    # A broken template is cached too: 50,000 renders of it should not parse it 50,000 times.
    try:
        return (_HTML_ENV if html else _ENV).from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        return exc


def cache_info() -> Any:
    """Hits and misses of the compiled-template cache (functools' CacheInfo)."""
    return _compile.cache_info()


def _syntax_problem(exc: jinja2.TemplateSyntaxError) -> str:
    return f"template syntax error at line {exc.lineno}: {exc.message}"


def compile_check(source: str, field: str, html: bool = False, layout: bool = False) -> frozenset[str]:
    """Raise TemplateError if ``source`` does not compile or names a variable templates never have
    (a ``layout`` also has ``content``); returns the names it uses."""
    compiled = _compile(source, html)
    if isinstance(compiled, jinja2.TemplateSyntaxError):
        raise TemplateError(field, _syntax_problem(compiled))
    used = frozenset(meta.find_undeclared_variables(_ENV.parse(source)))
    allowed = _ALLOWED_NAMES | (LAYOUT_NAMES if layout else frozenset())
    unknown = sorted(used - allowed)
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise TemplateError(field, f"unknown variable {names} (templates have "
                                   f"{', '.join(sorted(allowed - frozenset(_ENV.globals)))})")
    return used


class _Links:
    """The link() of one message: one token per distinct URL, collected in order."""

    def __init__(self, public_url: str) -> None:
        self.base = public_url.rstrip("/")
        self.by_url: dict[str, str] = {}

    def link(self, url: object) -> str:
        if not isinstance(url, str):
            raise _LinkRejected(f"link() needs a URL string, got {type(url).__name__}")
        parts = urlsplit(url.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            # The URL itself may carry contact data, so only its scheme goes into the message.
            raise _LinkRejected(f"link() needs an absolute http(s) URL (got scheme {parts.scheme or 'none'!r})")
        token = self.by_url.get(url)
        if token is None:
            token = self.by_url[url] = secrets.token_urlsafe(TOKEN_BYTES)
        return f"{self.base}/t/{token}"


def _render_one(source: str, field: str, context: dict[str, Any], limit: int, html: bool = False) -> str:
    compiled = _compile(source, html)
    if isinstance(compiled, jinja2.TemplateSyntaxError):
        raise TemplateError(field, _syntax_problem(compiled))
    try:
        # Counted as it is produced: a loop of small pieces stops at the limit, not at the end.
        pieces, size = [], 0
        for piece in compiled.generate(context):
            size += len(piece)
            if size > limit:
                raise TemplateError(field, f"renders longer than {limit} characters")
            pieces.append(piece)
        return "".join(pieces)
    except TemplateError:
        raise
    except _TooLarge as exc:
        raise TemplateError(field, f"renders too large: {exc}") from None
    except _LinkRejected as exc:
        raise TemplateError(field, str(exc)) from None
    except jinja2.TemplateError as exc:
        # Undefined names and sandbox violations: Jinja's message names template-side things only.
        raise TemplateError(field, f"{type(exc).__name__}: {exc.message}") from None
    except Exception as exc:
        # Anything else (a filter's ValueError...) may quote a contact's value: name the type only.
        raise TemplateError(field, f"render failed: {type(exc).__name__}") from None


def unsubscribe_placeholder(public_url: str) -> str:
    """What ``{{ unsubscribe_url }}`` renders to until the send is checked (see UNSUBSCRIBE_PLACEHOLDER)."""
    return f"{public_url.rstrip('/')}/u/{UNSUBSCRIBE_PLACEHOLDER}"


def one_line(text: str) -> str:
    """Header text on one line: each run of line breaks becomes one space (none at either end)."""
    if not _LINE_BREAKS.search(text):
        return text
    return _LINE_BREAKS.sub(" ", text).strip(" ")


def render(job: RenderJob, public_url: str) -> Rendered:
    """Render one message; raise TemplateError. Writes nothing: the caller saves ``links``."""
    links = _Links(public_url)
    context = {"contact": _contact_record(job.contact), "channel": job.channel, "link": links.link,
               "unsubscribe_url": unsubscribe_placeholder(public_url)}
    subject = None
    if job.subject is not None:
        # Cut at the body's bound while rendering: line breaks are folded before the header's bound
        subject = one_line(_render_one(job.subject, "subject", context, MAX_BODY_CHARS))
        if len(subject) > MAX_SUBJECT_CHARS:
            raise TemplateError("subject", f"renders longer than {MAX_SUBJECT_CHARS} characters "
                                           "(an email header line's limit)")
    html = None
    if job.html is not None:
        html = _render_one(job.html, "html", context, MAX_BODY_CHARS, html=True)
        if job.layout is not None:
            html = _render_one(job.layout, "layout", {**context, "content": markupsafe.Markup(html)},
                               MAX_BODY_CHARS, html=True)
        try:
            html = email_parts.inline_css(html)
        except email_parts.EmailPartError as exc:
            raise TemplateError("html", str(exc)) from None
        if len(html) > MAX_BODY_CHARS:
            raise TemplateError("html", f"renders longer than {MAX_BODY_CHARS} characters once its CSS is inlined")
    if job.body is not None:
        body = _render_one(job.body, "body", context, MAX_BODY_CHARS)
    elif html is not None:
        body = email_parts.text_from_html(html)
        if len(body) > MAX_BODY_CHARS:
            raise TemplateError("html", f"its text part is longer than {MAX_BODY_CHARS} characters")
    else:
        raise TemplateError("body", "a message needs a body (or, for an email, html)")
    return Rendered(subject, body, tuple((token, url) for url, token in links.by_url.items()), html)


def render_batch(jobs: Iterable[RenderJob], public_url: str) -> list[Rendered | TemplateError]:
    """Render many messages; a failed one is its TemplateError in place, the others go on."""
    results: list[Rendered | TemplateError] = []
    for job in jobs:
        try:
            results.append(render(job, public_url))
        except TemplateError as exc:
            results.append(exc)
    return results
