"""Python source for batched float64 kernels, generated from sympy expressions.

Common sub-expressions are eliminated across all outputs of a function
(``sympy.cse``). Small integer powers become products (``h*h*h`` is several
times faster than numpy's general ``h**3``). Discontinuities become
``numpy.where`` / ``numpy.select`` conditionals. Three backends print the same
plan: plain numpy, numexpr (fused, multi-threaded loops) and, for the clamped value
that sums and row maps evaluate, numba (one compiled single-threaded loop per record).
"""

from __future__ import annotations

from typing import Any, ClassVar

import sympy
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.str import StrPrinter

from opendp_hybridad.symbolic.functions import sigmoid

_MAX_UNROLLED_POWER = 4


def _as_float_literal(e: sympy.Expr) -> str:
    return repr(float(e))


def _fold(printer: Any, args: tuple[Any, ...], pair: Any) -> str:
    """A left fold of printed ``args`` with ``pair(left, right) -> str`` (Min and Max of any arity)."""
    out = printer._print(args[0])
    for a in args[1:]:
        out = pair(out, printer._print(a))
    return out


class _NumpyKernelPrinter(NumPyPrinter):
    def __init__(self) -> None:
        super().__init__({"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": False})

    def _print_sigmoid(self, e: Any) -> str:
        return f"_sigmoid({self._print(e.args[0])})"

    def _print_softplus(self, e: Any) -> str:
        return f"logaddexp(0.0, {self._print(e.args[0])})"

    def _print_Min(self, e: Any) -> str:
        return _fold(self, e.args, lambda a, b: f"minimum({a}, {b})")

    def _print_Max(self, e: Any) -> str:
        return _fold(self, e.args, lambda a, b: f"maximum({a}, {b})")

    def _print_Heaviside(self, e: Any) -> str:
        h0 = e.args[1] if len(e.args) > 1 else sympy.Rational(1, 2)
        return f"heaviside({self._print(e.args[0])}, {_as_float_literal(h0)})"

    def _print_DiracDelta(self, e: Any) -> str:
        # zero almost everywhere; the certified analysis treats it as a jump
        return f"(0.0*{self._print(e.args[0])})"

    def _print_sign(self, e: Any) -> str:
        return f"sign({self._print(e.args[0])})"

    def _print_Pow(self, e: Any, rational: bool = False) -> str:
        base, expo = e.args
        if expo.is_Integer and 2 <= abs(int(expo)) <= _MAX_UNROLLED_POWER:
            b = self.parenthesize(base, sympy.printing.precedence.PRECEDENCE["Mul"] + 1)
            prod = "*".join([b] * abs(int(expo)))
            return f"({prod})" if expo > 0 else f"(1.0/({prod}))"
        return super()._print_Pow(e, rational=rational)

    def _print_Rational(self, e: Any) -> str:
        return _as_float_literal(e)

    def _print_Float(self, e: Any) -> str:
        # repr round-trips the double; sympy's default prints 15 digits, another number
        return _as_float_literal(e)

    def _print_Integer(self, e: Any) -> str:
        return f"{int(e)}.0" if abs(int(e)) < 2**53 else _as_float_literal(e)


