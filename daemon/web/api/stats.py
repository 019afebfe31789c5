"""``/api/v1/stats`` (counts an operator asks for first) and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from daemon.web.api.registry import API
from daemon.web.api.types import Out
from engine.stats import overview


class StatsOut(Out):
    sends: dict[str, dict[str, int]]
    enrolments: dict[str, int]
    inbound_events: dict[str, int]
    jobs: dict[str, dict[str, Any]]


class OpenApiOut(Out):
    """The OpenAPI 3.1 document of this API."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]
    security: list[dict[str, Any]]


@API.get("/stats", tag="stats")
def stats() -> StatsOut:
    """Sends by channel and status, enrolments and inbound events by status, the periodic jobs."""
    return StatsOut.model_validate(overview())


@API.get("/openapi.json", tag="meta", public=True)
def openapi() -> OpenApiOut:
    """This document."""
    return OpenApiOut.model_validate(API.openapi())
