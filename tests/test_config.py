"""Settings: defaults, environment and TOML, and one clear line for every bad value."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from ground.settings import ConfigError, Rate, Rules, Secret, Settings, load_settings
from ops.harness.daemon import base_env, cli

# A `standard` source secret: whsec_ and the base64 of 24 random bytes (Standard Webhooks' format).
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# Every scalar setting, from the dataclass itself (the families - rates, sources... - are mappings
# built by a factory): a setting added to Settings is covered by the tests below without editing them.
SCALAR_FIELDS = [f for f in dataclasses.fields(Settings) if f.default_factory is dataclasses.MISSING]


def _kind(f: dataclasses.Field[typing.Any]) -> type:
    """str, int, float or Secret: the type a field's text is read as (``Secret | None`` is Secret)."""
    hint = typing.get_type_hints(Settings)[f.name]
    return next((kind for kind in typing.get_args(hint) if kind is not type(None)), hint)


def _rules(f: dataclasses.Field[typing.Any]) -> Rules:
    return next(value for value in f.metadata.values() if isinstance(value, Rules))


def settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings(environ={f"RETENTIOND_{k}": v for k, v in env.items()})


def test_defaults_are_the_embedded_ones() -> None:
    s = settings()
    assert s.database_url == "sqlite:///var/retentiond.db"
    assert s.broker_url == "memory://"
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert s.channel_providers == dict.fromkeys(("sms", "email", "call", "push", "webhook"), "console")
    assert {c: s.rate(c).per_second for c in s.rates} == {"sms": 1, "email": 10, "call": 1, "push": 5, "webhook": 50}
    assert s.db_pool_size == 3
    assert s.shutdown_timeout_s == 30


def test_rates_parse_per_second_minute_and_hour() -> None:
    s = settings(RATE_SMS="2/s", RATE_PUSH="300/m", RATE_CALL="7200/h", RATE_EMAIL="unlimited", RATE_WEBHOOK="5/10s")
    assert s.rate("sms").per_second == 2
    assert s.rate("push").per_second == 5
    assert s.rate("call").per_second == 2
    assert s.rate("email").count is None and s.rate("email").interval_s == 0
    assert s.rate("webhook").per_second == pytest.approx(0.5)


def test_sources_providers_and_channels_from_the_environment() -> None:
    s = settings(SOURCE_STRIPE_SCHEME="stripe", SOURCE_STRIPE_SECRET="whsec_0123456789abcdef", SOURCE_ZAPIER_SECRET=WHSEC,
                 PROVIDER_TWILIO_ACCOUNT_SID="AC123", PROVIDER_TWILIO_URL="http://127.0.0.1:9/",
                 CHANNEL_SMS_PROVIDER="twilio")
    assert s.sources["stripe"].scheme == "stripe"
    assert s.sources["zapier"].scheme == "standard"  # the default scheme
    assert s.providers["twilio"]["account_sid"] == "AC123"
    assert s.channel_providers["sms"] == "twilio"


def test_toml_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "retentiond.toml"
    config.write_text(
        'database_url = "postgresql://app@db.internal:5432/retentiond"\n'
        "http_port = 9000\n"
        "[rates]\nsms = \"3/s\"\n"
        "[sources.stripe]\nscheme = \"stripe\"\nsecret = \"whsec_0123456789abcdef\"\n"
        "[providers.twilio]\naccount_sid = \"AC1\"\n"
    )
    s = load_settings(environ={"RETENTIOND_HTTP_PORT": "9100"}, config_file=str(config))
    assert s.database_url == "postgresql://app@db.internal:5432/retentiond"
    assert s.http_port == 9100  # environment over file
    assert s.rate("sms").per_second == 3
    assert s.sources["stripe"].scheme == "stripe"
    assert s.providers["twilio"]["account_sid"] == "AC1"