class _NumexprPrinter(StrPrinter):
    """Prints an expression in numexpr's language."""

    def _print_Function(self, e: Any) -> str:
        name = e.func.__name__
        if name in ("exp", "log", "tanh", "sqrt"):
            return f"{name}({self._print(e.args[0])})"
        raise NotImplementedError(name)

    def _print_sigmoid(self, e: Any) -> str:
        # the numpy kernel's _sigmoid: z = exp(-|x|), 1/(1 + z) or z/(1 + z); no underflow
        # where the value is a normal float (the tanh form is 0 below x = -37)
        x = self._print(e.args[0])
        return f"(where(({x}) >= 0, 1.0, exp(-abs({x}))) / (1.0 + exp(-abs({x}))))"

    def _print_softplus(self, e: Any) -> str:
        x = self._print(e.args[0])
        return f"where(({x}) > 30.0, {x}, log1p(exp({x})))"

    def _print_Abs(self, e: Any) -> str:
        return f"abs({self._print(e.args[0])})"

    def _print_Min(self, e: Any) -> str:
        return _fold(self, e.args, lambda a, b: f"where(({a}) < ({b}), {a}, {b})")

    def _print_Max(self, e: Any) -> str:
        return _fold(self, e.args, lambda a, b: f"where(({a}) > ({b}), {a}, {b})")

    def _print_sign(self, e: Any) -> str:
        x = self._print(e.args[0])
        return f"where(({x}) > 0, 1.0, where(({x}) < 0, -1.0, 0.0))"

    def _print_Heaviside(self, e: Any) -> str:
        x = self._print(e.args[0])
        h0 = e.args[1] if len(e.args) > 1 else sympy.Rational(1, 2)
        return f"where(({x}) > 0, 1.0, where(({x}) < 0, 0.0, {_as_float_literal(h0)}))"

    def _print_DiracDelta(self, e: Any) -> str:
        return f"(0.0*({self._print(e.args[0])}))"

    def _print_Piecewise(self, e: Any) -> str:
        *pairs, (last, last_cond) = e.args
        out = self._print(last) if last_cond == sympy.true else "nan"
        if last_cond != sympy.true:
            pairs.append((last, last_cond))
        for val, cond in reversed(pairs):
            out = f"where({self._print(cond)}, {self._print(val)}, {out})"
        return out

    def _print_And(self, e: Any) -> str:
        return " & ".join(f"({self._print(a)})" for a in e.args)

    def _print_Or(self, e: Any) -> str:
        return " | ".join(f"({self._print(a)})" for a in e.args)

    def _print_Not(self, e: Any) -> str:
        return f"~({self._print(e.args[0])})"

    def _print_Pow(self, e: Any, rational: bool = False) -> str:
        base, expo = e.args
        b = self.parenthesize(base, sympy.printing.precedence.PRECEDENCE["Pow"] + 1)
        if expo == sympy.Rational(1, 2):
            return f"sqrt({self._print(base)})"
        if expo == -sympy.Rational(1, 2):
            return f"(1.0/sqrt({self._print(base)}))"
        if expo.is_Integer and 2 <= abs(int(expo)) <= _MAX_UNROLLED_POWER:
            prod = "*".join([b] * abs(int(expo)))
            return f"({prod})" if expo > 0 else f"(1.0/({prod}))"
        if expo == -1:
            return f"(1.0/{b})"
        return f"({b}**{self._print(expo)})"

    def _print_Rational(self, e: Any) -> str:
        return _as_float_literal(e)

    def _print_Integer(self, e: Any) -> str:
        return f"{int(e)}.0"

    def _print_Float(self, e: Any) -> str:
        return _as_float_literal(e)

    def _print_NumberSymbol(self, e: Any) -> str:
        return _as_float_literal(e)

    _print_Pi = _print_NumberSymbol
    _print_Exp1 = _print_NumberSymbol


HEADER = '''"""Generated by opendp-hybridad: do not edit. Key {key}."""
from numpy import (exp, log, sqrt, tanh, abs, minimum, maximum, fmax, heaviside, sign, where, select,
                   nan, inf, pi, e, float64, full, logaddexp, clip, copyto, asarray, less, less_equal, greater, greater_equal, equal,
                   not_equal, logical_and, logical_or, logical_not)
{extra_imports}

def _sigmoid(x):
    # 1/(1 + z) for x >= 0 and z/(1 + z) below, z = exp(-|x|) (the interval evaluator's form): full
    # relative accuracy down to subnormal values (0.5 (1 + tanh(x / 2)) is 0 below -37); no branch
    return exp(minimum(x, 0.0)) / (1.0 + exp(-abs(x)))


def _full(value, n):
    if getattr(value, "shape", ()) == (n,):
        return value
    return full(n, value, dtype=float64)

'''


