"""A repeated SIGTERM during the shutdown must not kill the daemon: the stop signals go from the
loop's handlers to ignored without ever being at their default action where a thread could take
one (CI saw `retentiond run` exit -15 after a second SIGTERM that landed in that instant)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from daemon.stop_signals import STOP_SIGNALS, ignore_stop_signals, on_stop_signal

DEFAULT_ACTIONS = (signal.SIG_DFL, signal.default_int_handler)


@pytest.fixture
def dispositions_restored() -> Iterator[None]:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def test_no_stop_signal_is_ever_deadly_from_the_stop_request_to_the_loop_closed(
        monkeypatch: pytest.MonkeyPatch, dispositions_restored: None) -> None:
    # Every change of disposition is recorded with what could receive the signal at that moment
    unsafe: list[str] = []
    stopping = threading.Event()
    # with threads of its own alive, as the daemon has (an executor's, Sentry's transport...)
    parked = threading.Event()
    others = [threading.Thread(target=parked.wait, daemon=True) for _ in range(3)]
    for thread in others:
        thread.start()
    real_signal = signal.signal

    def recording_signal(sig: int, handler: object) -> object:
        if stopping.is_set() and sig in STOP_SIGNALS and handler in DEFAULT_ACTIONS:
            blocked_here = sig in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            if not blocked_here or threading.active_count() > 1:
                unsafe.append(f"{signal.Signals(sig).name} at its default action with "
                              f"{threading.active_count()} thread(s), blocked in main: {blocked_here}")
        return real_signal(sig, handler)

    monkeypatch.setattr(signal, "signal", recording_signal)

    async def daemon_like() -> int:
        # Given a loop that asks for a stop on SIGTERM, with executor threads alive as the daemon's are
        loop = asyncio.get_running_loop()
        asked = asyncio.Event()
        on_stop_signal(loop, lambda sig: asked.set())
        await asyncio.gather(*(asyncio.to_thread(lambda: None) for _ in range(4)))
        # When SIGTERM arrives, then again during the shutdown
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(asked.wait(), timeout=10)
        stopping.set()
        ignore_stop_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.to_thread(lambda: None)
        return 0

    # Then the process is still here to return, the signals stay ignored after the loop closed,
    # and at no moment could a thread have taken one at its default action (death by signal)
    assert asyncio.run(daemon_like()) == 0
    assert [signal.getsignal(sig) for sig in STOP_SIGNALS] == [signal.SIG_IGN, signal.SIG_IGN]
    assert unsafe == []
    os.kill(os.getpid(), signal.SIGTERM)  # and one more after the end is ignored too
    parked.set()
