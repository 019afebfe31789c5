"""One frozen settings object, built once from ``RETENTIOND_*`` variables and an optional TOML file.

The TOML file is flattened into the same names the environment uses (``[rates] sms = "1/s"`` is
``RETENTIOND_RATE_SMS``), then the environment is laid over it: the environment wins, and there is
one parser and one set of error messages for both.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import difflib
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from ground.channels import CHANNELS
from ground.errors import ConfigError
from ground.urls import postgres_params, redact_url
from ground.vocabulary import PROVIDERS, WEBHOOK_SCHEMES

PREFIX = "RETENTIOND_"
_PERIODS_S = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smh])\s*$")


class Secret(str):
    """A string that never shows itself in repr(), logs or tracebacks of settings."""

    def __repr__(self) -> str:
        return "Secret('**********')"


@dataclass(frozen=True)
class Rate:
    """A rate limit: at most ``count`` sends per ``period_s`` seconds. ``None`` count means unlimited."""

    count: float | None
    period_s: float = 1.0

    @property
    def per_second(self) -> float | None:
        return None if self.count is None else self.count / self.period_s

    @property
    def interval_s(self) -> float:
        """Seconds between two sends at this rate (0 when unlimited)."""
        return 0.0 if not self.count else self.period_s / self.count

    @classmethod
    def parse(cls, text: str, setting: str) -> Rate:
        if text.strip().lower() in ("unlimited", "none", "off"):
            return cls(None)
        match = _RATE_RE.match(text)
        if not match:
            raise ConfigError(setting, f"expected a rate such as '10/s', '300/m' or 'unlimited', got {text!r}")
        count, multiple, unit = float(match[1]), int(match[2] or 1), match[3]
        if not math.isfinite(count) or multiple > 1_000_000:  # 400 digits read as infinity
            raise ConfigError(setting, "too large a number: use 'unlimited' to lift the limit")
        if count <= 0 or multiple <= 0:
            raise ConfigError(setting, "a rate must be positive (use 'unlimited' to lift the limit)")
        return cls(count, multiple * _PERIODS_S[unit])


@dataclass(frozen=True)
class Destination:
    """Where events go out (engine/events_out.py): a URL, the Standard Webhooks secret that signs
    what it gets, and the event types it wants."""

    name: str
    url: str
    secret: Secret
    events: frozenset[str]


@dataclass(frozen=True)
class Source:
    """A webhook sender: how it signs, and the secret it signs with."""

    name: str
    scheme: str
    secret: Secret | None


# ---------------------------------------------------------------------------------------------
# How a scalar setting is declared: its default and its rules, in one place


_RULES = "retentiond.rules"  # the key of a scalar setting's Rules in its field's metadata


@dataclass(frozen=True)
class Rules:
    """What one scalar setting accepts. Each message is the line a user sees after the variable's name.

    Bounds: ``minimum`` <= value <= ``maximum``, ``above`` < value < ``below``. A failed bound says
    ``too_low`` or ``too_high`` (derived when not given); ``message`` replaces every derived message.
    ``check`` returns the problem of a value that needs more than bounds or choices, else None.
    """

    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    below: float | None = None
    choices: tuple[str, ...] = ()
    fold: Callable[[str], str] | None = None  # applied to the value before it is looked up in choices
    check: Callable[[Any], str | None] | None = None
    too_low: str | None = None
    too_high: str | None = None
    message: str | None = None
    help: str = ""

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (the parsed one), or None."""
        if (self.minimum is not None and value < self.minimum) or (self.above is not None and value <= self.above):
            return self.message or self.too_low or (
                f"must be at least {self.minimum}" if self.minimum is not None
                else "must be positive" if self.above == 0 else f"must be more than {self.above}")
        if (self.maximum is not None and value > self.maximum) or (self.below is not None and value >= self.below):
            return self.message or self.too_high or (
                f"must be at most {self.maximum:,}" if self.maximum is not None else f"must be under {self.below:,}")
        if self.choices and (self.fold(value) if self.fold else value) not in self.choices:
            quoted = [repr(choice) for choice in self.choices]
            return self.message or f"expected {', '.join(quoted[:-1])} or {quoted[-1]}"
        return self.check(value) if self.check else None


