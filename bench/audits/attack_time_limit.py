"""Adversarial audit of opendp_hybridad/time_limit.py (eb2bc1f): a timeout must become a refusal (never a
certificate) and the timer must never leak (fire later, in unrelated code).

Run: ``python bench/audits/attack_time_limit.py`` (about 15 seconds). Exits 1 on a violation. Each case runs in
its own Python process (a leaked SIGALRM can kill it), which prints one JSON line.

Finding (a violation): the alarm can be handled at the first instruction of ``time_limit.__exit__``, before
``self._armed = False``. CPython runs a pending signal handler at its next eval-breaker check; a C-level
operation that does not check for signals (here ``-1 in big_list``, one CONTAINS_OP) as the block's last
instruction leaves SIGALRM pending until the RESUME of ``__exit__``. ``_expire`` then re-arms the 50 ms retry
and raises inside ``__exit__``, which never disarms the timer or restores the previous handler: after the
``with`` (the caller sees TimeLimitError, a refusal) the handler stays installed and armed, and
TimeLimitError is raised again every 50 ms in unrelated code (up to 200 times, 10 s); when it escapes to the
top level the interpreter dies of SIGALRM ("Alarm clock", exit status 142). The same window exists for a
retry alarm landing while ``__exit__`` starts. Suggested mend: in ``_expire``, treat a frame whose code is
``time_limit.__exit__``'s (or a flag set just before the ``with`` leaves) as leaving: disarm and return
without raising, and let ``__exit__`` raise TimeLimitError itself when the limit has passed and no
exception is propagating.

Reachability: not observed at the package's call sites (RecordFunction's declaration under a limit set
at 20%..105% of its declaration time, 400 trials: 118 refusals, no leak): there the block is one Python call,
so the window is the alarm landing in the last signal-unchecked C work before the calls return.

Note (not counted): when code inside the block swallows the TimeLimitError (``except Exception``, as
sympy does in places) and the block then leaves within 50 ms (before the retry), the block completes past its
limit with no error: ``__exit__`` does not check whether the limit has passed. Whether that can turn into a
certificate depends on what the swallowing code returns; ``__exit__`` raising when the deadline has passed
(and no exception is propagating) would close it.

What held: an exception inside the block (no leak, previous handler restored); nesting (an inner shorter limit
fires first and the outer one is restored with what is left; an inner longer limit defers to the outer; the outer
fires after the inner block leaves); a gc callback that swallows the alarm (deferral, then the refusal);
``__del__`` swallowing; a non-main thread (no limit, main thread's timer untouched); a foreign previous SIGALRM
handler and timer restored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

VIOLATIONS: list[str] = []
NOTES: list[str] = []

PRELUDE = textwrap.dedent("""
    import gc, json, signal, sys, threading, time
    from opendp_hybridad.time_limit import time_limit, TimeLimitError

    def leaked(seconds=0.6):
        n = 0
        t = time.perf_counter()
        while True:
            try:
                if time.perf_counter() - t >= seconds:
                    return n
                sum(range(200))
            except TimeLimitError:
                n += 1

    def state():
        return {"itimer": signal.getitimer(signal.ITIMER_REAL)[0], "handler": repr(signal.getsignal(signal.SIGALRM))[:40]}
