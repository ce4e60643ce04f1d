"""A time limit for sympy work that has none of its own (declaration, continuity proofs).

sympy is pure Python, so a POSIX interval timer's SIGALRM interrupts it between
bytecodes. Only the main thread can receive signals; elsewhere the block runs without
a limit. Callers turn the timeout into a refusal (never into a certificate).

Python swallows an exception raised while it runs a garbage-collector callback or a
``__del__`` method ("Exception ignored in ..."): a one-shot alarm that lands there is
lost and the block runs on without a limit (seen under hypothesis, which installs a gc
callback). So an alarm that lands inside a gc callback or ``__del__`` is put off by
:data:`DEFER_SECONDS` instead of raising there, and once the limit has passed the alarm
fires again every :data:`RETRY_SECONDS` until the block has left (at most
:data:`RETRIES` times), in case it was swallowed somewhere else. A block that ends after
its limit has passed (its error swallowed by an ``except Exception`` inside it, or the alarm
handled only as the block left, at the start of ``__exit__``) raises :class:`TimeLimitError`
from ``__exit__``: a result computed past the limit is refused like any other, and no timer
or handler is left behind.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType
from typing import Any

RETRY_SECONDS = 0.05
RETRIES = 200  # 10 s of retries: far more swallowed alarms than any block has gc callbacks in a row
DEFER_SECONDS = 0.001
DEFERRALS = 10_000  # 10 s of deferrals


def _on_stack(frame: FrameType | None, matches: Callable[[CodeType], bool]) -> bool:
    """Whether ``frame`` or one of its callers runs code that ``matches``."""
    while frame is not None:
        if matches(frame.f_code):
            return True
        frame = frame.f_back
    return False


def _where_exceptions_are_swallowed(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs (or is called from) a gc callback or a ``__del__`` method."""
    callback_codes = {code for callback in gc.callbacks
                      if (code := getattr(getattr(callback, "__func__", callback), "__code__", None)) is not None}
    return _on_stack(frame, lambda code: code in callback_codes or code.co_name == "__del__")


class TimeLimitError(Exception):
    """The block ran past its time limit."""


class time_limit:  # noqa: N801 - used as a context manager, named like contextlib's
    """Raise :class:`TimeLimitError` inside the block after ``seconds`` (main thread, POSIX; else no limit).

    An outer limit that ends first governs (the inner one is not armed); an outer limit that
    ends later is restored with what is left of it when the block leaves.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._armed = False
        self._retries_left = RETRIES
        self._deferrals_left = DEFERRALS
        self._passed = False

    def _expire(self, signum: int, frame: Any) -> None:
        if not self._armed:  # fired while the block was leaving: the limit no longer applies
            return
        self._passed = True
        if _on_stack(frame, lambda code: code is _EXIT_CODE):  # the block has ended and __exit__ is running: it raises for us, once
            return
        if self._deferrals_left > 0 and _where_exceptions_are_swallowed(frame):
            self._deferrals_left -= 1
            signal.setitimer(signal.ITIMER_REAL, DEFER_SECONDS)
            return
        if self._retries_left > 0:  # in case this raise is swallowed (gc callback, __del__)
            self._retries_left -= 1
            signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        raise TimeLimitError

    def __enter__(self) -> time_limit:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
            return self
        self._outer_remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        if self._outer_remaining and self._outer_remaining <= self.seconds:  # an outer limit ends first
            return self
        self._previous = signal.signal(signal.SIGALRM, self._expire)
        self._started = time.monotonic()
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._armed:
            return
        self._armed = False  # first: an alarm from here on is a no-op
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)
        if self._outer_remaining:  # an outer limit was running: restore what is left of it
            left = self._outer_remaining - (time.monotonic() - self._started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))
        if self._passed and exc_type is None:
            # the limit passed but the block ended normally: its TimeLimitError was swallowed inside it
            # (an `except Exception`) or the alarm landed in this method; either way the work ran past its
            # limit, and the caller must see a refusal rather than a result
            raise TimeLimitError


_EXIT_CODE = time_limit.__exit__.__code__
