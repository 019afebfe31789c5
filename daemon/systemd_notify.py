"""systemd's readiness protocol (sd_notify): one datagram to the socket named in ``$NOTIFY_SOCKET``.

Why not a library: systemd documents this protocol as its stable interface and recommends a few
lines of one's own over linking libsystemd for it (sd_notify(3), "Standalone Implementations").
On PyPI, ``systemd-python`` builds against the libsystemd headers (a C toolchain on every install
for one datagram) and ``sdnotify`` has not been released since 2017 and hides every error. Outside
systemd (no ``$NOTIFY_SOCKET``) this does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``, ``STOPPING=1``, ``STATUS=...``) to the service manager;
    True when it was sent. Never raises: readiness must not take the daemon down."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket: its name starts with a NUL byte
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        logger.warning("NOTIFY_SOCKET %r is not a unix socket path: systemd will not be told %s", address, state)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        logger.warning("could not notify systemd (%s): %s", state.split("=", 1)[0], exc)
        return False
    return True
