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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
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
class Source:
    """A webhook sender: how it signs, and the secret it signs with."""

    name: str
    scheme: str
    secret: Secret | None


@dataclass(frozen=True)
class Settings:
    """Every setting of the daemon. Durations carry their unit in their name."""

    database_url: str = "sqlite:///var/retentiond.db"
    broker_url: str = "memory://"
    # RabbitMQ queue type (actors/rabbitmq.py): "auto" = quorum when BROKER_URL lists several nodes
    queue_type: str = "auto"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    admin_token: Secret | None = None
    db_pool_size: int = 3
    db_timeout_s: float = 10.0
    processes: int = 2
    threads: int = 8
    shutdown_timeout_s: float = 30.0
    scheduler_interval_s: float = 1.0
    max_retries: int = 5
    retry_min_backoff_ms: int = 1000
    retry_max_backoff_ms: int = 60_000
    log_level: str = "INFO"
    log_format: str = "auto"  # text when stderr is a terminal, JSON lines otherwise; or "text", "json"
    # send-time checks (engine/checks.py); a campaign's own limits win over these
    daily_cap: int = 3  # sends per contact per rolling 24 h across all channels; 0 = off
    cooldown_s: float = 0.0  # minimum gap between two sends to one contact; 0 = off
    quiet_hours: str = "21:00-08:00"  # in the contact's timezone, for sms/call/push; "off"
    default_timezone: str = "UTC"  # for contacts without one
    default_region: str = "US"
    webhook_max_bytes: int = 256 * 1024  # a larger body gets 413
    webhook_tolerance_s: int = 300  # signed timestamps further off than this get 401
    # load shedding and slow clients on the public listener (daemon/web/group_commit.py, daemon/web/app.py)
    ingest_queue_max: int = 1000  # webhooks/clicks waiting for their group commit; beyond it: 503
    ingest_max_wait_s: float = 5.0  # a webhook waits this long for its commit turn (and its lock), else 503
    click_max_wait_s: float = 1.0  # a tracked-link click waits this long, then the reader is redirected anyway
    http_idle_timeout_s: float = 15.0  # an idle keep-alive connection (or one sending no request) is closed
    http_body_timeout_s: float = 10.0  # a request body not fully received by then gets 408 and the connection closes
    event_id_retention_days: int = 30  # a sender's event id deduplicates for this long
    # retention cleanup (engine/retention.py)
    retention_sends_days: int = 30  # finished sends and their decision log
    retention_events_days: int = 90  # processed inbound events
    retention_job_runs_days: int = 30
    backup_dir: str = "var/backups"
    sentry_dsn: Secret | None = None  # errors to Sentry when set  # phone numbers written without a country code are read as this country's
    # outbox recovery (engine/reconciler.py)
    reconcile_after_s: float = 300.0  # queued/retrying this long without progress: offered again
    claim_timeout_s: float = 900.0  # sending this long with no known claimant (older claims): offered again
    # outcomes never forgotten (engine/journal.py, engine/workers.py)
    journal_dir: str = "var/journal"  # provider results not yet in the database, one file per worker process
    heartbeat_interval_s: float = 5.0  # a worker's liveness row; 3 missed beats and its claims are re-offered
    failover_after_errors: int = 5  # consecutive primary failures before the backup provider takes over
    failover_cooloff_s: float = 30.0  # then the primary is tried again
    rates: Mapping[str, Rate] = field(default_factory=dict)
    concurrency: Mapping[str, int] = field(default_factory=dict)
    channel_providers: Mapping[str, str] = field(default_factory=dict)
    backup_providers: Mapping[str, str] = field(default_factory=dict)
    providers: Mapping[str, Mapping[str, Secret]] = field(default_factory=dict)
    sources: Mapping[str, Source] = field(default_factory=dict)

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
            "processes": self.processes,
            "threads": self.threads,
            "sources": sorted(self.sources),
            "providers": sorted(self.providers),
        }
        return f"Settings({shown})"


# ---------------------------------------------------------------------------------------------
# Reading


