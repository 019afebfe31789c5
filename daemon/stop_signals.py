"""SIGTERM and SIGINT for the main process: how a stop is asked for, and why a repeated one is ignored.

A stop signal asks for the shutdown; once it is under way a repeated one (Ctrl-C twice, a
supervisor repeating itself) must not cut it short, so both signals are then ignored until the
process exits. They must never pass through their default action (death by signal) on the way,
and the kernel hands a process-wide signal to any thread that does not block it. That rules out
the event loop's ``add_signal_handler``: both ``remove_signal_handler`` and ``loop.close()`` put
the default action back before anyone can set SIG_IGN, and a repeated SIGTERM landing in that
instant killed a daemon in CI (exit -15 instead of 0). So the handler is Python's own
``signal.signal``, which hands the request to the loop (``call_soon_threadsafe``: the handler runs
in the main thread, between two bytecodes of whatever it was doing), and the switch to SIG_IGN is
one call; the loop never owns these signals, so closing it changes nothing.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signal(loop: asyncio.AbstractEventLoop, request_stop: Callable[[signal.Signals], None]) -> None:
    """Ask for a shutdown on SIGTERM or SIGINT: ``request_stop(sig)`` runs on ``loop``."""

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(request_stop, signal.Signals(signum))

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def ignore_stop_signals() -> None:
    """From now on SIGTERM and SIGINT are ignored, with no instant at their default action."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
