"""Fixtures in the spirit of dramatiq's tests: an in-process broker and worker for fast tests,
the real RabbitMQ and PostgreSQL for the tests marked ``rabbitmq`` / ``postgres`` (started when
installed but stopped; under CI=true an unreachable one fails the test), and database tests
parametrised over both engines.
"""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pika
import psycopg2
import pytest

from actors.broker import build_broker
from actors.providers import Provider
from db.database import close_database, init_database
from db.migrate import migrate
from ground.channels import CHANNELS, QUEUE_PREFIX
from tests.support.pipeline import InProcessPipeline, PipelineFactory
from tests.support.rabbitmq import amqp_url_for
from tests.support.services import POSTGRES, RABBITMQ, require
from tests.support.settings import make_settings
from tests.support.statements import StatementCounter

# -- PostgreSQL -----------------------------------------------------------------------------------


def _pg_admin():  # type: ignore[no-untyped-def]
    connection = psycopg2.connect(host=POSTGRES[0], port=POSTGRES[1], user="postgres", dbname="postgres")
    connection.autocommit = True
    return connection


@pytest.fixture(scope="session")
def postgres_server() -> None:
    require("postgres", POSTGRES)


@pytest.fixture
def pg_url(postgres_server: None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"retentiond_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{name}"
    finally:
        close_database()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'retentiond.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs on both engines."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'retentiond.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def migrated_db(db_url: str) -> Iterator[str]:
    """The global database proxy on a freshly migrated database."""
    init_database(db_url)
    migrate()
    try:
        yield db_url
    finally:
        close_database()


# -- RabbitMQ -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of the suite's own on the machine's RabbitMQ, so tests never touch '/'."""
    require("rabbitmq", RABBITMQ)
    vhost = f"retentiond-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)
    try:
        yield vhost
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)


@pytest.fixture
def amqp_url(rabbitmq_vhost: str) -> Iterator[str]:
    """The suite's vhost with every retentiond queue deleted before the test (a test may declare
    them quorum, another classic: actors/rabbitmq.py)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url_for(rabbitmq_vhost)))
    try:
        channel = connection.channel()
        for channel_name in (*CHANNELS, "events"):
            for suffix in ("", ".DQ", ".XQ"):
                channel.queue_delete(f"{QUEUE_PREFIX}{channel_name}{suffix}")
    finally:
        connection.close()
    yield amqp_url_for(rabbitmq_vhost)


# -- the delivery pipeline: channel actors and a worker in the test process -----------------------

def _pipelines(**broker: str) -> Iterator[PipelineFactory]:
    made: list[InProcessPipeline] = []

    def make(providers: dict[str, Provider] | None = None, **env: str) -> InProcessPipeline:
        made.append(InProcessPipeline(providers or {}, **{**env, **broker}))
        return made[-1]

    yield make
    for pipeline in made:
        pipeline.close()


@pytest.fixture
def stub_pipeline(migrated_db: str) -> Iterator[PipelineFactory]:
    """``stub_pipeline(providers, **env)``: the channel actors on Dramatiq's stub broker with a
    running worker, over the migrated test database (both engines); stopped after the test."""
    yield from _pipelines()


@pytest.fixture
def rabbitmq_pipeline(migrated_db: str, amqp_url: str) -> Iterator[PipelineFactory]:
    """The same on the machine's RabbitMQ: the suite's vhost, its retentiond queues emptied first."""
    yield from _pipelines(BROKER_URL=amqp_url)


@pytest.fixture(params=["stub", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def pipeline(request: pytest.FixtureRequest, migrated_db: str) -> PipelineFactory:
    """Each delivery test that holds on any broker runs on the stub one and on RabbitMQ (the
    database named here, so that its engine parameter reaches the pipeline asked for by name)."""
    return request.getfixturevalue(f"{request.param}_pipeline")  # type: ignore[no-any-return]


@pytest.fixture
def rabbitmq_broker(amqp_url: str) -> Iterator[Callable[..., dramatiq.Broker]]:
    """``rabbitmq_broker(**env)``: the daemon's broker (channel actors declared) on the suite's vhost,
    built from the settings ``env`` gives; closed after the test."""
    made: list[dramatiq.Broker] = []

    def make(**env: str) -> dramatiq.Broker:
        made.append(build_broker(make_settings(BROKER_URL=amqp_url, **env)))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the real servers their fixtures need, so `-m 'not rabbitmq'` works."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "pg_url" in names or "postgres_server" in names:
            item.add_marker(pytest.mark.postgres)
        if "amqp_url" in names or "rabbitmq_vhost" in names:
            item.add_marker(pytest.mark.rabbitmq)


# -- statement counting and daemons ---------------------------------------------------------------


@pytest.fixture
def statements() -> Iterator[StatementCounter]:
    handler, logger = StatementCounter(), logging.getLogger("peewee")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def daemons() -> Iterator[list]:
    """Daemon processes a test starts; any still running at the end are killed."""
    started: list = []
    yield started
    for daemon in started:
        daemon.kill()
