"""The shared stop-on-signal helper of `unirg listen`, `unirg status --serve` and `unirg viewer`."""

import os
import signal
import threading

import pytest

from unirg.plugin.signals import STOP_SIGNALS, stop_on_signals, wait_for_stop


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_a_stop_signal_sets_the_event_and_reports_which(restore_handlers, signum):
    seen = []
    stop = stop_on_signals(on_signal=seen.append)
    assert not stop.is_set()
    os.kill(os.getpid(), signum)
    wait_for_stop(stop, poll_s=0.05)  # returns only once the handler has run
    assert stop.is_set() and seen == [signum]


def test_sigint_stops_even_when_the_process_started_with_it_ignored(restore_handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job a script starts with `&`
    stop = stop_on_signals(threading.Event())
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.wait(5.0)


def test_waiting_ends_when_the_watched_thing_dies():
    stop = threading.Event()
    calls = iter([True, True, False])
    wait_for_stop(stop, alive=lambda: next(calls), poll_s=0.01)
    assert not stop.is_set()
