"""Campaign files (YAML): read, validate every field, and report every problem of a file at once.

The format is the contract's "Campaign file (YAML)", plus two optional keys::

    limits: {weekly_cap: 3, cooldown: 12h}       # per contact, for this campaign
    quiet_hours: {start: "21:00", end: "08:00"}   # in the contact's timezone; or: false

An absent ``limits`` key or ``quiet_hours`` means "the daemon's default"; ``quiet_hours: false``
means "none for this campaign". Both are stored in ``Campaign.limits`` as
``{"weekly_cap": N, "cooldown_s": S, "quiet_hours": {"start": "HH:MM", "end": "HH:MM"} | None}``.
A campaign may also say ``active: false`` to stop taking new enrolments.
"""

from __future__ import annotations

import difflib
import os
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.durations import DurationError, parse_duration
from engine.layouts import LayoutError, read_layout
from engine.templates import TemplateError, compile_check
from ground.channels import CHANNELS
from ground.errors import RetentiondError
from ground.vocabulary import EVENT_TYPES

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")
_TIME_RE = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")

_TOP_KEYS = ("slug", "name", "trigger", "exit_on", "steps", "limits", "quiet_hours", "active")
_REQUIRED_TOP = ("slug", "name", "trigger", "steps")
_STEP_KEYS = ("channel", "delay", "subject", "body", "html", "layout", "voice", "fallback")
_VOICE_KEYS = ("play", "optout_digit", "optout_prompt")
# '#' is not one: it ends a <Gather>'s input (finishOnKey) and never arrives as the key pressed
_DIGITS = frozenset("0123456789*")
_LIMIT_KEYS = ("weekly_cap", "cooldown")
_QUIET_KEYS = ("start", "end")
_TRIGGER_KEYS = ("event",)


MAX_FILE_CHARS = 1 << 20  # a campaign is a few kilobytes; anything near this is not one

# Values quoted in messages are cut short: a wrong value may be megabytes of YAML.
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 4, 4, 2


def _show(value: object) -> str:
    """repr() of a value from the file, bounded for messages."""
    return _SHORT.repr(value)


def _name(key: object) -> str:
    """A key from the file as it appears in a message's FIELD part, bounded."""
    text = str(key)
    return text if len(text) <= 60 else text[:57] + "..."


class _CampaignLoader(yaml.SafeLoader):
    """yaml's SafeLoader without aliases.

    ``*name`` makes a value a reference to an anchored one, so a few lines can stand for a
    structure of billions of nodes ("billion laughs"); printing or walking it eats the memory.
    A campaign file has no use for them.
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in campaign files: write the value out",
                event.start_mark)
        return super().compose_node(parent, index)


class CampaignFileError(RetentiondError):
    """A campaign file that cannot be applied. One line per problem: ``FILE: FIELD: problem``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class StepSpec:
    """One step as the file states it (delay in seconds after the previous step)."""

    channel: str
    delay_s: int
    body: str | None  # None only for an email step with html: the text part is made from it
    subject: str | None = None
    fallback_channel: str | None = None
    html: str | None = None  # an email's HTML part (a template, autoescaped)
    layout: str | None = None  # the layout's name, and its source as read at apply (engine/layouts.py)
    layout_html: str | None = None
    voice: Mapping[str, str] = field(default_factory=dict)  # a call's options (engine/voice.py)


@dataclass(frozen=True)
class CampaignSpec:
    """A validated campaign file, ready for apply_campaigns()."""

    slug: str
    name: str
    trigger_event: str | None  # None: manual enrolment only
    exit_on: tuple[str, ...]
    steps: tuple[StepSpec, ...]
    limits: Mapping[str, Any] = field(default_factory=dict)
    active: bool = True
    source: str = ""  # the file it came from, for messages