def setting(default: Any, *, minimum: float | None = None, above: float | None = None,
            maximum: float | None = None, below: float | None = None, choices: tuple[str, ...] = (),
            fold: Callable[[str], str] | None = None, check: Callable[[Any], str | None] | None = None,
            too_low: str | None = None, too_high: str | None = None, message: str | None = None,
            help: str = "") -> Any:
    """A scalar field of Settings, read from ``RETENTIOND_<FIELD NAME IN CAPITALS>`` as its type says."""
    rules = Rules(minimum=minimum, above=above, maximum=maximum, below=below, choices=choices, fold=fold,
                  check=check, too_low=too_low, too_high=too_high, message=message, help=help)
    return field(default=default, metadata={_RULES: rules})


# ---------------------------------------------------------------------------------------------
# Checks of the values that need more than a range or a list of choices. Messages never quote a
# value that may hold a secret (URLs carry passwords).

MAX_SOURCE_NAME_CHARS = 64  # inbound_event.source (db/models.py)
MIN_SECRET_CHARS = 16  # ADMIN_TOKEN and source secrets: 16 random characters are beyond guessing online
MIN_STANDARD_KEY_BYTES = 16  # a `standard` source's whsec_ key: 128 bits once base64-decoded
_WHSEC_PREFIX = "whsec_"


def _secret_problem(secret: str, scheme: str | None) -> str | None:
    """Refuse a secret too short to resist guessing. Messages never quote the secret."""
    if scheme == "standard":
        # Standard Webhooks signs with the base64-decoded bytes after whsec_; its library drops
        # characters outside the alphabet without a word, so a typo would silently change the key.
        body = secret.strip().removeprefix(_WHSEC_PREFIX)
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except binascii.Error:
            return f"expected {_WHSEC_PREFIX}<base64 of at least {MIN_STANDARD_KEY_BYTES} random bytes>; this is not base64"
        if len(key) < MIN_STANDARD_KEY_BYTES:
            return (f"too short: the key after {_WHSEC_PREFIX} must decode to at least "
                    f"{MIN_STANDARD_KEY_BYTES} bytes (e.g. {_WHSEC_PREFIX}$(openssl rand -base64 32))")
        return None
    if len(secret.strip()) < MIN_SECRET_CHARS:
        return f"too short: at least {MIN_SECRET_CHARS} characters (e.g. $(openssl rand -hex 32))"
    return None


def _admin_token_problem(token: Secret | None) -> str | None:
    # empty means "not set": the admin API refuses every request
    return _secret_problem(token, None) if token else None


def _database_url_problem(url: str) -> str | None:
    db = urlsplit(url)
    if db.scheme not in ("sqlite", "postgresql", "postgres"):
        return "expected sqlite:///path/to.db or postgresql://user@host:port/db"
    if db.scheme == "sqlite" and not (db.path or db.netloc):
        return "a sqlite URL needs a file path: sqlite:///var/retentiond.db"
    if db.scheme != "sqlite":
        # libpq's own parser (the one that connects) reads it: several hosts and ports
        # (postgresql://u:p@db1:5432,db2:5433/app), query parameters; the message never quotes the URL.
        try:
            postgres_params(url)
        except ValueError as exc:
            return str(exc)
    return None


def _broker_url_problem(urls: str) -> str | None:
    # Several RabbitMQ URLs may be given, separated by ';' (tried in order): check each.
    brokers = urls.split(";")
    for url in brokers:
        try:
            broker = urlsplit(url.strip())
            _ = broker.port
        except ValueError:
            return "a URL whose port is not a number"
        if broker.scheme not in ("amqp", "amqps") and not (broker.scheme == "memory" and len(brokers) == 1):
            return "expected amqp://user:pass@host:5672/vhost (several: separated by ';') or memory://"
    return None


def _public_url_problem(url: str) -> str | None:
    public = urlsplit(url)
    if public.scheme not in ("http", "https") or not public.netloc:
        return "expected an absolute http(s) URL"
    return None