@pytest.mark.parametrize(("env", "named"), [
    ({"DATABASE_URL": "mysql://root@localhost/db"}, "RETENTIOND_DATABASE_URL"),
    ({"DATABASE_URL": "sqlite://"}, "RETENTIOND_DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://u@h:notaport/db"}, "RETENTIOND_DATABASE_URL"),
    ({"BROKER_URL": "redis://localhost"}, "RETENTIOND_BROKER_URL"),
    ({"BROKER_URL": "amqp://mq1/v;redis://mq2"}, "RETENTIOND_BROKER_URL"),  # every URL of the list
    ({"BROKER_URL": "amqp://mq1/v;amqp://mq2:notaport/v"}, "RETENTIOND_BROKER_URL"),
    ({"DATABASE_URL": "postgresql://u@h/db", "BROKER_URL": "amqp://mq:notaport/v"}, "RETENTIOND_BROKER_URL"),
    ({"HTTP_PORT": "eighty"}, "RETENTIOND_HTTP_PORT"),
    ({"HTTP_PORT": "70000"}, "RETENTIOND_HTTP_PORT"),
    ({"RATE_SMS": "fast"}, "RETENTIOND_RATE_SMS"),
    ({"RATE_SMS": "0/s"}, "RETENTIOND_RATE_SMS"),
    ({"RATE_FAX": "1/s"}, "RETENTIOND_RATE_FAX"),
    ({"CHANNEL_SMS_PROVIDER": "carrier-pigeon"}, "RETENTIOND_CHANNEL_SMS_PROVIDER"),
    ({"SOURCE_STRIPE_SCHEME": "stripe"}, "RETENTIOND_SOURCE_STRIPE_SECRET"),
    ({"SOURCE_X_SCHEME": "hmac-md5", "SOURCE_X_SECRET": "s" * 16}, "RETENTIOND_SOURCE_X_SCHEME"),
    ({"DB_POOL_SIZE": "0"}, "RETENTIOND_DB_POOL_SIZE"),
    ({"PUBLIC_URL": "example.com"}, "RETENTIOND_PUBLIC_URL"),
    ({"DATABSE_URL": "sqlite:///x.db"}, "RETENTIOND_DATABSE_URL"),
    ({"INGEST_QUEUE_MAX": "0"}, "RETENTIOND_INGEST_QUEUE_MAX"),
    ({"INGEST_MAX_WAIT_S": "0"}, "RETENTIOND_INGEST_MAX_WAIT_S"),
    ({"CLICK_MAX_WAIT_S": "-1"}, "RETENTIOND_CLICK_MAX_WAIT_S"),
    ({"HTTP_IDLE_TIMEOUT_S": "soon"}, "RETENTIOND_HTTP_IDLE_TIMEOUT_S"),
    ({"HTTP_BODY_TIMEOUT_S": "0"}, "RETENTIOND_HTTP_BODY_TIMEOUT_S"),
])
def test_a_bad_value_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**env)
    assert str(caught.value).startswith(named + ":")


def test_a_misspelt_setting_gets_a_hint() -> None:
    with pytest.raises(ConfigError, match="did you mean RETENTIOND_DATABASE_URL"):
        settings(DATABSE_URL="sqlite:///x.db")


def test_secrets_never_show_in_repr() -> None:
    s = settings(ADMIN_TOKEN="tok-very-secret-admin", SOURCE_A_SECRET=WHSEC,
                 PROVIDER_TWILIO_AUTH_TOKEN="tw-secret",
                 DATABASE_URL="postgresql://app:pg-pass@localhost:5432/db",
                 BROKER_URL="amqp://user:mq-pass@localhost:5672/")
    shown = repr(s) + repr(s.sources) + repr(s.providers) + repr(s.admin_token)
    for secret in ("tok-very-secret-admin", WHSEC, "tw-secret", "pg-pass", "mq-pass"):
        assert secret not in shown


def test_rate_unit_conversion() -> None:
    assert Rate.parse("120/m", "X").interval_s == pytest.approx(0.5)