def _function_source(name: str, exprs: list[sympy.Expr], args: list[str], backend: str) -> str:
    replacements, reduced = sympy.cse(exprs, symbols=sympy.numbered_symbols("_t"), optimizations="basic")
    lines = [f"def {name}({', '.join(args)}):", f"    _n = {args[0]}.shape[0]" if args else "    _n = 1"]
    if backend == "numexpr":
        printer = _NumexprPrinter()
        env = "{" + ", ".join(f"'{a}': {a}" for a in args)
        for sym, sub in replacements:
            lines.append(f"    {sym} = _ne.evaluate({printer.doprint(sub)!r}, local_dict={env + _locals(sub)})")
        outs = [f"_ne.evaluate({printer.doprint(r)!r}, local_dict={env + _locals(r)})" if r.free_symbols else repr(float(r))
                for r in reduced]
    else:
        printer = _NumpyKernelPrinter()
        for sym, sub in replacements:
            lines.append(f"    {sym} = {printer.doprint(sub)}")
        outs = [printer.doprint(r) for r in reduced]
    outs = [f"_full({o}, _n)" for o in outs]
    if len(outs) == 1:
        lines.append(f"    return {outs[0]}")
    else:
        lines.append("    return (" + ", ".join(outs) + ",)")
    return "\n".join(lines) + "\n"


def _locals(expr: sympy.Expr) -> str:
    temps = sorted({str(s) for s in expr.free_symbols if str(s).startswith("_t")})
    extra = "".join(f", '{t}': {t}" for t in temps)
    return extra + "}"


def _clamped_value_source(expr: sympy.Expr, args: list[str], box: dict[str, tuple[float, float, float | None]],
                          backend: str) -> str:
    """``value_clamped(cols..., lo, hi)``: impute, clamp inputs to the box, evaluate, clamp to [lo, hi].

    ``box[name] = (lower, upper, impute)``; impute None means the column has no
    missing values (checked by the frame domain). A NaN output becomes ``lo``;
    +-inf are clamped. One fused pass with numexpr; a few passes with numpy.
    """
    lines = [f"def value_clamped({', '.join(args)}, _lo, _hi):"]
    if backend == "numexpr":
        tokens = {name: sympy.Symbol(f"_inp_{j}_") for j, name in enumerate(args)}
        text = _NumexprPrinter().doprint(expr.xreplace({sympy.Symbol(n, **_assumptions(expr, n)): t for n, t in tokens.items()}))
        for name, token in tokens.items():
            lo, hi, impute = box[name]
            clamp = f"where({name} < {lo!r}, {lo!r}, where({name} > {hi!r}, {hi!r}, {name}))"
            if impute is not None:
                clamp = f"where({name} != {name}, {impute!r}, {clamp})"
            text = text.replace(str(token), f"({clamp})")
        env = "{" + ", ".join(f"'{a}': {a}" for a in args) + "}"
        # a constant expression evaluates to a 0-d array: broadcast it to one value per record
        lines.append(f"    _v = _full(_ne.evaluate({text!r}, local_dict={env}), {args[0]}.shape[0])")
        lines.append("    return _ne.evaluate('where(_v != _v, _lo, where(_v < _lo, _lo, where(_v > _hi, _hi, _v)))', "
                     "local_dict={'_v': _v, '_lo': _lo, '_hi': _hi}, out=_v)")
    else:
        # clip maps +-inf to the bounds and keeps NaN, which copyto then replaces:
        # two passes per column, no more than a hand-written clamp
        for name in args:
            lo, hi, impute = box[name]
            lines.append(f"    {name} = clip({name}, {lo!r}, {hi!r})")
            if impute is not None:
                lines.append(f"    copyto({name}, {impute!r}, where={name} != {name})")
        # fmax takes _lo where the value is NaN, so it and minimum are the clamp and the NaN rule
        # in two passes, into a fresh array (value may return an input column)
        lines.append(f"    _v = fmax(asarray(value({', '.join(args)}), dtype=float64), _lo)")
        lines.append("    minimum(_v, _hi, out=_v)")
        lines.append("    return _v")
    return "\n".join(lines) + "\n"


