"""Run a foreground command until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: Optional[threading.Event] = None, *,
                    on_signal: Optional[Callable[[int], None]] = None) -> threading.Event:
    """Install SIGINT and SIGTERM handlers that set ``stop`` (a new Event if none), and return it.

    Explicit handlers, not KeyboardInterrupt: a process that starts with SIGINT ignored (a job a script starts
    with ``&``) keeps it ignored, and Ctrl-C or ``kill -INT`` would then not stop it. Main thread only.
    """
    event = stop if stop is not None else threading.Event()

    def _handle(signum: int, _frame: Any) -> None:
        if on_signal is not None:
            on_signal(signum)
        event.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, _handle)
    return event


def wait_for_stop(stop: threading.Event, *, alive: Optional[Callable[[], bool]] = None,
                  poll_s: float = 1.0) -> None:
    """Block until ``stop`` is set, or until ``alive()`` turns false."""
    while not stop.wait(poll_s):
        if alive is not None and not alive():
            return