@pytest.mark.parametrize("command", ["run", "migrate"])
def test_cli_bad_database_url_exits_2_with_one_line(command: str) -> None:
    result = cli(command, env=base_env(DATABASE_URL="mysql://root:hunter2@localhost/app"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "RETENTIOND_DATABASE_URL" in lines[0]
    assert "hunter2" not in result.stderr


def test_cli_unreachable_database_exits_3_with_one_line(tmp_path: Path) -> None:
    port = 1  # nothing listens there
    result = cli("migrate", env=base_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x", DB_TIMEOUT_S="2"))
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1
    assert "RETENTIOND_DATABASE_URL: cannot connect" in result.stderr


def test_cli_bad_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("http_port = [1, 2\n")
    result = cli("--config", str(config), "migrate", env=base_env())
    assert result.returncode == 2
    assert result.stderr.startswith("retentiond: error: --config:")


def test_cli_help_lists_the_commands() -> None:
    result = cli("--help", env=base_env())
    assert result.returncode == 0
    for command in ("run", "migrate"):
        assert command in result.stdout


# -- several URLs, every password masked (issue 10, defect 12) --------------------------------------

@pytest.mark.parametrize(("url", "secrets", "shown"), [
    # dramatiq's RabbitmqBroker takes several broker URLs separated by ';'
    ("amqp://app:first-pw@mq1:5672/v;amqp://app:second-pw@mq2:5672/v;amqp://app:third-pw@mq3/v",
     ("first-pw", "second-pw", "third-pw"),
     "amqp://app:***@mq1:5672/v;amqp://app:***@mq2:5672/v;amqp://app:***@mq3/v"),
    # libpq's multi-host URL, and its password given as a query parameter
    ("postgresql://app:pg-pw@db1:5432,db2:5433/retentiond?target_session_attrs=read-write",
     ("pg-pw",), "postgresql://app:***@db1:5432,db2:5433/retentiond?target_session_attrs=read-write"),
    ("postgresql://db1,db2/retentiond?user=app&password=query-pw", ("query-pw",),
     "postgresql://db1,db2/retentiond?user=app&password=***"),
    # characters that should have been percent-encoded: '@' and '/' in the password
    ("amqp://app:p@ss-pw@mq1/v", ("p@ss-pw", "ss-pw"), "amqp://app:***@mq1/v"),
    ("amqp://app:sl/ash-pw@mq1/v;amqp://app:plain-pw@mq2/v", ("sl/ash-pw", "ash-pw", "plain-pw"), None),
    ("memory://", (), "memory://"),
])
def test_every_password_of_several_urls_is_masked(url: str, secrets: tuple[str, ...], shown: str | None) -> None:
    from ground.urls import redact_url

    redacted = redact_url(url)
    for secret in secrets:
        assert secret not in redacted
    if shown is not None:
        assert redacted == shown


_URL_WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@hyp_settings(max_examples=200, deadline=None)
@given(urls=st.lists(st.tuples(st.sampled_from(["amqp", "amqps", "postgresql"]), _URL_WORD,
                               # any printable password but ';' (the list separator), encoded or not
                               st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters=";"),
                                       min_size=1, max_size=30),
                               _URL_WORD, st.integers(1, 65535), _URL_WORD), min_size=1, max_size=4))
def test_no_password_survives_redaction(urls: list[tuple[str, str, str, str, int, str]]) -> None:
    from ground.urls import redact_url

    # Given one or several URLs whose passwords hold anything, '@', '/', '?', '#' and ':' included
    url = ";".join(f"{scheme}://{user}:{password}@{host}:{port}/{path}"
                   for scheme, user, password, host, port, path in urls)
    # Then each shows its user, host, port and path, and nothing of its password
    assert redact_url(url) == ";".join(f"{scheme}://{user}:***@{host}:{port}/{path}"
                                       for scheme, user, _, host, port, path in urls)


def test_settings_repr_masks_every_broker_password() -> None:
    s = settings(BROKER_URL="amqp://app:first-pw@mq1:5672/v;amqp://app:second-pw@mq2:5672/v",
                 DATABASE_URL="postgresql://app:pg-pw@db1:5432/retentiond")
    shown = repr(s)
    assert not any(secret in shown for secret in ("first-pw", "second-pw", "pg-pw"))
    assert "mq1" in shown and "mq2" in shown and "db1" in shown


# -- short secrets are refused at start (issue 10, defect 14) -----------------------------------------

@pytest.mark.parametrize(("env", "named"), [
    ({"ADMIN_TOKEN": "x"}, "RETENTIOND_ADMIN_TOKEN"),
    ({"ADMIN_TOKEN": "a" * 15}, "RETENTIOND_ADMIN_TOKEN"),
    ({"ADMIN_TOKEN": " " * 20}, "RETENTIOND_ADMIN_TOKEN"),
    ({"SOURCE_ZAP_SCHEME": "token", "SOURCE_ZAP_SECRET": "t"}, "RETENTIOND_SOURCE_ZAP_SECRET"),
    ({"SOURCE_CAL_SCHEME": "calcom", "SOURCE_CAL_SECRET": "cal-secret"}, "RETENTIOND_SOURCE_CAL_SECRET"),
    ({"SOURCE_STRIPE_SCHEME": "stripe", "SOURCE_STRIPE_SECRET": "whsec_x"}, "RETENTIOND_SOURCE_STRIPE_SECRET"),
    ({"SOURCE_TW_SCHEME": "twilio", "SOURCE_TW_SECRET": "abc"}, "RETENTIOND_SOURCE_TW_SECRET"),
    # standard: the key is the base64 after whsec_; 20 characters of base64 are only 15 bytes
    ({"SOURCE_APP_SECRET": "whsec_" + "QUJD" * 5}, "RETENTIOND_SOURCE_APP_SECRET"),
    ({"SOURCE_APP_SECRET": "whsec_x"}, "RETENTIOND_SOURCE_APP_SECRET"),
    # long, but not base64: Standard Webhooks' library would silently drop the '-' and '!'
    ({"SOURCE_APP_SECRET": "whsec_this-is-not-base64-at-all!!"}, "RETENTIOND_SOURCE_APP_SECRET"),
])
def test_a_short_secret_is_refused_naming_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**env)
    message = str(caught.value)
    assert message.startswith(named + ":") and "\n" not in message
    assert "16" in message  # the minimum is said
    # the secret is never quoted (one-letter ones would match any word)
    assert all(value.strip() not in message for key, value in env.items()
               if key.endswith(("SECRET", "TOKEN")) and len(value.strip()) > 2)


