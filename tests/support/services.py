"""The real servers the suite talks to: reach them, start them when installed but stopped.

Under ``CI=true`` a server that stays unreachable fails the test that needs it; on a laptop
without it the test is skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time

import pytest

from ops.harness.servers import POSTGRES, RABBITMQ, reachable

__all__ = ["POSTGRES", "RABBITMQ", "reachable", "require"]

START_DEADLINE_S = 90


def _start_commands(name: str) -> list[list[str]]:
    if name == "rabbitmq" and shutil.which("rabbitmq-server"):
        return [["rabbitmq-server", "-detached"]]
    if name == "postgres" and shutil.which("pg_ctlcluster"):
        versions = sorted(os.path.basename(p) for p in glob.glob("/etc/postgresql/*"))
        if versions:
            return [["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]]
    return []


def require(name: str, address: tuple[str, int]) -> None:
    """Make sure the server is up, starting it if it is installed; fail (CI) or skip otherwise."""
    if reachable(address):
        return
    for command in _start_commands(name):
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    deadline = time.monotonic() + START_DEADLINE_S
    while _start_commands(name) and time.monotonic() < deadline:
        if reachable(address):
            return
        time.sleep(0.5)
    message = f"{name} is not reachable on {address[0]}:{address[1]} and could not be started"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
