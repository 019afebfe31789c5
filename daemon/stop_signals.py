"""SIGTERM and SIGINT for the main process: how a stop is asked for, and why a repeated one is ignored.

The event loop's handlers ask for the shutdown; once it is under way a repeated signal (Ctrl-C
twice, a supervisor repeating itself) must not cut it short, so both signals are then ignored until
the process exits. Two moments put them back at their default action (death by signal) if nothing
is done, and the kernel hands a process-wide signal to any thread that does not block it:

- ``loop.remove_signal_handler`` sets the default action before anyone can set SIG_IGN; a repeated
  SIGTERM that landed in that instant killed a daemon in CI (exit -15 instead of 0). So the loop's
  handlers are replaced in one step by SIG_IGN instead of being removed.
- ``loop.close()`` removes the loop's handlers at the very end, which is why ``run_until_stopped``
  closes the loop with both signals blocked in the main thread (the only thread left by then) and
  sets SIG_IGN before it unblocks them; a signal pending meanwhile is discarded.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signal(loop: asyncio.AbstractEventLoop, request_stop: Callable[[signal.Signals], None]) -> None:
    """Ask for a shutdown on SIGTERM or SIGINT."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, request_stop, sig)


def ignore_stop_signals() -> None:
    """From now on SIGTERM and SIGINT are ignored, with no instant at their default action."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def run_until_stopped(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, except that the loop is closed without letting a stop signal kill the
    process after its shutdown is done."""
    runner = asyncio.Runner()
    try:
        return runner.run(main)
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            runner.close()
            ignore_stop_signals()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