def test_secrets_at_the_minimum_are_accepted() -> None:
    s = settings(ADMIN_TOKEN="a" * 16, SOURCE_ZAP_SCHEME="token", SOURCE_ZAP_SECRET="t" * 16,
                 SOURCE_APP_SECRET="whsec_" + "QUJD" * 5 + "QQ==",  # exactly 16 bytes
                 SOURCE_RAW_SECRET="QUJD" * 5 + "QQ")  # without whsec_ and its padding, as the library allows
    assert s.admin_token == "a" * 16
    assert set(s.sources) == {"zap", "app", "raw"}


def test_cli_refuses_a_short_admin_token_with_one_line_and_exit_2(tmp_path: Path) -> None:
    result = cli("migrate", env=base_env(ADMIN_TOKEN="s3cret", DATABASE_URL=f"sqlite:///{tmp_path}/r.db"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("retentiond: error: RETENTIOND_ADMIN_TOKEN:")
    assert "s3cret" not in result.stderr


# -- several PostgreSQL hosts (libpq multi-host URLs) ---------------------------------------------


@pytest.mark.parametrize("url", [
    "postgresql://app:pw@db1:5432,db2:5433/retentiond?target_session_attrs=read-write",
    "postgresql://app@db1,db2,db3/retentiond",  # the default port on each
    "postgresql://app@db1:5432,[::1]:5433/retentiond",
    "postgres://app@db1:6432,db2/retentiond?target_session_attrs=any&sslmode=prefer",
])
def test_a_url_listing_several_postgresql_hosts_is_accepted(url: str) -> None:
    assert settings(DATABASE_URL=url).database_url == url


@pytest.mark.parametrize("url, said", [
    ("postgresql://app:pg-secret@db1:5432,db2:nope/retentiond", "port"),
    ("postgresql://app:pg-secret@db1:5432,db2:70000/retentiond", "port"),
    ("postgresql://app:pg-secret@db1,db2,db3/retentiond?port=5432,5433", "port"),  # 2 ports for 3 hosts
    ("postgresql://app:pg-secret@db1,db2/retentiond?target_session_attrs=writable", "target_session_attrs"),
    ("postgresql://app:pg-secret@db1,db2/retentiond?no_such_option=1", "no_such_option"),
    ("postgresql://app:pg-secret@db1,db2/", "database name"),
])
def test_a_bad_multi_host_url_names_the_setting_and_the_fault_without_the_password(url: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(DATABASE_URL=url)
    message = str(caught.value)
    assert message.startswith("RETENTIOND_DATABASE_URL:") and "\n" not in message
    assert said in message
    assert "pg-secret" not in message


# -- numbers that are not numbers: NaN and infinity (issue 10, follow-up defect 7) ---------------

def _float_settings() -> list[str]:
    return sorted(f.name.upper() for f in SCALAR_FIELDS if _kind(f) is float)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity", "1e999"])
@pytest.mark.parametrize("name", _float_settings())
def test_every_number_setting_must_be_finite(name: str, value: str) -> None:
    # Given a number setting that Python's float() reads but no timer can use
    with pytest.raises(ConfigError) as caught:
        settings(**{name: value})
    # Then it is refused at start, naming the variable
    assert str(caught.value).startswith(f"RETENTIOND_{name}:")
    assert "finite" in str(caught.value)


@pytest.mark.parametrize("name", _float_settings())
def test_every_number_setting_has_a_ceiling(name: str) -> None:
    # 1e12 seconds: finite, but past what a timedelta, a sleep or a thread wait can take
    with pytest.raises(ConfigError) as caught:
        settings(**{name: "1e12"})
    assert str(caught.value).startswith(f"RETENTIOND_{name}:")


@pytest.mark.parametrize(("name", "value"), [("DB_TIMEOUT_S", "86400"), ("SCHEDULER_INTERVAL_S", "86400"),
                                             ("SHUTDOWN_TIMEOUT_S", "1e7")])
def test_timers_that_break_when_huge_are_bounded_tighter(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**{name: value})
    assert str(caught.value).startswith(f"RETENTIOND_{name}:")


def test_a_rate_too_large_for_a_number_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        settings(RATE_SMS="9" * 400 + "/s")
    assert str(caught.value).startswith("RETENTIOND_RATE_SMS:")


def test_nan_in_a_toml_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("scheduler_interval_s = nan\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, config_file=str(config))
    assert str(caught.value).startswith("RETENTIOND_SCHEDULER_INTERVAL_S:")


@pytest.mark.parametrize(("command", "env"), [("migrate", {"DB_TIMEOUT_S": "nan"}),
                                              ("run", {"SHUTDOWN_TIMEOUT_S": "inf"}),
                                              ("run", {"SCHEDULER_INTERVAL_S": "nan"})])
def test_cli_refuses_a_number_that_is_not_finite(command: str, env: dict[str, str], tmp_path: Path) -> None:
    result = cli(command, env=base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", **env), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"retentiond: error: RETENTIOND_{next(iter(env))}:"), result.stderr


def test_a_source_name_longer_than_the_database_column_is_refused() -> None:
    # Given a source whose name does not fit inbound_event.source (64 characters on PostgreSQL)
    name = "S" * 65
    with pytest.raises(ConfigError) as caught:
        settings(**{f"SOURCE_{name}_SCHEME": "token", f"SOURCE_{name}_SECRET": "t" * 32})
    # Then the daemon does not start (instead of answering 503 to every webhook to it)
    assert str(caught.value).startswith(f"RETENTIOND_SOURCE_{name}_")
    assert "64" in str(caught.value)
    # and 64 characters are fine
    assert "s" * 64 in settings(**{f"SOURCE_{'S' * 64}_SCHEME": "token", f"SOURCE_{'S' * 64}_SECRET": "t" * 32}).sources


def test_cli_refuses_a_long_source_name_in_one_line(tmp_path: Path) -> None:
    name = "LONG" * 17
    result = cli("run", env=base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}",
                                     **{f"SOURCE_{name}_SCHEME": "token", f"SOURCE_{name}_SECRET": "t" * 32}),
                 cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and f"RETENTIOND_SOURCE_{name}" in result.stderr


# -- RabbitMQ queue type (actors/rabbitmq.py) -----------------------------------------------------


@pytest.mark.parametrize("value", ["auto", "classic", "quorum", "Quorum"])
def test_queue_type_is_auto_classic_or_quorum(value: str) -> None:
    assert settings(QUEUE_TYPE=value).queue_type == value
    assert settings().queue_type == "auto"


@pytest.mark.parametrize("value", ["mirrored", "stream", ""])
def test_a_bad_queue_type_names_the_setting_and_the_choices(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(QUEUE_TYPE=value)
    message = str(caught.value)
    assert message.startswith("RETENTIOND_QUEUE_TYPE:") and "\n" not in message
    assert "'auto'" in message and "'classic'" in message and "'quorum'" in message


@pytest.mark.parametrize("name", ["PROCESSES", "THREADS", "DB_POOL_SIZE", "MAX_RETRIES", "DAILY_CAP",
                                  "RETENTION_SENDS_DAYS", "RETENTION_EVENTS_DAYS", "RETENTION_JOB_RUNS_DAYS",
                                  "EVENT_ID_RETENTION_DAYS", "WEBHOOK_MAX_BYTES", "WEBHOOK_TOLERANCE_S",
                                  "INGEST_QUEUE_MAX", "FAILOVER_AFTER_ERRORS"])
def test_a_whole_number_setting_too_large_to_work_names_itself(name: str) -> None:
    # Given a day count or a process count far beyond anything that can work (10 billion days
    # overflowed the retention job's date arithmetic; a million processes would take the host down)
    with pytest.raises(ConfigError) as caught:
        settings(**{name: "10000000000"})
    # Then the setting is refused at start, naming itself
    assert str(caught.value).startswith(f"RETENTIOND_{name}: must be at most")


# -- every setting declared once, in the dataclass (issue 12) -------------------------------------

# Values tried, in order, for a text setting: the first one its rules accept is used.
_TEXT_CANDIDATES = ("sqlite:///var/other.db", "amqp://app:pw@mq.example:5672/v", "https://go.example.com",
                    "22:30-07:15", "Europe/Paris", "GB", "t" * 32)


def _another_valid_value(f: dataclasses.Field[typing.Any]) -> object:
    """A value the setting accepts and that differs from its default."""
    kind, rules = _kind(f), _rules(f)
    if kind is int:
        candidates: list[object] = [f.default + 1, f.default - 1]
    elif kind is float:
        candidates = [f.default + 0.5, f.default / 2]
    else:
        candidates = [*rules.choices, *_TEXT_CANDIDATES]
    for value in candidates:
        if value != f.default and rules.problem(value) is None:
            return value
    raise AssertionError(f"no value accepted by {f.name}: add one to _TEXT_CANDIDATES")


@pytest.mark.parametrize("field", SCALAR_FIELDS, ids=lambda f: f.name)
def test_every_setting_is_read_from_its_environment_name(field: dataclasses.Field[typing.Any]) -> None:
    # Given RETENTIOND_ and the field's name in capitals, set to a value other than the default
    value = _another_valid_value(field)
    s = settings(**{field.name.upper(): str(value)})
    # Then the settings carry it, with the field's type
    assert getattr(s, field.name) == value
    assert isinstance(getattr(s, field.name), _kind(field))


@pytest.mark.parametrize("field", [f for f in SCALAR_FIELDS if _kind(f) in (int, float)], ids=lambda f: f.name)
def test_a_bad_number_names_its_variable(field: dataclasses.Field[typing.Any]) -> None:
    name, rules = field.name.upper(), _rules(field)
    # Given a number setting set to a word, or just past one of its bounds
    bad = {"twelve": "expected an integer" if _kind(field) is int else "expected a number"}
    for bound, past in ((rules.minimum, -1), (rules.above, 0), (rules.maximum, 1), (rules.below, 0)):
        if bound is not None:
            bad[str(_kind(field)(bound + past))] = ""
    for text, said in bad.items():
        with pytest.raises(ConfigError) as caught:
            settings(**{name: text})
        # Then the one-line message names the variable (and what was expected)
        message = str(caught.value)
        assert message.startswith(f"RETENTIOND_{name}: {said}") and "\n" not in message, text


def test_an_unknown_setting_is_refused_even_when_close_to_a_field() -> None:
    for f in SCALAR_FIELDS:
        with pytest.raises(ConfigError, match=f"did you mean RETENTIOND_{f.name.upper()}"):
            settings(**{f.name.upper() + "X": "1"})


def test_secrets_are_read_as_secrets() -> None:
    s = settings(ADMIN_TOKEN="t" * 32, SENTRY_DSN="https://key@sentry.example/1")
    assert isinstance(s.admin_token, Secret) and "key@" not in repr(s.sentry_dsn)


def test_the_readme_table_names_every_setting_and_no_other() -> None:
    # Given README's configuration table (first column: `NAME` or `NAME`, `NAME`)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    listed = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_<>]*)`", cell)}
    scalars = {f.name.upper() for f in SCALAR_FIELDS}
    # Then every setting is there, and every name there (families aside) is a setting
    assert not scalars - listed, f"missing from README's configuration table: {sorted(scalars - listed)}"
    stale = {name for name in listed if "<" not in name} - scalars
    assert not stale, f"README's configuration table names settings that do not exist: {sorted(stale)}"