class _NumbaScalarPrinter(StrPrinter):
    """Prints an expression as one scalar Python expression for a numba ``njit`` loop body.

    Only operations numba evaluates the same way at every position of a loop: IEEE
    arithmetic, ``sqrt`` and ``abs`` (correctly rounded or exact, also when LLVM
    vectorises them), and calls to the scalar ``math`` functions and helpers below
    (never vectorised into another implementation unless numba uses Intel SVML, which
    :func:`numba_unsupported` refuses). Anything else raises ``NotImplementedError``,
    so the numba backend is not offered for that function.
    """

    _MATH: ClassVar[dict[str, str]] = {"exp": "exp", "log": "log", "tanh": "tanh", "sqrt": "sqrt", "sin": "sin", "cos": "cos", "tan": "tan",
                                       "asin": "asin", "acos": "acos", "atan": "atan", "sinh": "sinh", "cosh": "cosh",
                                       "asinh": "asinh", "acosh": "acosh", "atanh": "atanh", "erf": "erf", "erfc": "erfc"}

    def _print_Function(self, e: Any) -> str:
        name = self._MATH.get(e.func.__name__)
        if name is None or len(e.args) != 1:
            raise NotImplementedError(e.func.__name__)
        return f"_math.{name}({self._print(e.args[0])})"

    def _print_sigmoid(self, e: Any) -> str:
        return f"_nb_sigmoid({self._print(e.args[0])})"

    def _print_softplus(self, e: Any) -> str:
        return f"_nb_softplus({self._print(e.args[0])})"

    def _print_Abs(self, e: Any) -> str:
        return f"abs({self._print(e.args[0])})"

    def _print_Min(self, e: Any) -> str:
        return _fold(self, e.args, lambda a, b: f"_nb_minimum({a}, {b})")

    def _print_Max(self, e: Any) -> str:
        return _fold(self, e.args, lambda a, b: f"_nb_maximum({a}, {b})")

    def _print_sign(self, e: Any) -> str:
        return f"_nb_sign({self._print(e.args[0])})"

    def _print_Heaviside(self, e: Any) -> str:
        h0 = e.args[1] if len(e.args) > 1 else sympy.Rational(1, 2)
        return f"_nb_heaviside({self._print(e.args[0])}, {_as_float_literal(h0)})"

    def _print_DiracDelta(self, e: Any) -> str:
        return f"(0.0*({self._print(e.args[0])}))"

    def _print_Piecewise(self, e: Any) -> str:
        *pairs, (last, last_cond) = e.args
        out = self._print(last) if last_cond == sympy.true else "_nan"
        if last_cond != sympy.true:
            pairs.append((last, last_cond))
        for val, cond in reversed(pairs):
            out = f"(({self._print(val)}) if ({self._print(cond)}) else ({out}))"
        return out

    def _print_Relational(self, e: Any) -> str:
        ops = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
        if e.rel_op not in ops:
            raise NotImplementedError(e.rel_op)
        return f"(({self._print(e.lhs)}) {ops[e.rel_op]} ({self._print(e.rhs)}))"

    def _print_And(self, e: Any) -> str:
        return "(" + " and ".join(f"({self._print(a)})" for a in e.args) + ")"

    def _print_Or(self, e: Any) -> str:
        return "(" + " or ".join(f"({self._print(a)})" for a in e.args) + ")"

    def _print_Not(self, e: Any) -> str:
        return f"(not ({self._print(e.args[0])}))"

    def _print_BooleanTrue(self, e: Any) -> str:
        return "True"

    def _print_BooleanFalse(self, e: Any) -> str:
        return "False"

    def _print_Pow(self, e: Any, rational: bool = False) -> str:
        base, expo = e.args
        b = f"({self._print(base)})"
        if expo == sympy.Rational(1, 2):
            return f"_math.sqrt{b}"
        if expo == -sympy.Rational(1, 2):
            return f"(1.0/_math.sqrt{b})"
        if expo.is_Integer and 2 <= abs(int(expo)) <= _MAX_UNROLLED_POWER:
            prod = "*".join([b] * abs(int(expo)))
            return f"({prod})" if expo > 0 else f"(1.0/({prod}))"
        if expo == -1:
            return f"(1.0/{b})"
        return f"({b}**({self._print(expo)}))"

    def _print_Rational(self, e: Any) -> str:
        return _as_float_literal(e)

    def _print_Integer(self, e: Any) -> str:
        return _as_float_literal(e)

    def _print_Float(self, e: Any) -> str:
        return _as_float_literal(e)

    def _print_NumberSymbol(self, e: Any) -> str:
        return _as_float_literal(e)

    _print_Pi = _print_NumberSymbol
    _print_Exp1 = _print_NumberSymbol

    def _print_Infinity(self, e: Any) -> str:
        return "_inf"

    def _print_NegativeInfinity(self, e: Any) -> str:
        return "(-_inf)"

    def _print_NaN(self, e: Any) -> str:
        return "_nan"

    def _print_Symbol(self, e: Any) -> str:
        return str(e.name)


