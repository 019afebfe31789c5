"""A delivery pipeline in the test process (the channel actors on a broker, with a worker over the
migrated test database), for tests that follow a send from the outbox to the provider: on
Dramatiq's stub broker, or on the machine's RabbitMQ when ``BROKER_URL`` names it."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
from dramatiq.brokers.stub import StubBroker

from actors.broker import build_broker
from actors.outbox import relay_planned_sends
from actors.providers import Provider
from db.models import Send
from ground.channels import QUEUE_PREFIX
from ground.send_states import CLAIMABLE, SendStatus
from tests.support.settings import make_settings
from tests.support.waiting import wait_until

# A send in one of these is on a queue or in a worker's hands: the pipeline is not done with it.
IN_FLIGHT = (*CLAIMABLE, SendStatus.SENDING)


class InProcessPipeline:
    """The channel actors on a broker (the stub one unless ``BROKER_URL`` says otherwise) with a
    running worker; sms and email unthrottled, retries fast, no quiet hours. ``env`` adds or
    overrides settings."""

    def __init__(self, providers: dict[str, Provider], **env: str) -> None:
        # quiet hours off unless a test sets them: the default (21:00-08:00 in the contact's zone,
        # UTC here) would defer every sms of a suite run in the evening
        env = {"RATE_SMS": "unlimited", "RATE_EMAIL": "unlimited", "RETRY_MIN_BACKOFF_MS": "10",
               "RETRY_MAX_BACKOFF_MS": "50", "MAX_RETRIES": "3", "QUIET_HOURS": "off", **env}
        self.settings = make_settings(**env)
        self.broker = build_broker(self.settings, providers=providers)
        self.actors = {name: self.broker.get_actor(f"send_{name}") for name in self.settings.rates}
        self.worker = dramatiq.Worker(self.broker, worker_threads=2, worker_timeout=50)
        self.worker.start()

    def relay_and_wait(self) -> int:
        """Enqueue the due planned sends and wait until every queue (retries included) is drained."""
        relayed = relay_planned_sends(self.settings, self.actors)
        self.wait_until_idle()
        return relayed

    def wait_until_idle(self) -> None:
        """Return once no message is left on a queue or in the worker."""
        if isinstance(self.broker, StubBroker):
            for name in self.actors:
                self.broker.join(f"{QUEUE_PREFIX}{name}", fail_fast=False)
        else:
            # RabbitmqBroker.join does not see the messages a worker holds unacknowledged (a retry
            # waiting out its backoff): wait for what a user sees instead, no send left in flight.
            wait_until(lambda: not Send.select().where(Send.status.in_(IN_FLIGHT)).exists(), 30,
                       "every send out of the queues and the worker", interval_s=0.02)
        self.worker.join()

    def close(self) -> None:
        self.worker.stop()
        self.broker.close()


# What the ``stub_pipeline``, ``rabbitmq_pipeline`` and ``pipeline`` fixtures give: providers, **env -> a pipeline.
PipelineFactory = Callable[..., InProcessPipeline]
