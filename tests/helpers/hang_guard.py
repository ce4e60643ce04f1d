"""A guard against hangs, not a timing assertion.

Some tests check that an input which once made the library run for hours or forever
(a sympy blow-up, a huge integer) now finishes. They run the call under a generous
limit, far above any machine's time for the fixed code, so that a regression fails the
test instead of hanging the suite. Speed itself is measured in ``bench/``, never here.

The guard is a watchdog thread that interrupts the main thread (``_thread.interrupt_main``),
not SIGALRM's interval timer, so code under test that sets its own timer cannot disarm it.
"""
from __future__ import annotations

import _thread
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

HANG_SECONDS = 120.0


def finishes(fn: Callable[[], T], seconds: float = HANG_SECONDS) -> T:
    """Return ``fn()``; fail the test if it is still running after ``seconds`` (call from the main thread)."""
    done = threading.Event()
    fired = threading.Event()

    def watchdog() -> None:
        while not done.wait(seconds):  # keep interrupting: one interrupt can be swallowed (gc callback)
            fired.set()
            _thread.interrupt_main()
            seconds_again = 0.05
            if done.wait(seconds_again):
                return

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        return fn()
    except KeyboardInterrupt:
        if fired.is_set():
            pytest.fail(f"still running after {seconds:g} s: a hang, not a slow machine")
        raise
    finally:
        done.set()
        thread.join()