#: transcendental functions: where numba uses Intel SVML, a vectorised loop calls SVML's version
#: and the loop's remainder libm's, so a record's value could depend on its position
_EXACT_CALLS = ("sqrt", "Abs", "Min", "Max", "sign", "Heaviside", "DiracDelta", "Piecewise")

NUMBA_HELPERS = '''
import math as _math
import numba as _nb
from numpy import ascontiguousarray as _contiguous, empty as _empty

_inf = _math.inf
_nan = _math.nan
#: no fastmath (no reassociation, no contraction into fused multiply-adds): every record's value is
#: the same IEEE computation wherever it sits in the loop; machine code cached next to a cached module
_NB = dict(nogil=True, error_model="numpy", cache="__file__" in globals())
_column = _nb.types.Array(_nb.float64, 1, "C", readonly=True)


def _readonly(values):
    # a read-only view of a contiguous float64 copy only where needed: the caller's array is untouched
    view = _contiguous(values, dtype=float64).view()
    view.flags.writeable = False
    return view


@_nb.njit(**_NB)
def _nb_minimum(a, b):
    # numpy.minimum: NaN if either is NaN
    if a != a or b != b:
        return _nan
    return a if a <= b else b


@_nb.njit(**_NB)
def _nb_maximum(a, b):
    if a != a or b != b:
        return _nan
    return a if a >= b else b


@_nb.njit(**_NB)
def _nb_sigmoid(x):
    # the numpy kernel's _sigmoid: exp(min(x, 0)) / (1 + exp(-|x|))
    return _math.exp(_nb_minimum(x, 0.0)) / (1.0 + _math.exp(-abs(x)))


@_nb.njit(**_NB)
def _nb_softplus(x):
    # numpy.logaddexp(0, x)
    if x == 0.0:
        return _math.log(2.0)
    if x > 0.0:
        return x + _math.log1p(_math.exp(-x))
    if x < 0.0:
        return _math.log1p(_math.exp(x))
    return x + 0.0


@_nb.njit(**_NB)
def _nb_sign(x):
    if x > 0.0:
        return 1.0
    if x < 0.0:
        return -1.0
    return x * 0.0  # 0 for 0, NaN for NaN


@_nb.njit(**_NB)
def _nb_heaviside(x, h0):
    if x > 0.0:
        return 1.0
    if x < 0.0:
        return 0.0
    if x == 0.0:
        return h0
    return x
'''


