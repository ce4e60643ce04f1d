"""A time limit for sympy work that has none of its own (declaration, continuity proofs).

sympy is pure Python, so a POSIX interval timer's SIGALRM interrupts it between
bytecodes. Only the main thread can receive signals; elsewhere the block runs without
a limit. Callers turn the timeout into a refusal (never into a certificate).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class TimeLimitError(Exception):
    """The block ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeLimitError` inside the block after ``seconds`` (main thread, POSIX; else no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def _expire(signum: int, frame: Any) -> None:
        raise TimeLimitError

    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    if remaining and remaining <= seconds:  # an outer limit ends first: it governs
        yield
        return
    previous = signal.signal(signal.SIGALRM, _expire)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if remaining:  # an outer limit was running: restore what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(remaining - (time.monotonic() - started), 1e-3))