def load_campaign_file(path: str | os.PathLike[str], layouts_dir: str | None = None) -> CampaignSpec:
    """Read and validate one campaign file; raise CampaignFileError listing every problem."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read(MAX_FILE_CHARS + 1)
    except OSError as exc:
        raise CampaignFileError([f"{name}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise CampaignFileError([f"{name}: not UTF-8 text"]) from None
    if len(text) > MAX_FILE_CHARS:
        raise CampaignFileError([f"{name}: larger than {MAX_FILE_CHARS} characters: not a campaign file"])
    return parse_campaign_text(text, name, layouts_dir)


def parse_campaign_text(text: str, source: str, layouts_dir: str | None = None) -> CampaignSpec:
    """Validate the YAML text of a campaign; ``source`` names it in messages; the layouts its
    email steps name are read from ``layouts_dir`` (RETENTIOND_LAYOUTS_DIR)."""
    try:
        document = yaml.load(text, Loader=_CampaignLoader)  # noqa: S506 (a SafeLoader, minus aliases)
    except RecursionError:  # thousands of nested lists: no campaign file is that deep
        raise CampaignFileError([f"{source}: nested too deeply: not a campaign file"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CampaignFileError([f"{source}: {where}invalid YAML: {problem}"]) from None
    return _Validator(source, layouts_dir).campaign(document)


def _did_you_mean(key: object, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key)[:100], allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {_show(key)} ({hint}expected {', '.join(allowed)})"


class _Validator:
    """Walks one document and collects every problem instead of stopping at the first."""

    def __init__(self, source: str, layouts_dir: str | None = None) -> None:
        self.source = source
        self.layouts_dir = layouts_dir
        self.errors: list[str] = []

    def error(self, where: str, problem: str) -> None:
        if len(problem) > 300:  # values are quoted through _show(); this catches any other quoting
            problem = problem[:297] + "..."
        self.errors.append(f"{self.source}: {where}: {problem}")

    def mapping(self, value: object, where: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.error(where, f"expected a mapping, got {_kind(value)}")
            return None
        prefix = f"{where}." if where else ""
        for key in value:
            if key not in allowed:
                self.error(f"{prefix}{_name(key)}", _did_you_mean(key, allowed))
        for key in required:
            if key not in value or value[key] is None:
                self.error(f"{prefix}{key}", "required")
        return value

    def text(self, value: object, where: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.error(where, f"expected non-empty text, got {_kind(value)}")
            return None
        if "\x00" in value:
            # YAML's "\0": PostgreSQL text cannot hold it, and no message or name needs it.
            self.error(where, "holds a NUL character (\\0)")
            return None
        return value

    def template(self, value: object, where: str, html: bool = False) -> str | None:
        source = self.text(value, where)
        if source is not None:
            try:
                compile_check(source, where, html=html)
            except TemplateError as exc:
                self.error(where, exc.problem)
                return None
        return source

    def campaign(self, document: object) -> CampaignSpec:
        if document is None:
            raise CampaignFileError([f"{self.source}: the file is empty"])
        top = self.mapping(document, "", _TOP_KEYS, _REQUIRED_TOP)
        if top is None:
            raise CampaignFileError([f"{self.source}: expected a mapping with {', '.join(_REQUIRED_TOP)}, "
                                     f"got {_kind(document)}"])
        slug = self.slug(top.get("slug"))
        name = self.text(top["name"], "name") if top.get("name") is not None else None
        if name is not None and len(name) > 255:
            self.error("name", "at most 255 characters")
        trigger = self.trigger(top["trigger"]) if top.get("trigger") is not None else None
        exit_on = self.exit_on(top.get("exit_on", []))
        steps = self.steps(top["steps"]) if top.get("steps") is not None else ()
        limits = self.limits(top.get("limits"), top.get("quiet_hours"), "quiet_hours" in top)
        active = top.get("active", True)
        if not isinstance(active, bool):
            self.error("active", f"expected true or false, got {_kind(active)}")
        if self.errors or slug is None or name is None:
            raise CampaignFileError(self.errors)
        return CampaignSpec(slug=slug, name=name, trigger_event=trigger, exit_on=exit_on, steps=steps,
                            limits=limits, active=bool(active), source=self.source)

    def slug(self, value: object) -> str | None:
        if value is None:
            return None  # already reported as required
        if not isinstance(value, str) or not SLUG_RE.fullmatch(value):
            self.error("slug", f"expected lowercase letters, digits, '-' and '_' (at most 100, starting "
                               f"with a letter or digit), got {_show(value)}")
            return None
        return value

    def trigger(self, value: object) -> str | None:
        if value == "manual":
            return None
        if isinstance(value, str) and value in EVENT_TYPES:
            self.error("trigger", f"write {{event: {value}}} (or: manual)")
            return None
        if not isinstance(value, dict):
            self.error("trigger", f"expected {{event: TYPE}} or 'manual', got {_show(value)}")
            return None
        trigger = self.mapping(value, "trigger", _TRIGGER_KEYS, _TRIGGER_KEYS) or {}
        event = trigger.get("event")
        if event is not None and event not in EVENT_TYPES:
            self.error("trigger.event", f"unknown event type {_show(event)} (one of {', '.join(EVENT_TYPES)})")
        return event if isinstance(event, str) else None

    def exit_on(self, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error("exit_on", f"expected a list of event types, got {_kind(value)}")
            return ()
        events: list[str] = []
        for index, event in enumerate(value):
            if event not in EVENT_TYPES:
                self.error(f"exit_on[{index}]", f"unknown event type {_show(event)} (one of {', '.join(EVENT_TYPES)})")
            elif event not in events:
                events.append(event)
        return tuple(events)

    def steps(self, value: object) -> tuple[StepSpec, ...]:
        if not isinstance(value, list) or not value:
            self.error("steps", f"expected a non-empty list of steps, got {_kind(value)}")
            return ()
        return tuple(step for index, raw in enumerate(value) if (step := self.step(raw, f"steps[{index}]")))

    def step(self, value: object, where: str) -> StepSpec | None:
        raw = self.mapping(value, where, _STEP_KEYS, ("channel", "delay"))
        if raw is None:
            return None
        channel = raw.get("channel")
        markup = CHANNELS[channel].markup if isinstance(channel, str) and channel in CHANNELS else None
        if channel is not None and channel not in CHANNELS:
            self.error(f"{where}.channel", f"unknown channel {_show(channel)} (one of {', '.join(CHANNELS)})")
        delay_s = None
        if raw.get("delay") is not None:
            try:
                delay_s = parse_duration(raw["delay"])
            except DurationError as exc:
                self.error(f"{where}.delay", str(exc))
        body = self.template(raw["body"], f"{where}.body") if raw.get("body") is not None else None
        html, layout, layout_html = self.html_part(raw, where, markup)
        if raw.get("body") is None and raw.get("html") is None:  # an invalid html has its own error
            self.error(f"{where}.body", "required" + (" (or html)" if markup == "html" else ""))
        voice = self.voice(raw["voice"], f"{where}.voice", markup) if raw.get("voice") is not None else {}
        subject = None
        if raw.get("subject") is not None:
            subject = self.template(raw["subject"], f"{where}.subject")
        elif isinstance(channel, str) and channel in CHANNELS and CHANNELS[channel].has_subject:
            self.error(f"{where}.subject", f"required for an {channel} step")
        fallback = raw.get("fallback")
        if fallback is not None:
            if fallback not in CHANNELS:
                self.error(f"{where}.fallback", f"unknown channel {_show(fallback)} (one of {', '.join(CHANNELS)})")
            elif fallback == channel:
                self.error(f"{where}.fallback", f"must differ from the step's channel {_show(channel)}")
        if not isinstance(channel, str) or channel not in CHANNELS or delay_s is None or (body is None and html is None):
            return None
        return StepSpec(channel=channel, delay_s=delay_s, body=body, subject=subject,
                        fallback_channel=fallback, html=html, layout=layout, layout_html=layout_html, voice=voice)

    def html_part(self, raw: Mapping[str, Any], where: str, markup: str | None) -> tuple[str | None, ...]:
        """(html, layout name, layout source) of an email step."""
        if raw.get("html") is None:
            if raw.get("layout") is not None:
                self.error(f"{where}.layout", "a layout frames the step's html: give html too" if markup == "html"
                           else f"only an email step has a layout (this is {_show(raw.get('channel'))})")
            return None, None, None
        if markup != "html":
            self.error(f"{where}.html", f"only an email step has an HTML part (this is {_show(raw.get('channel'))})")
            return None, None, None
        html = self.template(raw["html"], f"{where}.html", html=True)
        name = raw.get("layout")
        if name is None:
            return html, None, None
        if self.layouts_dir is None:
            self.error(f"{where}.layout", "layouts are not available here (RETENTIOND_LAYOUTS_DIR)")
            return html, None, None
        try:
            return html, str(name), read_layout(self.layouts_dir, name)
        except LayoutError as exc:
            self.error(f"{where}.layout", str(exc))
            return html, None, None

    def voice(self, value: object, where: str, markup: str | None) -> dict[str, str]:
        if markup != "twiml":
            self.error(where, "only a call step has voice options")
            return {}
        raw = self.mapping(value, where, _VOICE_KEYS)
        if raw is None:
            return {}
        options: dict[str, str] = {}
        play = raw.get("play")
        if play is not None:
            if not isinstance(play, str) or not re.fullmatch(r"https?://\S+", play) or len(play) > 2000:
                self.error(f"{where}.play", "expected the http(s) URL of an audio file")
            else:
                options["play"] = play
        digit = raw.get("optout_digit")
        if digit is not None:
            digit = str(digit) if isinstance(digit, int) and not isinstance(digit, bool) else digit
            if not isinstance(digit, str) or digit not in _DIGITS:
                self.error(f"{where}.optout_digit", "expected one key: 0-9 or * (# ends a keypad entry)")
            else:
                options["optout_digit"] = digit
        prompt = raw.get("optout_prompt")
        if prompt is not None:
            text = self.text(prompt, f"{where}.optout_prompt")
            if text is not None:
                options["optout_prompt"] = text
        if "optout_prompt" in options and raw.get("optout_digit") is None:  # an invalid digit has its own error
            self.error(f"{where}.optout_prompt", "give optout_digit too")
        return options

    def limits(self, value: object, quiet: object, quiet_given: bool) -> dict[str, Any]:
        limits: dict[str, Any] = {}
        if value is not None:
            raw = self.mapping(value, "limits", _LIMIT_KEYS) or {}
            if "weekly_cap" in raw:
                cap = raw["weekly_cap"]
                if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                    self.error("limits.weekly_cap", f"expected a whole number of sends, at least 1, got {_show(cap)}")
                else:
                    limits["weekly_cap"] = cap
            if "cooldown" in raw:
                try:
                    limits["cooldown_s"] = parse_duration(raw["cooldown"])
                except DurationError as exc:
                    self.error("limits.cooldown", str(exc))
        if quiet_given:
            if quiet is False:
                limits["quiet_hours"] = None
            else:
                window = self.mapping(quiet, "quiet_hours", _QUIET_KEYS, _QUIET_KEYS) if quiet is not True else None
                if quiet is True:
                    self.error("quiet_hours", "expected {start: \"HH:MM\", end: \"HH:MM\"} or false")
                if window is not None:
                    start = self.clock(window.get("start"), "quiet_hours.start")
                    end = self.clock(window.get("end"), "quiet_hours.end")
                    if start and end and start == end:
                        self.error("quiet_hours", "start and end are the same time")
                    elif start and end:
                        limits["quiet_hours"] = {"start": start, "end": end}
        return limits

    def clock(self, value: object, where: str) -> str | None:
        if value is None:
            return None  # already reported as required
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
            # YAML 1.1 reads an unquoted 21:30 as the sexagesimal number 1290 (minutes): undo it.
            value = f"{value // 60:02d}:{value % 60:02d}"
        match = _TIME_RE.fullmatch(value.strip()) if isinstance(value, str) else None
        if match:
            return f"{int(match[1]):02d}:{match[2]}"
        self.error(where, f"expected a time \"HH:MM\" (00:00 to 23:59), got {_show(value)}")
        return None


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else "text"
    return {"dict": "a mapping", "list": "a list", "bool": repr(value).lower()}.get(type(value).__name__,
                                                                                _show(value))
