"""Running under systemd: readiness (Type=notify) from a real `retentiond run`, and the unit file."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.harness.daemon import REPO, DaemonProcess, base_env, cli

UNIT = REPO / "ops" / "retentiond.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notification socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()


def receive_until(sock: socket.socket, wanted: str, process: subprocess.Popen, timeout_s: float) -> list[str]:
    """Every notification received until one carries ``wanted`` (a line such as READY=1)."""
    received: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(0.2)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            if process.poll() is not None and wanted != "STOPPING=1":
                raise AssertionError(f"daemon exited with {process.returncode} before {wanted}") from None
            continue
        received.append(message)
        if wanted in message.splitlines():
            return received
    raise AssertionError(f"no {wanted} within {timeout_s}s; received {received}")


@pytest.mark.slow
def test_run_tells_systemd_it_is_ready_once_it_answers_and_that_it_stops(
        tmp_path: Path, sqlite_url: str, notify_socket: socket.socket, daemons: list) -> None:
    # Given a migrated database and systemd's notification socket in the environment
    env = base_env(DATABASE_URL=sqlite_url)
    assert cli("migrate", env=env).returncode == 0
    daemon = DaemonProcess({**env, "NOTIFY_SOCKET": notify_socket.getsockname()}, tmp_path)
    daemons.append(daemon)
    # When the daemon starts
    with daemon.stdout_path.open("ab") as out, daemon.stderr_path.open("ab") as err:
        daemon.process = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run"], env=daemon.env,
                                          cwd=tmp_path, stdout=out, stderr=err)
    # Then READY=1 arrives, and by then the side server already answers
    receive_until(notify_socket, "READY=1", daemon.process, timeout_s=60)
    status, body = daemon.get("/health")
    assert (status, body) == (200, {"status": "ok"})
    # and on SIGTERM it says it is stopping before it exits
    daemon.signal(15)
    receive_until(notify_socket, "STOPPING=1", daemon.process, timeout_s=60)
    assert daemon.stop() == 0


def test_notify_reaches_an_abstract_socket_and_is_silent_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.systemd_notify import notify

    name = f"retentiond-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify("READY=1") is False  # not under systemd: nothing to do, no error


def test_notify_does_not_raise_when_systemd_is_gone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from daemon.systemd_notify import notify

    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert notify("STOPPING=1") is False


# -- the unit file ----------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """Key -> values of the unit (systemd allows a key more than once)."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_waits_for_readiness_does_not_restart_on_a_bad_setting_and_is_hardened() -> None:
    unit = unit_settings()
    assert unit["Type"] == ["notify"]
    assert "2" in " ".join(unit["RestartPreventExitStatus"]).split()  # RET_CONFIG: a restart cannot fix it
    assert unit["Restart"] == ["on-failure"]
    assert unit["UMask"] == ["0077"]  # the database, its backups and its WAL are private
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["StateDirectory"] == ["retentiond"]
    assert unit["PrivateTmp"] == ["yes"]
    assert unit["WorkingDirectory"] == ["/var/lib/retentiond"]  # the default var/ paths land in the state dir


def test_the_exit_code_the_unit_does_not_restart_on_is_the_bad_setting_code() -> None:
    from daemon.exit_codes import RET_CONFIG

    assert str(RET_CONFIG) in " ".join(unit_settings()["RestartPreventExitStatus"]).split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that the programs exist: point them at this checkout's venv
    venv_bin = Path(sys.executable).parent
    retentiond = venv_bin / "retentiond"
    if not retentiond.exists():
        pytest.skip("retentiond console script not installed in this venv")
    text = UNIT.read_text().replace("/opt/retentiond/.venv/bin", str(venv_bin))
    unit = tmp_path / "retentiond.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            timeout=60)
    # verify also reports on the units ours names (postgresql.service is not installed everywhere)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "retentiond.service" in line]
    assert result.returncode == 0 or not ours, result.stdout + result.stderr
    assert not ours, "\n".join(ours)
