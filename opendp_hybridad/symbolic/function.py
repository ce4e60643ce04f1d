"""A per-record function: a sympy expression bound to a :class:`Schema`.

This is the object users hold. It gives closed forms (partials, gradient,
gradient norms, LaTeX), certificates (delegated to :mod:`opendp_hybridad.analysis`)
and compiled kernels (delegated to :mod:`opendp_hybridad.compile`). Derived
expressions are computed once and cached, since sympy differentiation is the
slow part of the front end.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import sympy

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.symbolic.display import short_number, short_str
from opendp_hybridad.symbolic.functions import canonical, to_sympy
from opendp_hybridad.symbolic.parse import parse_expression
from opendp_hybridad.symbolic.schema import Schema

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.analysis.certificate import Analysis, BoundCertificate, RangeCertificate
    from opendp_hybridad.compile.kernel import Kernel

#: cap on the size of a gradient norm that is put over a common denominator
_TOGETHER_MAX_OPS = 2000
#: a repr shows at most this much of the expression (str() shows all of it)
_REPR_MAX_CHARS = 300


def normalise_norm(p: Any) -> float:
    """Accept 1, 2, inf (or "inf", "1", "2") as the order of a vector norm."""
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise DeclarationError(f"norm must be 1, 2 or inf, not {p!r}") from None
    if value not in (1.0, 2.0, math.inf):
        raise DeclarationError(f"norm must be 1, 2 or inf, not {p!r}")
    return value


def dual_norm(p: float) -> float:
    """The q with 1/p + 1/q = 1: ``sup ||grad f||_p`` bounds changes measured in the q-norm."""
    p = normalise_norm(p)
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]


def parse(text: str, schema: Schema) -> sympy.Expr:
    """Parse an expression over the schema's fields, without evaluating any of it as Python.

    Arithmetic, comparisons (inside ``where``), the constants ``pi`` and ``E`` and
    the functions of :data:`~opendp_hybridad.symbolic.functions.NAMESPACE` only;
    see :mod:`opendp_hybridad.symbolic.parse` for the whitelist and the caps.
    Anything else raises a one-line :class:`DeclarationError`.
    """
    return parse_expression(text, schema)


def exact_constant(value: sympy.Float) -> sympy.Rational:
    """The exact rational value of a float constant: the double the kernel computes with.

    A certificate is then about the real-arithmetic version of exactly the constants
    the compiled kernel uses, and sympy cannot fold a function of a float constant
    into a 53-bit rounded value that it then treats as exact. (Text literals are read
    by the parser as the decimal written.)
    """
    return sympy.Rational(value)


def _is_a_double(value: sympy.Float) -> bool:
    """Whether a sympy Float is exactly a finite double (others, such as 1e500, stay Floats).

    Read from the mpmath triple (sign, mantissa, exponent, bits) without forming the
    rational: a Float with an astronomic exponent would need an astronomic integer.
    """
    _, mantissa, exponent, bits = value._mpf_
    if mantissa == 0:
        return exponent == 0  # zero (mpmath's inf and nan have a zero mantissa and special exponents)
    return bits <= 53 and exponent >= -1074 and exponent + bits <= 1024


#: a declaration (parsing, sympy's evaluation, lowering) that takes longer is refused
DECLARATION_SECONDS = 5.0


class RecordFunction:
    """A scalar function of one record, ``f: box -> R``, with closed forms and certificates.

    The expression may only use the schema's fields (matched by name). Symbols
    created elsewhere with the same names are replaced by the schema's, which
    carry sign assumptions that hold on the declared box.
    """

    def __init__(self, expression: Any, schema: Schema, name: str | None = None):
        # sympy evaluates while it builds (Max compares every pair of its arguments, which
        # grows fast with exponentials): a declaration that takes too long is refused
        from opendp_hybridad.time_limit import TimeLimitError, time_limit

        try:
            with time_limit(DECLARATION_SECONDS):
                self._declare(expression, schema, name)
        except TimeLimitError:
            raise DeclarationError(
                f"the expression takes longer than {DECLARATION_SECONDS:g} s to declare (sympy's evaluation while "
                "building it); simplify it, or split a long min/max") from None

    def _declare(self, expression: Any, schema: Schema, name: str | None) -> None:
        # text (str subclasses too) only ever goes through the parser; anything else through
        # to_sympy, never sympy.sympify's string path (which runs Python)
        expr = parse(expression, schema) if isinstance(expression, str) else to_sympy(expression, "a record function's expression")
        if not isinstance(expr, sympy.Expr):
            raise DeclarationError("a record function must be a number-valued expression, not a condition")
        missing = sorted(str(s) for s in expr.free_symbols if str(s) not in schema)
        if missing:
            raise DeclarationError(
                f"the expression uses {', '.join(missing)}, which the schema does not declare "
                f"(fields: {', '.join(schema.names)})"
            )
        # one rebuild that swaps in the schema's symbols (with their sign assumptions) and turns
        # every float constant into its exact value: sympy re-evaluates while rebuilding, and a float
        # argument would be folded in 53-bit precision into a rounded constant that is then
        # treated as exact (tanh(Min(-0.196, x)) with x >= 0); rationals stay symbolic
        substitution: dict[sympy.Basic, sympy.Basic] = {s: schema.symbol(str(s)) for s in expr.free_symbols}
        # exponents stay floats: a negative base to a rational power with a 2^52 denominator
        # sends sympy into root extraction ((-0.031)**0.7 hangs); a float exponent evaluates
        exponents = {p.exp for p in expr.atoms(sympy.Pow) if p.exp.is_Float}
        substitution.update({c: exact_constant(c) for c in expr.atoms(sympy.Float) if _is_a_double(c) and c not in exponents})
        try:
            expr = expr.xreplace(substitution)
        except (TypeError, ValueError) as exc:  # sympy cannot order Min/Max arguments, and similar
            raise DeclarationError(f"the expression cannot be declared over this schema: {type(exc).__name__}") from None
        self.expr: sympy.Expr = canonical(expr)
        self.schema = schema
        self.name = name or "f"
        # certificates are pure functions of (expression, box, settings): keep them
        self._certificates: dict[tuple, Any] = {}
        self._kernels: dict[str, Any] = {}
        # lowering checks that every operation is supported, at declaration time
        from opendp_hybridad.analysis.tape import Tape

        Tape(list(self.symbols)).add_output(self.expr)

    @classmethod
    def trace(cls, fn: Callable[..., Any], schema: Schema, name: str | None = None) -> RecordFunction:
        """Trace a plain Python function (see :mod:`opendp_hybridad.symbolic.trace`)."""
        from opendp_hybridad.symbolic.trace import trace

        return cls(trace(fn, schema.symbol_map), schema, name=name or getattr(fn, "__name__", None))

    # -- identity -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self.schema.names

    @property
    def symbols(self) -> tuple[sympy.Symbol, ...]:
        return self.schema.symbols()

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical expression (``sympy.srepr``) and of the schema's field names,
        bounds and missing-value policies: the compile-cache key, and the ``subject`` stamped on
        every certificate this function returns (consumers check it)."""
        import hashlib

        text = sympy.srepr(self.expr) + "|" + repr([(n, f.lower, f.upper, f.missing, f.impute) for n, f in self.schema.fields.items()])
        return hashlib.sha256(text.encode()).hexdigest()

    def __str__(self) -> str:
        # long exact constants (a float's exact double, 1/1.8**2 after fix) print as short
        # decimals; the expression itself keeps the exact values (symbolic/display.py)
        return short_str(self.expr)

    def __repr__(self) -> str:
        text = str(self)
        if len(text) > _REPR_MAX_CHARS:
            text = text[:_REPR_MAX_CHARS] + "..."
        box = ", ".join(f"{n} in [{short_number(f.lower)}, {short_number(f.upper)}]" for n, f in self.schema.fields.items())
        return f"RecordFunction({self.name}: {text} over {box})"

    def latex(self) -> str:
        return sympy.latex(self.expr)

    # -- closed forms -----------------------------------------------------------
    def _index(self, field: str | sympy.Symbol) -> int:
        name = str(field)
        if name not in self.schema:
            raise DeclarationError(f"no field named {name!r} in the schema (fields: {', '.join(self.names)})")
        return self.names.index(name)

    @functools.cached_property
    def _gradient(self) -> tuple[sympy.Expr, ...]:
        return tuple(sympy.diff(self.expr, s) for s in self.symbols)

    @functools.cached_property
    def _hessian(self) -> tuple[tuple[sympy.Expr, ...], ...]:
        g = self._gradient
        n = len(g)
        rows: list[list[sympy.Expr]] = [[sympy.Integer(0)] * n for _ in range(n)]
        for j in range(n):
            for k in range(j, n):
                rows[j][k] = rows[k][j] = sympy.diff(g[j], self.symbols[k]) if g[j] != 0 else sympy.Integer(0)
        return tuple(tuple(r) for r in rows)

    def partial(self, field: str | sympy.Symbol) -> sympy.Expr:
        """The closed-form partial derivative with respect to one field."""
        return self._gradient[self._index(field)]

    def gradient(self) -> dict[str, sympy.Expr]:
        """All partial derivatives, by field name."""
        return dict(zip(self.names, self._gradient, strict=True))

    def hessian(self) -> sympy.Matrix:
        return sympy.Matrix(self._hessian)

    def gradient_norm(self, norm: Any = 2, simplify: bool = True) -> sympy.Expr:
        """``||grad f||_p`` as a closed form (p = 1, 2 or inf); p = 2 over one denominator."""
        p = normalise_norm(norm)
        g = [c for c in self._gradient if c != 0]
        if not g:
            return sympy.Integer(0)
        if p == 2.0:
            squares = sum(c**2 for c in g)
            # together() puts the squares over one denominator, which sympy then
            # pulls out of the root (BMI: sqrt(4a^2w^2 + h^2(a^2 + w^2))/h^3); it is
            # cheap, unlike a full simplify
            out = sympy.sqrt(sympy.together(squares) if simplify and sympy.count_ops(squares) <= _TOGETHER_MAX_OPS else squares)
        elif p == 1.0:
            out = sum(sympy.Abs(c) for c in g)
        else:
            out = sympy.Max(*[sympy.Abs(c) for c in g])
        return out

    # -- certificates -------------------------------------------------------------
    def range(self, tolerance: float = 1e-3, time_budget: float = 2.0) -> RangeCertificate:
        """Certified enclosure ``[lo, hi]`` of f over the declared box (computed once per setting)."""
        from opendp_hybridad.analysis.certify import certify_range

        key = ("range", tolerance, time_budget)
        if key not in self._certificates:
            self._certificates[key] = self._stamp(certify_range(self, tolerance=tolerance, time_budget=time_budget))
        return self._certificates[key]

    def lipschitz(self, norm: Any = 2, tolerance: float = 1e-3, time_budget: float = 2.0) -> BoundCertificate:
        """Certified upper bound on ``K = sup ||grad f||_p`` over the box, with a witness (computed once per setting)."""
        from opendp_hybridad.analysis.certify import certify_lipschitz

        key = ("lipschitz", normalise_norm(norm), tolerance, time_budget)
        if key not in self._certificates:
            cert = certify_lipschitz(self, norm=key[1], tolerance=tolerance, time_budget=time_budget)
            self._certificates[key] = self._stamp(cert, kind="gradient_norm")
        return self._certificates[key]

    def partial_bounds(self, tolerance: float = 1e-3, time_budget: float = 1.0) -> dict[str, BoundCertificate]:
        """Certified ``sup |df/dx_j|`` per field: the sensitivity to each feature alone."""
        from opendp_hybridad.analysis.certify import certify_partial

        return {n: self._stamp(certify_partial(self, j, tolerance=tolerance, time_budget=time_budget), kind=f"partial:{n}")
                for j, n in enumerate(self.names)}

    def _stamp(self, certificate: Any, **what: Any) -> Any:
        """The certificate with what it certifies: this function's fingerprint (and the quantity)."""
        import dataclasses

        return dataclasses.replace(certificate, subject=self.fingerprint, **what)

    def analyse(self, norm: Any = 2, tolerance: float = 1e-3, time_budget: float = 2.0) -> Analysis:
        """Range, Lipschitz bound and per-field partial bounds together."""
        from opendp_hybridad.analysis.certificate import Analysis

        return Analysis(
            function=str(self.expr),
            range=self.range(tolerance, time_budget),
            lipschitz=self.lipschitz(norm, tolerance, time_budget),
            partials=self.partial_bounds(tolerance, time_budget / 2),
        )

    # -- compilation and partial evaluation ------------------------------------------
    def compile(self, backend: str = "auto", cache: bool | str = False) -> Kernel:
        """A batched float64 kernel for value, gradient and gradient norm.

        ``backend`` is ``"numpy"``, ``"numexpr"``, ``"numba"`` (``value_clamped``, which sums
        and row maps run, as one compiled loop; the rest numpy) or ``"auto"``: the fastest
        installed backend for this function by a short calibration on synthetic data, run
        once per function and process before any data (on a loaded machine, numba or numpy
        untimed; ``$OPENDP_HYBRIDAD_BACKEND`` pins it), see
        :func:`opendp_hybridad.compile.kernel.backend_choice`. With numba it costs numba's
        start-up once per process and a compile per function (tenths of a second each).
        ``cache=True`` writes the generated module once to the
        ahead-of-time cache (see :mod:`opendp_hybridad.compile.cache`) and loads it
        from there in every later process; a directory path picks the cache.
        """
        from opendp_hybridad.compile.kernel import compile_function

        if cache is not False:
            return compile_function(self, backend=backend, cache=cache)
        if backend == "auto":  # the chosen backend's kernel: calibration has compiled it already
            from opendp_hybridad.compile.kernel import choose_backend

            backend = choose_backend(self)
        if backend not in self._kernels:  # a JIT kernel is reused by every query on this function
            self._kernels[backend] = compile_function(self, backend=backend, cache=False)
        return self._kernels[backend]

    def fix(self, values: Mapping[str, float] | None = None, **kwargs: float) -> RecordFunction:
        """Partial evaluation: substitute numbers for some fields.

        Returns a function over the remaining fields only; its certificates are
        over the remaining box. Each fixed value must lie inside its field's
        bounds (the result is then a restriction of f to a face of the box).
        """
        fixed = dict(values or {})
        fixed.update(kwargs)
        subs = {}
        for name, value in fixed.items():
            fld = self.schema[name]
            v = float(value)
            if not (fld.lower <= v <= fld.upper):
                raise DeclarationError(f"fixed value for {name!r} lies outside its bounds [{fld.lower}, {fld.upper}]")
            subs[self.schema.symbol(name)] = sympy.Rational(v) if math.isfinite(v) else v
        remaining = self.schema.without(fixed)
        return RecordFunction(self.expr.xreplace(subs), remaining, name=f"{self.name}|{','.join(fixed)}")
