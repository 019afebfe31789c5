"""Settings for tests, read from keyword arguments as the daemon reads its environment."""

from __future__ import annotations

from ground.settings import Settings, load_settings


def make_settings(**env: str) -> Settings:
    """The settings the daemon would load from ``RETENTIOND_<KEY>=<value>`` for each keyword."""
    return load_settings(environ={f"RETENTIOND_{k}": v for k, v in env.items()})


# The planner's tests: tracked links on a public URL, stalled sends re-offered after a minute.
PLANNER_SETTINGS = make_settings(PUBLIC_URL="https://go.example.com", RECONCILE_AFTER_S="60", CLAIM_TIMEOUT_S="120")
