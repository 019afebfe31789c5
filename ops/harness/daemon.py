"""Run ``retentiond`` as a real subprocess, the way an operator does, and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """Run one ``retentiond`` command to completion."""
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def base_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTIOND_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("NOTIFY_SOCKET", None)  # a runner under systemd: daemons of the tests must not notify it
    env["PYTHONPATH"] = str(REPO)
    env["RETENTIOND_LOG_FORMAT"] = "text"
    env.update({f"RETENTIOND_{k}": str(v) for k, v in settings.items()})
    return env


class DaemonProcess:
    """``retentiond run`` in the background, with its output in files under ``workdir``."""

    def __init__(self, env: dict[str, str], workdir: Path, *args: str, name: str = "daemon") -> None:
        self.port = free_port()  # the public listener
        self.admin_port = free_port()  # the operators' listener
        self.env = {**env, "RETENTIOND_HTTP_PORT": str(self.port), "RETENTIOND_ADMIN_PORT": str(self.admin_port)}
        self.workdir = workdir
        self.args = args
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.process: subprocess.Popen | None = None

    def start(self, wait_healthy_s: float = 60) -> DaemonProcess:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "run", *self.args], env=self.env, cwd=self.workdir,
                stdout=out, stderr=err,
            )
        deadline = time.monotonic() + wait_healthy_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.stderr()}")
            status, _ = self.get("/health")
            if status == 200 and self.workers_started():
                return self
            time.sleep(0.1)
        raise AssertionError(f"daemon not healthy within {wait_healthy_s}s:\n{self.stderr()}")

    def workers_started(self) -> bool:
        text = self.stderr()
        expected = int(self.env.get("RETENTIOND_PROCESSES", "2"))
        for i, arg in enumerate(self.args):
            if arg == "--processes":
                expected = int(self.args[i + 1])
        if self.env.get("RETENTIOND_BROKER_URL", "memory://").startswith("memory://"):
            expected = 1  # the embedded default: one worker process owns the in-memory queues
        return text.count("started with") >= expected

    def get(self, path: str) -> tuple[int, Any]:
        """GET on the public listener: status and decoded body (0, None when it does not answer)."""
        return _get(f"http://127.0.0.1:{self.port}{path}")

    def admin_get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        """GET on the operators' listener, with the admin bearer token when given."""
        return _get(f"http://127.0.0.1:{self.admin_port}{path}",
                    {"Authorization": f"Bearer {token}"} if token is not None else {})

    def wait_for(self, path: str, status: int, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        last: tuple[int, Any] = (0, None)
        while time.monotonic() < deadline:
            last = self.get(path)
            if last[0] == status:
                return last[1]
            time.sleep(0.25)
        raise AssertionError(f"GET {path} stayed {last} instead of {status} for {timeout_s}s")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, and wait for the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """kill -9 of the main process and its workers (the whole process group would be the
        operator's ``systemctl kill``; here we kill the main process and its children)."""
        if self.process is None or self.process.poll() is not None:
            return
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout.split()
        self.process.kill()
        for pid in children:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)

    def stdout(self) -> str:
        return self.stdout_path.read_text() if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            body = response.read()
            return response.status, _decode(body, response.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read(), exc.headers.get("Content-Type", ""))
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


def _decode(body: bytes, content_type: str) -> Any:
    if "json" in content_type:
        return json.loads(body)
    return body.decode()