def numba_unsupported(expr: sympy.Expr, using_svml: bool) -> str | None:
    """Why the numba backend cannot evaluate ``expr`` position-independently, or None when it can."""
    if using_svml:
        for node in sympy.preorder_traversal(expr):
            if isinstance(node, sympy.Function) and type(node).__name__ not in _EXACT_CALLS:
                return f"numba uses Intel SVML, whose vectorised {type(node).__name__} may differ from the scalar one"
            if isinstance(node, sympy.Pow) and not (node.exp.is_Integer or node.exp in (sympy.S.Half, -sympy.S.Half)):
                return "numba uses Intel SVML, whose vectorised pow may differ from the scalar one"
    try:
        _numba_body(expr, {})
    except NotImplementedError as exc:
        return f"no scalar form for {exc}"
    return None


def _numba_body(expr: sympy.Expr, tokens: dict[str, str]) -> list[str]:
    """Lines computing ``_r = expr`` from scalar locals named by ``tokens`` (common sub-expressions first)."""
    subs = {sym: sympy.Symbol(tokens.get(str(sym), str(sym))) for sym in expr.free_symbols}
    replacements, reduced = sympy.cse([expr.xreplace(subs)], symbols=sympy.numbered_symbols("_t"), optimizations="basic")
    printer = _NumbaScalarPrinter()
    lines = [f"{sym} = {printer.doprint(sub)}" for sym, sub in replacements]
    lines.append(f"_r = {printer.doprint(reduced[0])}")
    return lines


def _numba_clamped_source(expr: sympy.Expr, args: list[str], box: dict[str, tuple[float, float, float | None]]) -> str:
    """``value_clamped`` as one compiled loop: per record, impute and clamp the inputs, evaluate, clamp.

    The same steps as the numpy backend's passes, fused: a record is read once and its
    value written once. The loop is compiled when the module is created, so a function
    numba cannot type is refused there, never at release time.
    """
    used = sorted(str(s) for s in expr.free_symbols)
    tokens = {name: f"_v{j}" for j, name in enumerate(args)}
    params = [f"_x{j}" for j in range(len(args))]
    loop = [f"def _value_clamped_loop({', '.join(params)}, _lo, _hi, _out):",
            "    for _i in range(_out.shape[0]):"]
    for j, name in enumerate(args):
        if name not in used:
            continue
        lo, hi, impute = box[name]
        v = tokens[name]
        loop.append(f"        {v} = _x{j}[_i]")
        if impute is not None:
            loop.append(f"        if {v} != {v}:")
            loop.append(f"            {v} = {impute!r}")
        # max/min map +-inf to the bounds; a missing value here means the domain was broken
        loop.append(f"        {v} = min(max({v}, {lo!r}), {hi!r})")
    loop.extend(f"        {line}" for line in _numba_body(expr, tokens))
    loop.append("        if _r != _r:")
    loop.append("            _r = _lo")
    loop.append("        _out[_i] = min(max(_r, _lo), _hi)")
    # inputs typed read-only (pandas hands out read-only views): one signature for every caller
    signature = "_nb.void(" + ", ".join(["_column"] * len(args) + ["_nb.float64", "_nb.float64", "_nb.float64[::1]"]) + ")"
    # no field name appears in the wrapper: a field named like one of its locals or globals (``_out``,
    # ``_empty``, ``float``) would otherwise shadow it (a field named ``_out`` read uninitialised memory)
    wrapper = ["def value_clamped(*_args):",
               "    _cols = [_readonly(_c) for _c in _args[:-2]]",
               "    _out = _empty(_cols[0].shape[0], dtype=float64)",
               "    _value_clamped_loop(*_cols, float(_args[-2]), float(_args[-1]), _out)",
               "    return _out"]
    return ("\n".join(loop) + f"\n\n\n_value_clamped_loop = _nb.njit({signature}, **_NB)(_value_clamped_loop)\n\n\n"
            + "\n".join(wrapper) + "\n")