def parse_quiet_hours(text: str) -> tuple[dt.time, dt.time] | None:
    """``"21:00-08:00"`` -> (21:00, 08:00); ``"off"`` -> None. Raises ValueError."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    start, _, end = text.partition("-")
    return dt.time.fromisoformat(start.strip()), dt.time.fromisoformat(end.strip())


def _quiet_hours_problem(text: str) -> str | None:
    try:
        parse_quiet_hours(text)
    except ValueError:
        return "expected HH:MM-HH:MM (e.g. 21:00-08:00) or 'off'"
    return None


def _timezone_problem(name: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "expected an IANA timezone such as Europe/Paris"
    return None


def _region_problem(region: str) -> str | None:
    import phonenumbers  # imported here: only validation needs it

    if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        return "expected a two-letter region code such as US, GB or FR"
    return None


def _directory_problem(path: str) -> str | None:
    return None if path.strip() else "must name a directory"


# Upper bounds. A whole number past its ceiling breaks something: day counts overflow a timedelta
# at the retention job, process and thread counts would exhaust the host, a retry count loops for
# ever. SQLite's busy_timeout is a 32-bit count of milliseconds; a tick or a stop waiting longer
# than an hour is a typo for minutes or milliseconds, never a plan.
_AN_HOUR = "at most 3600 (an hour, in seconds)"
_UNDER_AN_HOUR = "must be positive and under an hour (seconds)"
_MAX_DAYS = 36_500
_MAX_COUNT = 1_000_000
_MAX_BACKOFF_MS = 86_400_000


@dataclass(frozen=True)
class Settings:
    """Every setting of the daemon. Durations carry their unit in their name.

    A field declared with ``setting()`` is read from ``RETENTIOND_`` + its name in capitals, parsed
    as its type says (str, int, float, Secret) and checked by its rules; the mappings below them are
    families of names (``RATE_<CHANNEL>``...) read by ``_build``.
    """

    database_url: str = setting("sqlite:///var/retentiond.db", check=_database_url_problem)
    broker_url: str = setting("memory://", check=_broker_url_problem)
    queue_type: str = setting("auto", choices=("auto", "classic", "quorum"), fold=str.lower,
                              message="expected 'auto' (quorum when BROKER_URL lists several nodes), "
                                      "'classic' or 'quorum'",
                              help="RabbitMQ queue type (actors/rabbitmq.py)")
    http_host: str = setting("127.0.0.1")
    http_port: int = setting(8080, minimum=1, maximum=65535, message="must be between 1 and 65535")
    public_url: str = setting("http://127.0.0.1:8080", check=_public_url_problem, help="base of tracked links")
    admin_host: str = setting("127.0.0.1", help="the operators' listener: /api/v1, /metrics, /health/details, console")
    admin_port: int = setting(8081, minimum=1, maximum=65535, message="must be between 1 and 65535")
    admin_token: Secret | None = setting(None, check=_admin_token_problem)
    db_pool_size: int = setting(3, minimum=1, maximum=1000)
    db_timeout_s: float = setting(10.0, above=0, maximum=3600, too_high=_AN_HOUR)
    processes: int = setting(2, minimum=1, maximum=256)
    threads: int = setting(8, minimum=1, maximum=1024)
    shutdown_timeout_s: float = setting(30.0, above=0, maximum=3600, too_high=_AN_HOUR)
    scheduler_interval_s: float = setting(1.0, above=0, maximum=3600, too_high=_AN_HOUR)
    max_retries: int = setting(5, minimum=0, maximum=100, too_low="must be >= 0")
    retry_min_backoff_ms: int = setting(1000, maximum=_MAX_BACKOFF_MS)
    retry_max_backoff_ms: int = setting(60_000, maximum=_MAX_BACKOFF_MS)
    log_level: str = setting("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), fold=str.upper,
                             message="expected DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting("auto", choices=("auto", "json", "text"),
                              help="auto: text when stderr is a terminal, JSON lines otherwise")
    # send-time checks (engine/checks.py); a campaign's own limits win over these
    daily_cap: int = setting(3, minimum=0, maximum=_MAX_COUNT, too_low="must be >= 0 (0 turns the cap off)",
                             help="sends per contact per rolling 24 h across all channels; 0 = off")
    cooldown_s: float = setting(0.0, minimum=0, too_low="must be >= 0 (0 turns the cooldown off)",
                                help="minimum gap between two sends to one contact; 0 = off")
    quiet_hours: str = setting("21:00-08:00", check=_quiet_hours_problem,
                               help="in the contact's timezone, for sms/call/push; or 'off'")
    default_timezone: str = setting("UTC", check=_timezone_problem, help="for contacts without one")
    default_region: str = setting("US", check=_region_problem,
                                  help="phone numbers written without a country code are read as this country's")
    webhook_max_bytes: int = setting(256 * 1024, minimum=1024, maximum=64 * 1024 * 1024,
                                     help="a larger body gets 413")
    webhook_tolerance_s: int = setting(300, above=0, maximum=86_400,
                                       help="signed timestamps further off than this get 401")
    # load shedding and slow clients on the public listener (daemon/web/group_commit.py, daemon/web/app.py)
    ingest_queue_max: int = setting(1000, minimum=1, maximum=_MAX_COUNT,
                                    help="webhooks/clicks waiting for their group commit; beyond it: 503")
    ingest_max_wait_s: float = setting(5.0, above=0, below=3600, message=_UNDER_AN_HOUR,
                                       help="a webhook waits this long for its commit turn (and its lock), else 503")
    click_max_wait_s: float = setting(1.0, above=0, below=3600, message=_UNDER_AN_HOUR,
                                      help="a tracked-link click waits this long, then the reader is redirected anyway")
    http_idle_timeout_s: float = setting(15.0, above=0, below=3600, message=_UNDER_AN_HOUR,
                                         help="an idle keep-alive connection (or one sending no request) is closed")
    http_body_timeout_s: float = setting(10.0, above=0, below=3600, message=_UNDER_AN_HOUR,
                                         help="a request body not fully received by then gets 408, connection closed")
    health_details_cache_s: float = setting(5.0, minimum=0, below=3600, message=_UNDER_AN_HOUR,
                                            help="/health/details is computed at most once per this many seconds")
    event_id_retention_days: int = setting(30, minimum=1, maximum=_MAX_DAYS,
                                           help="a sender's event id deduplicates for this long")
    # retention cleanup (engine/retention.py)
    retention_sends_days: int = setting(30, minimum=1, maximum=_MAX_DAYS, too_low="must be at least 1 (days)",
                                        help="finished sends and their decision log")
    retention_events_days: int = setting(90, minimum=1, maximum=_MAX_DAYS, too_low="must be at least 1 (days)",
                                         help="processed inbound events")
    retention_job_runs_days: int = setting(30, minimum=1, maximum=_MAX_DAYS, too_low="must be at least 1 (days)")
    backup_dir: str = setting("var/backups", help="where `retentiond backup` writes")
    layouts_dir: str = setting("layouts", help="email layouts (<name>.html) that campaign steps name; read at apply")
    sentry_dsn: Secret | None = setting(None, help="errors to Sentry when set")
    # outbox recovery (engine/reconciler.py)
    reconcile_after_s: float = setting(300.0, above=0,
                                       help="queued/retrying this long without progress: offered again")
    claim_timeout_s: float = setting(900.0, above=0,
                                     help="sending this long with no known claimant (older claims): offered again")
    # outcomes never forgotten (engine/journal.py, engine/workers.py)
    journal_dir: str = setting("var/journal", check=_directory_problem,
                               help="provider results not yet in the database, one file per worker process")
    heartbeat_interval_s: float = setting(5.0, above=0, maximum=60,
                                          message="must be positive and at most 60 (seconds)",
                                          help="a worker's liveness row; 3 missed beats and its claims are re-offered")
    failover_after_errors: int = setting(5, minimum=1, maximum=_MAX_COUNT,
                                         help="consecutive primary failures before the backup provider takes over")
    failover_cooloff_s: float = setting(30.0, above=0, help="then the primary is tried again")
    rates: Mapping[str, Rate] = field(default_factory=dict)
    concurrency: Mapping[str, int] = field(default_factory=dict)
    channel_providers: Mapping[str, str] = field(default_factory=dict)
    backup_providers: Mapping[str, str] = field(default_factory=dict)
    providers: Mapping[str, Mapping[str, Secret]] = field(default_factory=dict)
    sources: Mapping[str, Source] = field(default_factory=dict)
    destinations: Mapping[str, Destination] = field(default_factory=dict)

    def rate(self, channel: str) -> Rate:
        return self.rates[channel]

    @property
    def is_memory_broker(self) -> bool:
        return self.broker_url.startswith("memory://")

    def __repr__(self) -> str:
        # Secrets are already masked by Secret.__repr__; URLs may carry passwords.
        shown = {
            "database_url": redact_url(self.database_url),
            "broker_url": redact_url(self.broker_url),
            "http": f"{self.http_host}:{self.http_port}",
            "admin": f"{self.admin_host}:{self.admin_port}",
            "processes": self.processes,
            "threads": self.threads,
            "sources": sorted(self.sources),
            "providers": sorted(self.providers),
        }
        return f"Settings({shown})"


# ---------------------------------------------------------------------------------------------
# The table of scalar settings, derived from the dataclass


@dataclass(frozen=True)
class _Scalar:
    """One scalar setting as the environment names it: its field, its type and its rules."""

    attr: str
    kind: type  # str, int, float or Secret: how the text is read
    rules: Rules


def _scalar_table() -> dict[str, _Scalar]:
    """``{"HTTP_PORT": _Scalar("http_port", int, ...), ...}`` from the fields of Settings."""
    hints = get_type_hints(Settings)
    table = {}
    for f in fields(Settings):
        hint = hints[f.name]
        if _RULES not in f.metadata:
            # A bare default would be a setting no variable can reach: only the families are bare.
            if get_origin(hint) is not Mapping:
                raise TypeError(f"Settings.{f.name}: declare it with setting(default, ...)")
            continue
        kinds = [kind for kind in get_args(hint) if kind is not type(None)] or [hint]  # Secret | None: Secret
        if len(kinds) != 1 or kinds[0] not in (str, int, float, Secret):
            raise TypeError(f"Settings.{f.name}: no parser for {hint}")
        table[f.name.upper()] = _Scalar(f.name, kinds[0], f.metadata[_RULES])
    return table


_SCALARS = _scalar_table()
_FAMILIES = ("RATE_", "CONCURRENCY_", "CHANNEL_", "PROVIDER_", "SOURCE_", "DESTINATION_")
# TOML tables that map onto a family of names: [rates] sms = "1/s" -> RATE_SMS.
_TOML_TABLES = {"rates": "RATE", "concurrency": "CONCURRENCY", "channels": "CHANNEL",
                "providers": "PROVIDER", "sources": "SOURCE", "destinations": "DESTINATION"}


# ---------------------------------------------------------------------------------------------
# Reading


def load_settings(environ: Mapping[str, str] | None = None, config_file: str | None = None,
                  **overrides: Any) -> Settings:
    """Build the settings from a TOML file (optional) and the environment; raise ConfigError."""
    environ = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    if config_file:
        raw.update(_read_toml(config_file))
    raw.update({k[len(PREFIX):]: v for k, v in environ.items() if k.startswith(PREFIX)})
    return _build(raw, overrides)


def _read_toml(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None

    flat: dict[str, str] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, dict):
            raise ConfigError(f"{path}: {name.lower()}", "unexpected table")
        if isinstance(value, list):  # a TOML list (a destination's events): the comma-separated form
            value = ",".join(str(v) for v in value)
        flat[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)

    for key, value in document.items():
        if key in _TOML_TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {key}", "expected a table")
            for sub, subvalue in value.items():
                stem = f"{_TOML_TABLES[key]}_{sub}"
                if isinstance(subvalue, dict):  # [providers.twilio] account_sid = ...
                    for leaf, leafvalue in subvalue.items():
                        put(f"{stem}_{leaf}", leafvalue)
                else:
                    put(stem, subvalue)
        else:
            put(key, value)
    return flat


def _build(raw: Mapping[str, str], overrides: Mapping[str, Any]) -> Settings:
    values: dict[str, Any] = {}
    rates = {ch.name: Rate.parse(ch.default_rate, f"{PREFIX}RATE_{ch.name.upper()}") for ch in CHANNELS.values()}
    concurrency = dict.fromkeys(CHANNELS, 64)
    channel_providers = dict.fromkeys(CHANNELS, "console")
    backup_providers: dict[str, str] = {}
    providers: dict[str, dict[str, Secret]] = {}
    source_parts: dict[str, dict[str, str]] = {}
    destination_parts: dict[str, dict[str, str]] = {}

    for name, text in raw.items():
        setting = PREFIX + name
        if name in _SCALARS:
            scalar = _SCALARS[name]
            values[scalar.attr] = _convert(setting, text, scalar.kind)
        elif name.startswith("RATE_"):
            rates[_channel(setting, name[5:])] = Rate.parse(text, setting)
        elif name.startswith("CONCURRENCY_"):
            concurrency[_channel(setting, name[12:])] = _positive(setting, _convert(setting, text, int))
        elif name.startswith("CHANNEL_") and name.endswith("_BACKUP_PROVIDER"):
            backup_providers[_channel(setting, name[8:-16])] = _provider(setting, text)
        elif name.startswith("CHANNEL_") and name.endswith("_PROVIDER"):
            channel_providers[_channel(setting, name[8:-9])] = _provider(setting, text)
        elif name.startswith("PROVIDER_") and name.count("_") >= 2:
            provider, _, fieldname = name[9:].partition("_")
            providers.setdefault(provider.lower(), {})[fieldname.lower()] = Secret(text)
        elif name.startswith("SOURCE_") and (name.endswith("_SECRET") or name.endswith("_SCHEME")):
            source, _, part = name[7:].rpartition("_")
            if not re.fullmatch(r"[A-Z0-9][A-Z0-9_-]*", source):
                raise ConfigError(setting, "a source name is letters, digits, '-' and '_'")
            if len(source) > MAX_SOURCE_NAME_CHARS:  # it is stored with every event it sends
                raise ConfigError(setting, f"a source name is at most {MAX_SOURCE_NAME_CHARS} characters")
            source_parts.setdefault(source.lower(), {})[part.lower()] = text
        elif name.startswith("DESTINATION_") and name.endswith(("_URL", "_SECRET", "_EVENTS")):
            destination, _, part = name[12:].rpartition("_")
            if not re.fullmatch(r"[A-Z0-9][A-Z0-9_-]{0,31}", destination):
                raise ConfigError(setting, "a destination name is 1-32 letters, digits, '_' and '-'")
            destination_parts.setdefault(destination.lower(), {})[part.lower()] = text
        else:
            known = list(_SCALARS) + [f + "<NAME>" for f in _FAMILIES]
            if name.startswith("DESTINATION_"):  # DESTINATION_CRM_EVENT -> did you mean ..._EVENTS?
                stem = name[12:].rpartition("_")[0] or "<NAME>"
                known += [f"DESTINATION_{stem}_{part}" for part in ("URL", "SECRET", "EVENTS")]
            hint = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(setting, "unknown setting" + (f"; did you mean {PREFIX}{hint[0]}?" if hint else ""))

    sources = {}
    for name, parts in source_parts.items():
        scheme = parts.get("scheme", "standard").strip().lower()
        if scheme not in WEBHOOK_SCHEMES:
            raise ConfigError(f"{PREFIX}SOURCE_{name.upper()}_SCHEME",
                              f"unknown scheme {scheme!r}; one of {', '.join(WEBHOOK_SCHEMES)}")
        secret = parts.get("secret")
        if not secret:
            raise ConfigError(f"{PREFIX}SOURCE_{name.upper()}_SECRET", "every webhook source needs a secret")
        problem = _secret_problem(secret, scheme)
        if problem:
            raise ConfigError(f"{PREFIX}SOURCE_{name.upper()}_SECRET", problem)
        sources[name] = Source(name, scheme, Secret(secret))

    values.update(rates=rates, concurrency=concurrency, channel_providers=channel_providers,
                  backup_providers=backup_providers,
                  providers=providers, sources=sources, destinations=_destinations(destination_parts))
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    """Check every scalar setting against its rules (after overrides, which skip the parsing)."""
    for name, scalar in _SCALARS.items():
        problem = scalar.rules.problem(getattr(s, scalar.attr))
        if problem:
            raise ConfigError(PREFIX + name, problem)


def _convert(setting: str, text: str, kind: type) -> Any:
    if kind is str:
        return text.strip()
    if kind is Secret:
        return Secret(text)
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(setting, f"expected {'an integer' if kind is int else 'a number'}, got {_quote(text)}") from None
    if kind is float:
        # float() reads "nan", "inf" and "1e999" (and TOML has nan and inf): no timer can use them
        # (a NaN compares false with everything, int(inf) raises OverflowError mid-shutdown).
        if not math.isfinite(value):
            raise ConfigError(setting, f"expected a finite number, got {_quote(text)}")
        # Every number setting is a duration in seconds; past a year, timedelta, sleep and thread
        # waits overflow (1e12 s) long before anyone could mean it.
        if abs(value) > MAX_SECONDS:
            raise ConfigError(setting, f"at most {MAX_SECONDS:.0f} (a year, in seconds), got {_quote(text)}")
    return value


MAX_SECONDS = 366 * 86400.0


def _quote(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _channel(setting: str, name: str) -> str:
    channel = name.lower()
    if channel not in CHANNELS:
        raise ConfigError(setting, f"unknown channel {channel!r}; one of {', '.join(CHANNELS)}")
    return channel


def _provider(setting: str, text: str) -> str:
    provider = text.strip().lower()
    if provider not in PROVIDERS:
        raise ConfigError(setting, f"unknown provider {text!r}; one of {', '.join(PROVIDERS)}")
    return provider


def _positive(setting: str, value: int) -> int:
    if value < 1:
        raise ConfigError(setting, "must be at least 1")
    return value


def _destinations(parts: Mapping[str, Mapping[str, str]]) -> dict[str, Destination]:
    """DESTINATION_<NAME>_URL, _SECRET (whsec_...) and _EVENTS (comma-separated types, or *)."""
    from ground.vocabulary import OUT_EVENT_TYPES

    found = {}
    for name, given in parts.items():
        prefix = f"{PREFIX}DESTINATION_{name.upper()}_"
        url = given.get("url", "").strip()
        try:
            split = urlsplit(url)
            split.port  # noqa: B018  (raises ValueError for a port out of range)
        except ValueError:
            split = None
        if split is None or split.scheme not in ("http", "https") or not split.hostname:
            raise ConfigError(prefix + "URL", "expected the http(s) URL events are posted to")
        secret = given.get("secret", "").strip()
        problem = _secret_problem(secret, "standard") if secret.startswith(_WHSEC_PREFIX) else \
            f"expected a Standard Webhooks secret: {_WHSEC_PREFIX}<base64>"
        if problem:
            raise ConfigError(prefix + "SECRET", problem)
        wanted = {e.strip() for e in given.get("events", "*").split(",") if e.strip()}
        if "*" in wanted and len(wanted) > 1:
            raise ConfigError(prefix + "EVENTS", "'*' (every type) cannot be combined with named types")
        if wanted == {"*"}:
            wanted = set(OUT_EVENT_TYPES)
        unknown = sorted(wanted - set(OUT_EVENT_TYPES))
        if unknown or not wanted:
            problem = f"unknown event type {unknown[0]!r}; " if unknown else ""
            raise ConfigError(prefix + "EVENTS", problem + f"expected * or some of {', '.join(OUT_EVENT_TYPES)}")
        found[name] = Destination(name, url, Secret(secret), frozenset(wanted))
    return found