_SCALARS: dict[str, tuple[str, type]] = {
    "DATABASE_URL": ("database_url", str),
    "BROKER_URL": ("broker_url", str),
    "QUEUE_TYPE": ("queue_type", str),
    "HTTP_HOST": ("http_host", str),
    "HTTP_PORT": ("http_port", int),
    "PUBLIC_URL": ("public_url", str),
    "ADMIN_TOKEN": ("admin_token", Secret),
    "DB_POOL_SIZE": ("db_pool_size", int),
    "DB_TIMEOUT_S": ("db_timeout_s", float),
    "PROCESSES": ("processes", int),
    "THREADS": ("threads", int),
    "SHUTDOWN_TIMEOUT_S": ("shutdown_timeout_s", float),
    "SCHEDULER_INTERVAL_S": ("scheduler_interval_s", float),
    "MAX_RETRIES": ("max_retries", int),
    "RETRY_MIN_BACKOFF_MS": ("retry_min_backoff_ms", int),
    "RETRY_MAX_BACKOFF_MS": ("retry_max_backoff_ms", int),
    "LOG_LEVEL": ("log_level", str),
    "LOG_FORMAT": ("log_format", str),
    "DAILY_CAP": ("daily_cap", int),
    "COOLDOWN_S": ("cooldown_s", float),
    "QUIET_HOURS": ("quiet_hours", str),
    "DEFAULT_TIMEZONE": ("default_timezone", str),
    "DEFAULT_REGION": ("default_region", str),
    "WEBHOOK_MAX_BYTES": ("webhook_max_bytes", int),
    "WEBHOOK_TOLERANCE_S": ("webhook_tolerance_s", int),
    "INGEST_QUEUE_MAX": ("ingest_queue_max", int),
    "INGEST_MAX_WAIT_S": ("ingest_max_wait_s", float),
    "CLICK_MAX_WAIT_S": ("click_max_wait_s", float),
    "HTTP_IDLE_TIMEOUT_S": ("http_idle_timeout_s", float),
    "HTTP_BODY_TIMEOUT_S": ("http_body_timeout_s", float),
    "EVENT_ID_RETENTION_DAYS": ("event_id_retention_days", int),
    "RETENTION_SENDS_DAYS": ("retention_sends_days", int),
    "RETENTION_EVENTS_DAYS": ("retention_events_days", int),
    "RETENTION_JOB_RUNS_DAYS": ("retention_job_runs_days", int),
    "BACKUP_DIR": ("backup_dir", str),
    "SENTRY_DSN": ("sentry_dsn", Secret),
    "RECONCILE_AFTER_S": ("reconcile_after_s", float),
    "CLAIM_TIMEOUT_S": ("claim_timeout_s", float),
    "JOURNAL_DIR": ("journal_dir", str),
    "HEARTBEAT_INTERVAL_S": ("heartbeat_interval_s", float),
    "FAILOVER_AFTER_ERRORS": ("failover_after_errors", int),
    "FAILOVER_COOLOFF_S": ("failover_cooloff_s", float),
}
_FAMILIES = ("RATE_", "CONCURRENCY_", "CHANNEL_", "PROVIDER_", "SOURCE_")
# TOML tables that map onto a family of names: [rates] sms = "1/s" -> RATE_SMS.
_TOML_TABLES = {"rates": "RATE", "concurrency": "CONCURRENCY", "channels": "CHANNEL",
                "providers": "PROVIDER", "sources": "SOURCE"}


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

    for name, text in raw.items():
        setting = PREFIX + name
        if name in _SCALARS:
            attr, kind = _SCALARS[name]
            values[attr] = _convert(setting, text, kind)
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
        else:
            known = list(_SCALARS) + [f + "<NAME>" for f in _FAMILIES]
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
        _check_secret(f"{PREFIX}SOURCE_{name.upper()}_SECRET", secret, scheme)
        sources[name] = Source(name, scheme, Secret(secret))
    if values.get("admin_token"):  # empty means "not set": the admin API refuses every request
        _check_secret(f"{PREFIX}ADMIN_TOKEN", values["admin_token"], None)

    values.update(rates=rates, concurrency=concurrency, channel_providers=channel_providers,
                  backup_providers=backup_providers,
                  providers=providers, sources=sources)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    _validate(settings)
    return settings


MAX_SOURCE_NAME_CHARS = 64  # inbound_event.source (db/models.py)
MIN_SECRET_CHARS = 16  # ADMIN_TOKEN and source secrets: 16 random characters are beyond guessing online
MIN_STANDARD_KEY_BYTES = 16  # a `standard` source's whsec_ key: 128 bits once base64-decoded
_WHSEC_PREFIX = "whsec_"