def _generated_names(args: list[str]) -> dict[str, str]:
    """The generated parameter name of each field: ``_x0, _x1, ...`` by position."""
    return {name: f"_x{j}" for j, name in enumerate(args)}


def _renamed(expr: Any, rename: dict[str, str]) -> Any:
    """``expr`` with each field's symbol replaced by its generated name (same assumptions)."""
    expr = sympy.sympify(expr, strict=True)  # numbers and sympy objects only: never the text fallback (eval)
    subs = {sym: sympy.Symbol(rename[str(sym)], **sym.assumptions0)
            for sym in expr.free_symbols if isinstance(sym, sympy.Symbol) and str(sym) in rename}
    return expr.xreplace(subs)


def _assumptions(expr: sympy.Expr, name: str) -> dict:
    for sym in expr.free_symbols:
        if str(sym) == name:
            return sym.assumptions0
    return {}


def generate_module(
    key: str,
    functions: dict[str, list[sympy.Expr]],
    args: list[str],
    backend: str = "numpy",
    clamped: tuple[sympy.Expr, dict[str, tuple[float, float, float | None]]] | None = None,
) -> str:
    """Source of a module defining one batched function per entry of ``functions``.

    Each function takes one float64 array per name in ``args`` and returns one
    array (or a tuple of arrays) of the same length. ``clamped = (expr, box)``
    adds ``value_clamped`` (see :func:`_clamped_value_source`; with ``backend="numba"``
    one compiled loop, :func:`_numba_clamped_source`, and numpy for the rest).
    """
    # no field name is ever an identifier of the generated code: a field named ``e``, ``pi``, ``exp``,
    # ``value``, ``float64``, ``_ne``, ... would shadow the constant, function or helper of that name.
    # Each field becomes its positional parameter ``_x<j>`` (simultaneous substitution, so a field
    # itself named ``_x1`` is harmless); callers pass the columns by position, in the order of ``args``
    rename = _generated_names(args)
    params = [rename[a] for a in args]
    functions = {name: [_renamed(e, rename) for e in exprs] for name, exprs in functions.items()}
    if clamped is not None:
        clamped = (_renamed(clamped[0], rename), {rename[n]: b for n, b in clamped[1].items() if n in rename})
    args = params
    extra = {"numexpr": "import numexpr as _ne", "numba": NUMBA_HELPERS}.get(backend, "")
    parts = [HEADER.format(key=key, extra_imports=extra)]
    # numba compiles only value_clamped (the data-facing loop); value, gradient and norm are numpy's
    array_backend = "numpy" if backend == "numba" else backend
    for name, exprs in functions.items():
        parts.append(_function_source(name, exprs, args, array_backend))
    if clamped is not None:
        if backend == "numba":
            parts.append(_numba_clamped_source(clamped[0], args, clamped[1]))
        else:
            parts.append(_clamped_value_source(clamped[0], args, clamped[1], backend))
    return "\n\n".join(parts)


def numpy_callable(exprs: list[sympy.Expr], symbols: list[sympy.Symbol]):
    """Compile ``exprs`` into one in-process numpy function of the symbols' columns."""
    args = [str(s) for s in symbols]
    source = generate_module("inline", {"_kernel": list(exprs)}, args, "numpy")
    namespace: dict[str, Any] = {}
    exec(compile(source, "<opendp_hybridad kernel>", "exec"), namespace)  # noqa: S102 - source generated above
    fn = namespace["_kernel"]
    if len(exprs) == 1:
        return lambda *cols: (fn(*cols),)
    return fn


__all__ = ["generate_module", "numba_unsupported", "numpy_callable", "sigmoid"]
