"""Each dispatch table answers for every word of its vocabulary, and for nothing else.

A scheme the settings accept but no verifier knows would pass start-up and then refuse every
request; a provider name without a builder would fail only when a channel is set to it; a provider
the simulator does not serve would fail only in the benchmarks and the chaos suite.
"""

from __future__ import annotations

import inspect

import httpx
import pytest

import actors.providers.http
from actors.providers import BUILDERS
from daemon.web.signatures import SCHEMES
from db.models import utcnow
from engine.outcomes import Result
from engine.sends import _settled_row
from ground.send_states import EFFECTS, Outcome
from ground.vocabulary import PROVIDERS, WEBHOOK_SCHEMES, ProviderName, WebhookScheme
from ops.simulator import PROVIDER_ROUTES
from tests.support.results import claimed


def test_every_webhook_scheme_has_its_verifier() -> None:
    assert set(SCHEMES) == set(WebhookScheme) == set(WEBHOOK_SCHEMES)


def test_every_provider_name_has_its_builder() -> None:
    assert set(BUILDERS) == set(ProviderName) == set(PROVIDERS)


def test_the_simulator_serves_every_provider_that_speaks_http() -> None:
    # Given the providers whose module calls out through the shared HTTP client (the simulator may
    # not import the project, so both sides are read from here)
    # (through actors/providers/http.py, or httpx for APNs' HTTP/2)
    shared = (actors.providers.http.request, actors.providers.http.call, httpx)
    speaks_http = {name for name, cls in BUILDERS.items()
                   if any(value is one for value in vars(inspect.getmodule(cls)).values() for one in shared)}
    # the reading itself works: twilio, postmark, webhook, push, fcm and apns at least
    assert {"twilio", "postmark", "webhook", "push", "fcm", "apns"} <= speaks_http
    # Then the simulator has routes for exactly those, by the same names (build_simulator_app
    # serves what PROVIDER_ROUTES lists)
    assert set(PROVIDER_ROUTES) == set(map(str, speaks_http))


def test_every_outcome_with_an_effect_settles_to_its_status_and_any_other_is_named() -> None:
    # Given a claimed send and each outcome: those in EFFECTS become a settled row with their status
    now = utcnow()
    for outcome, effect in EFFECTS.items():
        assert _settled_row(Result(claimed(1, now), outcome), now)[1] == effect.status
    # And an outcome never stored as such (a 429 is settled as a deferral first) is a ValueError naming it
    with pytest.raises(ValueError, match="rate_limited"):
        _settled_row(Result(claimed(1, now), Outcome.RATE_LIMITED), now)
