"""A 3-node RabbitMQ cluster of the suite's own, on this machine, for the node-loss tests.

Three extra nodes (``rd-test-<id>-1@localhost``...) with their own AMQP and distribution ports, data
and log directories under a temporary directory owned by the ``rabbitmq`` user, their own config
file, environment file and Erlang cookie. The cookie is the isolation that matters: the machine's
own node (``rabbit@localhost`` on 5672, used by the rest of the suite) has another one, so no
command here can reach it, let alone join it to this cluster.

Nodes are started in parallel with ``rabbitmq-server -detached`` as the ``rabbitmq`` user, joined
with ``stop_app; join_cluster; start_app``, and killed and removed by ``stop()``, which the fixture
calls also when a test failed.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.harness.daemon import free_port

SBIN = Path("/usr/lib/rabbitmq/bin")  # Debian's real scripts; /usr/sbin ones re-exec through `su`
USER = "rabbitmq"
START_TIMEOUT_S = 90


def available() -> str | None:
    """None when a cluster can be started here, else why not."""
    if not (SBIN / "rabbitmq-server").exists():
        return "rabbitmq-server is not installed (Debian package rabbitmq-server)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"there is no {USER!r} user to run the nodes as"
    if os.geteuid() != 0:
        return "starting RabbitMQ nodes as the rabbitmq user needs root"
    return None


def require_cluster_support() -> None:
    """Skip on a laptop that cannot start a cluster; fail under CI=true (the test must run there)."""
    reason = available()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"cannot start a RabbitMQ cluster: {reason}", pytrace=False)
    pytest.skip(f"cannot start a RabbitMQ cluster: {reason}")


@dataclass
class Node:
    name: str  # rd-test-ab12-1@localhost
    amqp_port: int
    dist_port: int
    base: Path
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"


class RabbitCluster:
    """Start with ``start()``, always ``stop()``; ``broker_url`` lists the nodes for the daemon."""

    def __init__(self, size: int = 3) -> None:
        tag = uuid.uuid4().hex[:4]
        self.home = Path(tempfile.mkdtemp(prefix="rd-rabbit-cluster-"))
        self.nodes = [Node(f"rd-test-{tag}-{i}@localhost", free_port(), free_port(), self.home / f"node{i}")
                       for i in range(1, size + 1)]
        self.killed: set[str] = set()

    # -- running commands as the rabbitmq user, with the cluster's own HOME (its cookie) -----------

    def _env(self, node: Node | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),  # $HOME/.erlang.cookie: the cluster's own cookie
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            # Not /etc/rabbitmq/*: those name the machine's node and its 5672 listener.
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        if node is not None:
            env.update({
                "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(node.amqp_port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node.base / "log"),
                "RABBITMQ_PID_FILE": str(node.pid_file),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            })
        return env

    def _as_rabbitmq(self, command: list[str], node: Node | None = None, timeout_s: float = 60,
                     check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["runuser", "-u", USER, "--", "env", "-i",
                                 *(f"{k}={v}" for k, v in self._env(node).items()), *command],
                                capture_output=True, text=True, timeout=timeout_s, check=False,
                                cwd=self.home)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result

    def ctl(self, node: Node, *args: str, timeout_s: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return self._as_rabbitmq([str(SBIN / "rabbitmqctl"), "-n", node.name, *args], node, timeout_s, check)

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> RabbitCluster:
        self._lay_out_files()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self._start_node, self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        running = self.running_nodes(first)
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise RuntimeError(f"cluster did not form: running nodes {running}")
        return self

    def _lay_out_files(self) -> None:
        user = pwd.getpwnam(USER)
        (self.home / ".erlang.cookie").write_text(secrets.token_hex(20))
        (self.home / ".erlang.cookie").chmod(0o400)
        (self.home / "enabled_plugins").write_text("")
        (self.home / "rabbitmq-env.conf").write_text("")
        # Each node's listener comes from RABBITMQ_NODE_PORT; this file only keeps /etc's out.
        (self.home / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        for node in self.nodes:
            for sub in ("mnesia", "log"):
                (node.base / sub).mkdir(parents=True)
        for path in [self.home, *self.home.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _start_node(self, node: Node) -> None:
        self._as_rabbitmq([str(SBIN / "rabbitmq-server"), "-detached"], node)
        # The AMQP listener opens last in the boot: polling it costs nothing, where each
        # `rabbitmqctl await_startup` boots an Erlang VM of its own (over a second on 2 cores).
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", node.amqp_port), timeout=1).close()
            except OSError:
                time.sleep(0.2)
                continue
            node.pid = int(node.pid_file.read_text().strip())
            return
        raise RuntimeError(f"node {node.name} did not start in {START_TIMEOUT_S}s: {self.log_tail(node)}")

    def stop(self) -> None:
        """Kill every node and remove its files (nodes hold nothing worth a clean stop)."""
        for node in self.nodes:
            pid = node.pid
            if pid is None and node.pid_file.exists():
                try:
                    pid = int(node.pid_file.read_text().strip())
                except ValueError:
                    pid = None
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.home, ignore_errors=True)

    # -- what the tests do ---------------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """Every node's URL, separated by ';': dramatiq (pika) tries them in order."""
        return ";".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def alive(self) -> list[Node]:
        return [node for node in self.nodes if node.name not in self.killed]

    def running_nodes(self, via: Node) -> list[str]:
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json").stdout)
        return list(status["running_nodes"])

    def queues(self, via: Node | None = None) -> dict[str, dict[str, str]]:
        """Queue name -> {type, leader, members...} as the cluster reports them."""
        via = via or self.alive()[0]
        out = self.ctl(via, "list_queues", "name", "type", "leader", "members", "messages",
                       "--formatter", "json").stdout
        return {row["name"]: row for row in json.loads(out)}

    def leader(self, queue: str) -> Node:
        return self.node(str(self.queues()[queue]["leader"]))

    def kill(self, node: Node) -> None:
        """kill -9 of the node's Erlang VM: no clean shutdown, no leader hand-over."""
        assert node.pid is not None
        os.kill(node.pid, signal.SIGKILL)
        self.killed.add(node.name)

    def log_tail(self, node: Node, lines: int = 20) -> str:
        logs = sorted((node.base / "log").glob("*.log"))
        if not logs:
            return "(no log)"
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:])