""")

CASES = {
    "leak_c_op_at_block_end": """
        big = list(range(3 * 10**7))
        out = {"refused": False}
        try:
            with time_limit(0.05):
                found = -1 in big
        except TimeLimitError:
            out["refused"] = True
        out["leaked"] = 0
        while True:  # every line from here may itself be hit by a leaked TimeLimitError
            try:
                out.update(state())
                break
            except TimeLimitError:
                out["leaked"] += 1
        out["leaked"] += leaked()
        while True:
            try:
                signal.signal(signal.SIGALRM, signal.SIG_IGN)
                signal.setitimer(signal.ITIMER_REAL, 0)
                break
            except TimeLimitError:
                out["leaked"] += 1
        print(json.dumps(out))
    """,
    "swallowed_then_left": """
        out = {"refused": False}
        t = time.perf_counter()
        try:
            with time_limit(0.05):
                try:
                    while True:
                        sum(range(100))
                except Exception:
                    pass  # swallowed (sympy does this in places); the block leaves at once
        except TimeLimitError:
            out["refused"] = True
        out["elapsed"] = time.perf_counter() - t
        out.update(state())
        out["leaked"] = leaked()
        print(json.dumps(out))
    """,
    "exception_inside": """
        out = {}
        try:
            with time_limit(0.05):
                raise ValueError("x")
        except ValueError:
            out["value_error"] = True
        out.update(state())
        out["leaked"] = leaked(0.2)
        print(json.dumps(out))
    """,
    "nested": """
        out = {}
        t = time.perf_counter()
        try:
            with time_limit(0.3):
                try:
                    with time_limit(0.05):
                        while True:
                            sum(range(100))
                except TimeLimitError:
                    out["inner_at"] = time.perf_counter() - t
                while True:
                    sum(range(100))
        except TimeLimitError:
            out["outer_at"] = time.perf_counter() - t
        try:
            with time_limit(0.05):
                with time_limit(5.0):  # the outer ends first: it governs
                    while True:
                        sum(range(100))
        except TimeLimitError:
            out["governed_at"] = time.perf_counter() - t
        out.update(state())
        out["leaked"] = leaked(0.3)
        print(json.dumps(out))
    """,
    "gc_callback_swallows": """
        def cb(phase, info):
            time.sleep(0.002)
        gc.callbacks.append(cb)
        out = {"refused": False}
        t = time.perf_counter()
        try:
            with time_limit(0.05):
                junk = []
                while time.perf_counter() - t < 3:
                    junk.append([[] for _ in range(50)])
                    if len(junk) > 2000:
                        junk = []
        except TimeLimitError:
            out["refused"] = True
        out["elapsed"] = time.perf_counter() - t
        gc.callbacks.remove(cb)
        out.update(state())
        out["leaked"] = leaked(0.3)
        print(json.dumps(out))
    """,
    "del_swallows": """
        class D:
            def __del__(self):
                x = 0
                for i in range(20000):
                    x += i
        out = {"refused": False}
        t = time.perf_counter()
        try:
            with time_limit(0.05):
                while time.perf_counter() - t < 3:
                    D()
        except TimeLimitError:
            out["refused"] = True
        out["elapsed"] = time.perf_counter() - t
        out.update(state())
        out["leaked"] = leaked(0.3)
        print(json.dumps(out))
    """,
    "thread_and_foreign_handler": """
        out = {}
        fired = []
        signal.signal(signal.SIGALRM, lambda s, f: fired.append(time.perf_counter()))
        signal.setitimer(signal.ITIMER_REAL, 0.4)
        def work():
            with time_limit(0.01):
                time.sleep(0.05)
            out["thread_done"] = True
        th = threading.Thread(target=work); th.start(); th.join()
        t = time.perf_counter()
        try:
            with time_limit(0.05):
                while True:
                    sum(range(100))
        except TimeLimitError:
            out["refused"] = True
        time.sleep(0.5)
        out["foreign_fired"] = len(fired)
        out["handler_restored"] = "lambda" in repr(signal.getsignal(signal.SIGALRM))
        out["leaked"] = leaked(0.2)
        print(json.dumps(out))
    """,
}


def run(name: str, body: str) -> dict | None:
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    line = [s for s in proc.stdout.splitlines() if s.startswith("{")]
    if proc.returncode != 0 or not line:
        return {"returncode": proc.returncode, "stderr": proc.stderr.strip().splitlines()[-1:] if proc.stderr else []}
    return json.loads(line[-1])


def main() -> int:
    for name, body in CASES.items():
        out = run(name, body)
        print(f"{name}: {out}")
        if out is None or "returncode" in out:
            VIOLATIONS.append(f"{name}: the process failed: {out}")
            continue
        if out.get("leaked", 0) or out.get("itimer", 0) > 0 or "_expire" in out.get("handler", ""):
            VIOLATIONS.append(f"{name}: the timer leaked past the block: {out}")
        if name == "swallowed_then_left" and not out["refused"]:
            NOTES.append(f"{name}: the block ran past its 0.05 s limit ({out['elapsed']:.3f} s) and left without an error")
        if name in ("gc_callback_swallows", "del_swallows") and not out["refused"]:
            VIOLATIONS.append(f"{name}: no refusal")
        if name == "nested" and not ("inner_at" in out and "outer_at" in out and "governed_at" in out):
            VIOLATIONS.append(f"{name}: a limit did not fire: {out}")
        if name == "thread_and_foreign_handler" and not (out.get("refused") and out.get("handler_restored")
                                                         and out.get("foreign_fired") == 1):
            VIOLATIONS.append(f"{name}: {out}")
    for n in NOTES:
        print("NOTE:", n)
    for v in VIOLATIONS:
        print("VIOLATION:", v)
    print("violations:", len(VIOLATIONS), "notes:", len(NOTES))
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