def _check_secret(setting: str, secret: str, scheme: str | None) -> None:
    """Refuse a secret too short to resist guessing. Messages never quote the secret."""
    if scheme == "standard":
        # Standard Webhooks signs with the base64-decoded bytes after whsec_; its library drops
        # characters outside the alphabet without a word, so a typo would silently change the key.
        body = secret.strip().removeprefix(_WHSEC_PREFIX)
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except binascii.Error:
            raise ConfigError(setting, f"expected {_WHSEC_PREFIX}<base64 of at least {MIN_STANDARD_KEY_BYTES} "
                                       "random bytes>; this is not base64") from None
        if len(key) < MIN_STANDARD_KEY_BYTES:
            raise ConfigError(setting, f"too short: the key after {_WHSEC_PREFIX} must decode to at least "
                                       f"{MIN_STANDARD_KEY_BYTES} bytes (e.g. {_WHSEC_PREFIX}$(openssl rand -base64 32))")
        return
    if len(secret.strip()) < MIN_SECRET_CHARS:
        raise ConfigError(setting, f"too short: at least {MIN_SECRET_CHARS} characters "
                                   "(e.g. $(openssl rand -hex 32))")


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


def parse_quiet_hours(text: str) -> tuple[dt.time, dt.time] | None:
    """``"21:00-08:00"`` -> (21:00, 08:00); ``"off"`` -> None. Raises ValueError."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    start, _, end = text.partition("-")
    return dt.time.fromisoformat(start.strip()), dt.time.fromisoformat(end.strip())


def _positive(setting: str, value: int) -> int:
    if value < 1:
        raise ConfigError(setting, "must be at least 1")
    return value


def _validate(s: Settings) -> None:
    db = urlsplit(s.database_url)
    if db.scheme not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(f"{PREFIX}DATABASE_URL",
                          "expected sqlite:///path/to.db or postgresql://user@host:port/db")
    if db.scheme == "sqlite" and not (db.path or db.netloc):
        raise ConfigError(f"{PREFIX}DATABASE_URL", "a sqlite URL needs a file path: sqlite:///var/retentiond.db")
    if db.scheme != "sqlite":
        # libpq's own parser (the one that connects) reads it: several hosts and ports
        # (postgresql://u:p@db1:5432,db2:5433/app), query parameters; the message never quotes the URL.
        try:
            postgres_params(s.database_url)
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}DATABASE_URL", str(exc)) from None
    # Several RabbitMQ URLs may be given, separated by ';' (tried in order): check each.
    brokers = s.broker_url.split(";")
    for url in brokers:
        try:
            broker = urlsplit(url.strip())
            _ = broker.port
        except ValueError:
            raise ConfigError(f"{PREFIX}BROKER_URL", "a URL whose port is not a number") from None
        if broker.scheme not in ("amqp", "amqps") and not (broker.scheme == "memory" and len(brokers) == 1):
            raise ConfigError(f"{PREFIX}BROKER_URL", "expected amqp://user:pass@host:5672/vhost (several: "
                                                     "separated by ';') or memory://")
    if s.queue_type.lower() not in ("auto", "classic", "quorum"):
        raise ConfigError(f"{PREFIX}QUEUE_TYPE", "expected 'auto' (quorum when BROKER_URL lists several nodes), "
                                                 "'classic' or 'quorum'")
    if not 0 < s.http_port < 65536:
        raise ConfigError(f"{PREFIX}HTTP_PORT", "must be between 1 and 65535")
    public = urlsplit(s.public_url)
    if public.scheme not in ("http", "https") or not public.netloc:
        raise ConfigError(f"{PREFIX}PUBLIC_URL", "expected an absolute http(s) URL")
    for name in ("db_pool_size", "processes", "threads", "max_retries"):
        if getattr(s, name) < (0 if name == "max_retries" else 1):
            raise ConfigError(f"{PREFIX}{name.upper()}", "must be at least 1" if name != "max_retries" else "must be >= 0")
    for name in ("shutdown_timeout_s", "scheduler_interval_s", "db_timeout_s"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{PREFIX}{name.upper()}", "must be positive")
    # SQLite's busy_timeout is a 32-bit count of milliseconds; a tick or a stop waiting longer than
    # an hour is a typo for minutes or milliseconds, never a plan.
    for name in ("scheduler_interval_s", "db_timeout_s", "shutdown_timeout_s"):
        if getattr(s, name) > 3600:
            raise ConfigError(f"{PREFIX}{name.upper()}", "at most 3600 (an hour, in seconds)")
    if s.daily_cap < 0:
        raise ConfigError(f"{PREFIX}DAILY_CAP", "must be >= 0 (0 turns the cap off)")
    if s.cooldown_s < 0:
        raise ConfigError(f"{PREFIX}COOLDOWN_S", "must be >= 0 (0 turns the cooldown off)")
    try:
        parse_quiet_hours(s.quiet_hours)
    except ValueError:
        raise ConfigError(f"{PREFIX}QUIET_HOURS", "expected HH:MM-HH:MM (e.g. 21:00-08:00) or 'off'") from None
    try:
        zoneinfo.ZoneInfo(s.default_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{PREFIX}DEFAULT_TIMEZONE", "expected an IANA timezone such as Europe/Paris") from None
    import phonenumbers  # imported here: only validation needs it

    if s.default_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"{PREFIX}DEFAULT_REGION", "expected a two-letter region code such as US, GB or FR")
    if not 0 < s.heartbeat_interval_s <= 60:
        raise ConfigError(f"{PREFIX}HEARTBEAT_INTERVAL_S", "must be positive and at most 60 (seconds)")
    if not s.journal_dir.strip():
        raise ConfigError(f"{PREFIX}JOURNAL_DIR", "must name a directory")
    for name in ("reconcile_after_s", "claim_timeout_s", "failover_cooloff_s"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{PREFIX}{name.upper()}", "must be positive")
    if s.webhook_max_bytes < 1024:
        raise ConfigError(f"{PREFIX}WEBHOOK_MAX_BYTES", "must be at least 1024")
    for name in ("retention_sends_days", "retention_events_days", "retention_job_runs_days"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{PREFIX}{name.upper()}", "must be at least 1 (days)")
    if s.event_id_retention_days < 1:
        raise ConfigError(f"{PREFIX}EVENT_ID_RETENTION_DAYS", "must be at least 1")
    if s.webhook_tolerance_s < 1:
        raise ConfigError(f"{PREFIX}WEBHOOK_TOLERANCE_S", "must be positive")
    if s.ingest_queue_max < 1:
        raise ConfigError(f"{PREFIX}INGEST_QUEUE_MAX", "must be at least 1")
    for name in ("ingest_max_wait_s", "click_max_wait_s", "http_idle_timeout_s", "http_body_timeout_s"):
        if not 0 < getattr(s, name) < 3600:
            raise ConfigError(f"{PREFIX}{name.upper()}", "must be positive and under an hour (seconds)")
    if s.failover_after_errors < 1:
        raise ConfigError(f"{PREFIX}FAILOVER_AFTER_ERRORS", "must be at least 1")
    if s.log_format not in ("auto", "json", "text"):
        raise ConfigError(f"{PREFIX}LOG_FORMAT", "expected 'auto', 'json' or 'text'")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{PREFIX}LOG_LEVEL", "expected DEBUG, INFO, WARNING or ERROR")
    for name, ceiling in _INT_CEILINGS.items():
        if getattr(s, name) > ceiling:
            raise ConfigError(f"{PREFIX}{name.upper()}", f"must be at most {ceiling:,}")


# Whole-number settings whose huge values break something: day counts overflow a timedelta at the
# retention job, process and thread counts would exhaust the host, a retry count loops for ever.
_INT_CEILINGS = {
    "processes": 256, "threads": 1024, "db_pool_size": 1000, "max_retries": 100,
    "retry_min_backoff_ms": 86_400_000, "retry_max_backoff_ms": 86_400_000,
    "daily_cap": 1_000_000, "failover_after_errors": 1_000_000, "ingest_queue_max": 1_000_000,
    "webhook_max_bytes": 64 * 1024 * 1024, "webhook_tolerance_s": 86_400,
    "event_id_retention_days": 36_500, "retention_sends_days": 36_500, "retention_events_days": 36_500,
    "retention_job_runs_days": 36_500,
}
