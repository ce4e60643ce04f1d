"""Adversarial audit of the text parser: each input must give a result or a one-line library error, fast.

    python bench/audits/attack_parser.py
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time
import traceback

CASES = [
    "__import__('os').system('echo PWNED')",
    "x.__class__", "x.__class__.__mro__", "(lambda: 1)()", "[i for i in range(3)]", "f'{x}'",
    "(y := x)", "exp(*[x])", "exp(x=1)", "x[0]", "open('/etc/passwd')", "print(1)",
    "\uff58 + 1",  # fullwidth x
    "\U0001d431 + 1",  # math bold x (NFKC-normalised to x by Python)
    "\uff45\uff58\uff50(x)", "\U0001d41e\U0001d431\U0001d429(x)", "exp\u200b(x)", "x\u00a0+ 1", "x # comment", "x\n+1", "x;1", "x\\\n+1",
    "9**9**9", "9**9**9**9", "2**1000*2**1000*2**1000", "10**-10000", "1e999999", "1e-999999", "0.1e-400",
    "exp(exp(exp(10)))", "exp(exp(exp(exp(10))))", "exp(exp(10))*x", "x + exp(exp(exp(10)))",
    "where(x > exp(exp(exp(10))), x, 0)", "where(x > exp(-exp(exp(10))), x, 0)",
    "where(x > 10**-1000, x, 0)", "where(x*exp(exp(exp(10))) > 1, 1, 0)",
    "log(0)", "log(-1)", "1/0", "0**-1", "sqrt(-1)", "x/0", "0/0", "x**(1/0)", "(-1)**0.5", "(-8)**(1/3)",
    "x**1001", "x**(10**9)", "x**999.5", "x**(2**0.5)", "pi**pi**pi**pi", "E**E**E**E**E",
    "log(x, 0)", "log(x, 1)", "log(x, -1)", "log(x, x)",
    "where(x == 1, 1, 0)", "where(x, 1, 0)", "where(1, x, 0)", "where(x > 0, x > 0, 0)", "x > 0", "x and 1",
    "not x", "~x", "x & 1", "True", "False + 1", "None", "...", "x if x else 0", "'x'", "b'x'", "1j", "x@x",
    "x//2", "x%2", "x<<1", "Piecewise((x, x > 0))", "Piecewise((x, x > 0), (0, True))", "Piecewise(x)",
    "Piecewise((x,))", "Piecewise((x, x > 0, 1))", "Piecewise((x, True), (x, y))", "clip(x, 1, 0)",
    "min()", "max(x)", "exp()", "exp(x, x)", "sigmoid(x, 1)", "y", "X", "x y", "x +", "", "   ", "((((x", ")",
    "(" * 200 + "x" + ")" * 200, "-" * 19000 + "x", "+".join(["x"] * 6000), "*".join(["x"] * 6000),
    "exp(" * 99 + "x" + ")" * 99, "exp(" * 101 + "x" + ")" * 101, "x" * 20001,
    "x" + "**x" * 3000, "-(" * 5000 + "x" + ")" * 5000, "not " * 5000 + "x",
    "where(" + " and ".join(f"x > {i}" for i in range(3000)) + ", 1, 0)",
    "+".join(f"{i}.{i}e{i % 300}" for i in range(2000)),
    "2**1000**1", "(2**1000)**1000", "(10**300)**(10**300)", "10**1000 * 10**1000 * 10**1000 * 10**1000",
    "1" * 19000, "0." + "1" * 19000, "1e" + "9" * 50, "x**-1000", "(x+1)**1000", "(x+y+1)**60",
    "exp(10**1000)", "tanh(10**10000)", "sigmoid(-10**400)", "softplus(10**400)", "log(10**-400)",
    "sqrt(2)**1000", "(1+sqrt(2))**1000", "(pi+E)**999",
    "min(" + ",".join(f"x*{i}" for i in range(800)) + ")",
    "max(" + ",".join(f"exp(x*{i}.5)" for i in range(800)) + ")",
]


def _worker(text: str, q) -> None:
    import opendp_hybridad as hd
    from opendp_hybridad.errors import HybridADError
    schema = hd.Schema(x=(0, 1), y=(0, 1))
    try:
        f = hd.RecordFunction(text, schema)
        q.put(("ok", str(f.expr)[:80]))
    except HybridADError as e:
        msg = str(e)
        q.put(("refused-multiline" if "\n" in msg else "refused", msg[:160]))
    except BaseException as e:
        q.put(("CRASH", f"{type(e).__name__}: {str(e)[:200]} | {traceback.format_exc().splitlines()[-3][:150]}"))


def main() -> int:
    ctx = mp.get_context("fork")
    bad = 0
    for text in CASES:
        q = ctx.Queue()
        p = ctx.Process(target=_worker, args=(text, q))
        t = time.perf_counter()
        p.start()
        p.join(12)
        dt = time.perf_counter() - t
        if p.is_alive():
            p.kill()
            p.join()
            kind, detail = "HANG", ">12 s"
        else:
            kind, detail = q.get() if not q.empty() else ("CRASH", f"exit code {p.exitcode}")
        if kind in ("HANG", "CRASH", "refused-multiline") or dt > 10:
            bad += 1
        print(f"{kind:18s} {dt:5.1f}s  {text[:70]!r}  -> {detail}")
    return bad


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
