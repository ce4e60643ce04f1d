"""Parse the text of a per-record expression without ever evaluating it as Python.

The CLI and :func:`opendp_hybridad.parse` accept expressions written by people
who may not be trusted (a web form, a shared config file), so text never reaches
``eval``, ``sympy.sympify`` or ``sympy.parse_expr`` (both of which run Python).
Instead the text is read by :func:`ast.parse` and the sympy expression is built
node by node from an explicit whitelist:

* numbers: ``int`` and ``float`` literals only (no strings, bytes, complex; ``True``
  and ``False`` only as conditions). A float literal becomes the exact rational
  number its decimal text denotes (``0.1`` is ``1/10``), not the nearest double:
  sympy arithmetic on rationals is exact, so derivatives and constant folding
  add no rounding, and the certificates enclose the function as written
  (the interval code rounds every rational constant outward).
* names: the schema's fields, and the constants ``pi`` and ``E``.
* arithmetic: ``+ - * / **`` (``^`` is also a power, as in sympy's syntax), unary
  ``-`` and ``+``.
* conditions (for ``where`` and ``Piecewise``): ``< <= > >=``, chained
  comparisons (``0 < x < 1`` means ``0 < x and x < 1``), ``and``/``or``/``not``
  and ``&``/``|``/``~``. ``==`` and ``!=`` are refused (a jump on a set of measure
  zero is never what a sensitivity analysis wants).
* calls of the whitelisted function names of
  :data:`opendp_hybridad.symbolic.functions.NAMESPACE`, with positional
  arguments only; ``Piecewise`` takes ``(value, condition)`` pairs.

Anything else (attributes, subscripts, lambdas, comprehensions, f-strings,
other names, keyword arguments, ...) is refused with a one-line
:class:`~opendp_hybridad.errors.DeclarationError` naming what was refused.

Resources are capped so that hostile text fails fast: the text length
(:data:`MAX_LENGTH`), the number of syntax nodes (:data:`MAX_NODES`), the
nesting depth (:data:`MAX_DEPTH`; a long sum or product counts as one level),
constant exponents (:data:`MAX_EXPONENT`, so ``9**9**9`` is refused before it
is computed) and the total size of the exact constants that arithmetic may
create (:data:`MAX_CONSTANT_BITS`).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import sympy

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.symbolic.functions import NAMESPACE

#: longest expression text accepted, in characters
MAX_LENGTH = 20_000
#: most syntax nodes (as counted by :func:`ast.walk`) in one expression
MAX_NODES = 10_000
#: deepest nesting; a chain ``a + b - c + ...`` or ``a * b / c ...`` is one level
MAX_DEPTH = 100
#: largest absolute value of a constant exponent
MAX_EXPONENT = 1000
#: total bits of the exact constants (literals and powers of constants) an expression may create
MAX_CONSTANT_BITS = 100_000

#: constants a name may refer to (after the schema's fields)
CONSTANTS: dict[str, sympy.Expr] = {"pi": sympy.pi, "E": sympy.E}

#: how many arguments each callable name takes: (least, most or None)
_ARITY: dict[str, tuple[int, int | None]] = {
    "exp": (1, 1), "log": (1, 2), "sqrt": (1, 1), "tanh": (1, 1), "abs": (1, 1), "Abs": (1, 1),
    "min": (1, None), "max": (1, None), "Min": (1, None), "Max": (1, None),
    "minimum": (1, None), "maximum": (1, None),
    "sigmoid": (1, 1), "softplus": (1, 1), "where": (3, 3), "clip": (3, 3), "Piecewise": (1, None),
}

#: the functions a call may name, taken from NAMESPACE (every name there is a function or a constant)
FUNCTIONS: dict[str, Callable[..., Any]] = {name: NAMESPACE[name] for name in _ARITY}

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.BitXor: "^",
           ast.BitAnd: "&", ast.BitOr: "|", ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@",
           ast.LShift: "<<", ast.RShift: ">>"}
_ALLOWED_BINARY = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.BitXor, ast.BitAnd, ast.BitOr)
_COMPARE = {ast.Lt: sympy.Lt, ast.LtE: sympy.Le, ast.Gt: sympy.Gt, ast.GtE: sympy.Ge}
_COMPARE_TEXT = {ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}

#: what a refused node is called in the error message
_REFUSED = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.Slice: "slices are not allowed",
    ast.Lambda: "lambda functions are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.List: "lists are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Tuple: "tuples are not allowed (except as (value, condition) pairs of Piecewise)",
    ast.IfExp: "conditional expressions are not allowed (write where(condition, a, b))",
    ast.NamedExpr: "assignment expressions are not allowed",
    ast.Starred: "starred arguments are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
}

_NUM, _COND = "number", "condition"
#: the approximation of a condition that uses no field
_CONSTANT = "constant condition"
_FLOAT_TEXT = re.compile(r"(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?(?:[eE](?P<exp>[+-]?[0-9]+))?")


def _one_line(text: str, limit: int = 60) -> str:
    """``text`` shortened to one printable line (whitespace collapsed, control characters escaped)."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in flat)


class _Source:
    """The expression text, for quoting a node's source in messages and reading literals exactly."""

    def __init__(self, text: str):
        # the tokenizer's line breaks; ast positions are UTF-8 byte offsets within a line
        self.lines = [line.encode("utf-8", "surrogatepass") for line in re.split(r"\r\n|\r|\n", text)]

    def segment(self, node: ast.AST, limit: int = 200) -> str:
        lineno, end_lineno = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        col, end_col = getattr(node, "col_offset", None), getattr(node, "end_col_offset", None)
        if None in (lineno, end_lineno, col, end_col):
            return type(node).__name__
        if lineno == end_lineno:
            raw = self.lines[lineno - 1][col:end_col]
        else:
            parts = [self.lines[lineno - 1][col:]]
            for i in range(lineno, end_lineno - 1):
                parts.append(self.lines[i])
                if sum(len(p) for p in parts) > limit:
                    break
            else:
                parts.append(self.lines[end_lineno - 1][:end_col])
            raw = b"\n".join(parts)
        return raw[: 4 * limit].decode("utf-8", "replace")

    def quote(self, node: ast.AST) -> str:
        return f'("{_one_line(self.segment(node))}")'


class _Parser:
    def __init__(self, text: str, schema: Any):
        self.source = _Source(text)
        self.fields: dict[str, sympy.Symbol] = dict(schema.symbol_map)
        self.field_names: list[str] = list(schema.names)
        self.unknown: set[str] = set()
        self.constant_bits = 0
        # children of each node, computed once by the first pass (the tree is kept alive, so ids are stable)
        self.children: dict[int, list[ast.AST]] = {}
        # float approximations of constant nodes, by id (see approximate)
        self.approx: dict[int, Any] = {}

    # -- messages ----------------------------------------------------------------------
    def refuse(self, what: str, node: ast.AST) -> DeclarationError:
        return DeclarationError(f"expression refused: {what} {self.source.quote(node)}")

    # -- structure -----------------------------------------------------------------------
    def _chain(self, node: ast.BinOp, family: tuple[type, ...]) -> tuple[list[ast.AST], list[bool]]:
        """The operands of a left-nested chain ``a + b - c ...`` and whether each is added (or multiplied)."""
        operands: list[ast.AST] = []
        positive: list[bool] = []
        cur: ast.AST = node
        while isinstance(cur, ast.BinOp) and isinstance(cur.op, family):
            operands.append(cur.right)
            positive.append(isinstance(cur.op, (ast.Add, ast.Mult)))
            cur = cur.left
        operands.append(cur)
        positive.append(True)
        operands.reverse()
        positive.reverse()
        return operands, positive

    def expand(self, node: ast.AST) -> list[ast.AST]:
        """Check one node (before its operands) and return its operands; refuse anything not whitelisted."""
        if isinstance(node, ast.Expression):
            return [node.body]
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _ALLOWED_BINARY):
                return self._refuse_operator(node)
            if isinstance(node.op, (ast.Add, ast.Sub)):
                return self._chain(node, (ast.Add, ast.Sub))[0]
            if isinstance(node.op, (ast.Mult, ast.Div)):
                return self._chain(node, (ast.Mult, ast.Div))[0]
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            return [node.operand]
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _COMPARE:
                    text = _COMPARE_TEXT.get(type(op), type(op).__name__)
                    raise self.refuse(f"the comparison {text} is not allowed (use <, <=, >, >=)", node)
            return [node.left, *node.comparators]
        if isinstance(node, ast.BoolOp):
            return list(node.values)
        if isinstance(node, ast.Call):
            return self._expand_call(node)
        if isinstance(node, ast.Name):
            return []
        if isinstance(node, ast.Constant):
            self._check_constant(node)
            return []
        raise self.refuse(_REFUSED.get(type(node), f"{type(node).__name__} is not allowed"), node)

    def _refuse_operator(self, node: ast.BinOp) -> list[ast.AST]:
        text = _BINARY.get(type(node.op), type(node.op).__name__)
        raise self.refuse(f"the operator {text} is not allowed", node)

    def _expand_call(self, node: ast.Call) -> list[ast.AST]:
        if not isinstance(node.func, ast.Name):
            if isinstance(node.func, ast.Attribute):
                raise self.refuse("attribute access is not allowed", node.func)
            raise self.refuse("only a whitelisted function may be called, by its bare name", node)
        name = node.func.id
        if name not in FUNCTIONS:
            raise self.refuse(f"calling {name} is not allowed (functions: {', '.join(sorted(FUNCTIONS))})", node)
        if node.keywords:
            raise self.refuse("keyword arguments are not allowed", node.keywords[0])
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.refuse("starred arguments are not allowed", arg)
        least, most = _ARITY[name]
        n = len(node.args)
        if n < least or (most is not None and n > most):
            want = str(least) if least == most else (f"at least {least}" if most is None else f"{least} to {most}")
            raise self.refuse(f"{name} takes {want} argument{'s' if want != '1' else ''}, not {n}", node)
        if name != "Piecewise":
            return list(node.args)
        operands: list[ast.AST] = []
        for arg in node.args:
            if not isinstance(arg, ast.Tuple) or len(arg.elts) != 2:
                raise self.refuse("each argument of Piecewise must be a (value, condition) pair", arg)
            operands.extend(arg.elts)
        return operands

    def _check_constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, (bool, int, float)):  # bool: a condition (True, False); int, float: numbers
            return
        what = {str: "string constants are", bytes: "bytes constants are", complex: "complex numbers are"}.get(type(value))
        raise self.refuse(f"{what or f'the constant {value!r} is'} not allowed", node)

    # -- kinds and depth (first pass: no sympy) -----------------------------------------------------
    def kind(self, node: ast.AST, operands: list[tuple[str, int]]) -> tuple[str, int]:
        depth = 1 + max((d for _, d in operands), default=0)
        if depth > MAX_DEPTH:
            raise self.refuse(f"the expression is nested more than {MAX_DEPTH} levels deep", node)
        kinds = [k for k, _ in operands]
        if isinstance(node, ast.Expression):
            if kinds[0] != _NUM:
                raise self.refuse("the expression is a condition, not a number (use where(condition, a, b))", node.body)
            return _NUM, depth
        if isinstance(node, ast.Constant):
            return (_COND if isinstance(node.value, bool) else _NUM), depth
        if isinstance(node, ast.Name):
            self._check_name(node)
            return _NUM, depth
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            self._need(node, kinds, _COND, "& and | combine conditions")
            return _COND, depth
        if isinstance(node, ast.BinOp):
            self._need(node, kinds, _NUM, "arithmetic applies to numbers")
            return _NUM, depth
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, (ast.Not, ast.Invert)):
                self._need(node, kinds, _COND, "not and ~ apply to conditions")
                return _COND, depth
            self._need(node, kinds, _NUM, "unary - and + apply to numbers")
            return _NUM, depth
        if isinstance(node, ast.Compare):
            self._need(node, kinds, _NUM, "comparisons compare numbers")
            return _COND, depth
        if isinstance(node, ast.BoolOp):
            self._need(node, kinds, _COND, "and and or combine conditions")
            return _COND, depth
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        name = node.func.id
        if name == "where":
            expected = [_COND, _NUM, _NUM]
        elif name == "Piecewise":
            expected = [_NUM, _COND] * (len(kinds) // 2)
        else:
            expected = [_NUM] * len(kinds)
        for got, want in zip(kinds, expected, strict=True):
            if got != want:
                raise self.refuse(f"{name} got a {got} where it takes a {want}", node)
        return _NUM, depth

    def _need(self, node: ast.AST, kinds: list[str], want: str, rule: str) -> None:
        if any(k != want for k in kinds):
            raise self.refuse(f"{rule}; a {_COND if want == _NUM else _NUM} was given", node)

    def _check_name(self, node: ast.Name) -> None:
        name = node.id
        if name in self.fields or name in CONSTANTS:
            return
        if name.startswith("__") and name.endswith("__"):
            raise self.refuse("dunder names are not allowed", node)
        if name in FUNCTIONS:
            raise self.refuse(f"{name} is a function: call it as {name}(...)", node)
        self.unknown.add(name)

    # -- building (second pass) -----------------------------------------------------------------
    def build(self, node: ast.AST, args: list[Any]) -> Any:
        value = self._build(node, args)
        approx = self.approx.get(id(node))
        if isinstance(approx, float) and not math.isfinite(approx) and not isinstance(value, sympy.Rational):
            # a constant beyond float64 (exp(exp(10))): no kernel can compute it, and sympy's own
            # evaluation of such towers takes minutes
            raise self.refuse("the constant is not a finite float64 number (it overflows or is undefined)", node)
        return value

    def _build(self, node: ast.AST, args: list[Any]) -> Any:
        if isinstance(node, ast.Expression):
            return args[0]
        if isinstance(node, ast.Constant):
            return self._number(node)
        if isinstance(node, ast.Name):
            return self.fields[node.id] if node.id in self.fields else CONSTANTS[node.id]
        if isinstance(node, ast.BinOp):
            op = node.op
            if isinstance(op, (ast.Add, ast.Sub)):
                positive = self._chain(node, (ast.Add, ast.Sub))[1]
                return self._sized(sympy.Add(*[a if p else -a for a, p in zip(args, positive, strict=True)]), node)
            if isinstance(op, (ast.Mult, ast.Div)):
                positive = self._chain(node, (ast.Mult, ast.Div))[1]
                return self._sized(sympy.Mul(*[a if p else sympy.Pow(a, -1) for a, p in zip(args, positive, strict=True)]), node)
            if isinstance(op, (ast.Pow, ast.BitXor)):
                return self._power(node, *args)
            return (sympy.And if isinstance(op, ast.BitAnd) else sympy.Or)(*args)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return self._sized(-args[0], node)
            if isinstance(node.op, ast.UAdd):
                return args[0]
            return sympy.Not(args[0])
        if isinstance(node, ast.Compare):
            parts = [_COMPARE[type(op)](args[i], args[i + 1]) for i, op in enumerate(node.ops)]
            return parts[0] if len(parts) == 1 else sympy.And(*parts)
        if isinstance(node, ast.BoolOp):
            return (sympy.And if isinstance(node.op, ast.And) else sympy.Or)(*args)
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        name = node.func.id
        if name == "Piecewise":
            return sympy.Piecewise(*[(args[i], args[i + 1]) for i in range(0, len(args), 2)])
        return self._sized(FUNCTIONS[name](*args), node)

    def _number(self, node: ast.Constant) -> sympy.Basic:
        value = node.value
        if isinstance(value, bool):
            return sympy.true if value else sympy.false
        if isinstance(value, int):
            self._spend(max(value.bit_length(), 1), node)
            return sympy.Integer(value)
        # a float literal: the exact rational its decimal text denotes
        text = self.source.segment(node).replace("_", "")
        match = _FLOAT_TEXT.fullmatch(text)
        if match is None or not (match["int"] or match["frac"]):
            raise self.refuse("this number literal could not be read exactly", node)
        digits = len(match["int"] or "") + len(match["frac"] or "")
        if len((match["exp"] or "").lstrip("+-0")) > 7:
            raise self.refuse("the number literal is too large or too small", node)
        exponent = abs(int(match["exp"] or "0"))
        self._spend(int(3.33 * (digits + exponent)) + 1, node)
        exact = Fraction(text)
        if math.isfinite(value) and float(exact) != value:  # pragma: no cover - the text is the literal the tokenizer read
            raise self.refuse("this number literal could not be read exactly", node)
        return sympy.Rational(exact.numerator, exact.denominator)

    def _spend(self, bits: int, node: ast.AST) -> None:
        self.constant_bits += bits
        if bits > MAX_CONSTANT_BITS or self.constant_bits > MAX_CONSTANT_BITS:
            raise self.refuse(f"the expression's constants are too large (more than {MAX_CONSTANT_BITS} bits)", node)

    def _power(self, node: ast.BinOp, base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
        if isinstance(exponent, sympy.Rational):
            if abs(exponent) > MAX_EXPONENT:
                raise self.refuse(f"the exponent {_one_line(str(exponent), 30)} is larger than {MAX_EXPONENT} in absolute value", node)
            # sympy computes powers of exact numbers at once, and distributes integer powers over products
            self._spend(int(_numeric_bits(base) * abs(exponent)) + 1, node)
        return self._sized(sympy.Pow(base, exponent), node)

    def _sized(self, value: Any, node: ast.AST) -> Any:
        """Refuse a result whose exact numeric part grew beyond the cap (a safety net behind the budget)."""
        coeff = value
        if isinstance(value, (sympy.Add, sympy.Mul)) and value.args:
            coeff = value.args[0]
        if isinstance(coeff, sympy.Rational) and int(coeff.p).bit_length() + int(coeff.q).bit_length() > 2 * MAX_CONSTANT_BITS:
            raise self.refuse(f"the expression's constants are too large (more than {MAX_CONSTANT_BITS} bits)", node)
        return value

    # -- float approximations of constant sub-expressions (between the passes) ----------------------
    def approximate(self, node: ast.AST, args: list[Any]) -> Any:
        """A float64 value of a constant number node, _CONSTANT for a constant condition, None if it uses a field."""
        if isinstance(node, ast.Expression):
            return args[0]
        if isinstance(node, ast.Constant):
            return _CONSTANT if isinstance(node.value, bool) else _to_float(node.value)
        if isinstance(node, ast.Name):
            return None if node.id in self.fields else float(CONSTANTS[node.id])
        if isinstance(node, ast.Compare):
            return _CONSTANT if all(a is not None for a in args) else None
        if isinstance(node, ast.BoolOp) or (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert))):
            return _CONSTANT if all(a is _CONSTANT for a in args) else None
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            return _CONSTANT if all(a is _CONSTANT for a in args) else None
        if any(a is None for a in args):
            return None
        try:
            return self._approximate(node, args)
        except OverflowError:
            return math.inf
        except (ValueError, ZeroDivisionError):
            return math.nan

    def _approximate(self, node: ast.AST, args: list[Any]) -> float:
        if isinstance(node, ast.BinOp):
            op = node.op
            if isinstance(op, (ast.Add, ast.Sub)):
                positive = self._chain(node, (ast.Add, ast.Sub))[1]
                return math.fsum(a if p else -a for a, p in zip(args, positive, strict=True))
            if isinstance(op, (ast.Mult, ast.Div)):
                positive = self._chain(node, (ast.Mult, ast.Div))[1]
                out = 1.0
                for a, p in zip(args, positive, strict=True):
                    out = out * a if p else out / a
                return out
            return math.pow(args[0], args[1])
        if isinstance(node, ast.UnaryOp):
            return -args[0] if isinstance(node.op, ast.USub) else args[0]
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        name = node.func.id
        if name in ("where", "Piecewise"):  # whichever branch holds: the largest, to be safe
            values = args[1:] if name == "where" else args[0::2]
            if any(a is _CONSTANT or a is None for a in values):
                return math.nan
            return max(values, key=lambda v: math.inf if math.isnan(v) else abs(v))
        return _FLOAT_FUNCTIONS[name](*args)

    # -- driver ---------------------------------------------------------------------------------------
    def run(self, tree: ast.Expression) -> sympy.Expr:
        kinds = self._postorder(tree, self.kind, first=True)
        assert kinds[0] == _NUM
        if self.unknown:
            missing = sorted(self.unknown)
            raise DeclarationError(
                f"the expression uses {', '.join(missing)}, which the schema does not declare "
                f"(fields: {', '.join(self.field_names)}; constants: {', '.join(CONSTANTS)})"
            )
        self.approx = {}
        self._postorder(tree, self._approximate_into, first=False)
        expr = self._postorder(tree, self.build, first=False)
        if expr.has(sympy.zoo, sympy.nan, sympy.oo, sympy.I):
            raise DeclarationError(
                "expression refused: it is not a finite real number everywhere "
                "(a division by zero, log(0), or the root of a negative constant)"
            )
        for atom in expr.atoms(sympy.Rational):
            if int(atom.p).bit_length() - int(atom.q).bit_length() > 1024:
                raise DeclarationError(
                    f"expression refused: the constant {_one_line(str(atom), 30)} is beyond the float64 range"
                )
        return expr

    def _approximate_into(self, node: ast.AST, args: list[Any]) -> Any:
        value = self.approximate(node, args)
        self.approx[id(node)] = value
        return value

    def _postorder(self, root: ast.AST, combine: Callable[[ast.AST, list[Any]], Any], first: bool) -> Any:
        """Combine operands before their node, without recursion (a long sum is a deep tree)."""
        results: dict[int, Any] = {}
        stack: list[tuple[ast.AST, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if ready:
                operands = [results.pop(id(c)) for c in self.children[id(node)]]
                results[id(node)] = combine(node, operands)
                continue
            if first:
                self.children[id(node)] = self.expand(node)
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(self.children[id(node)]))
        return results[id(root)]


def _to_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _exp(a: float) -> float:
    try:
        return math.exp(a)
    except OverflowError:
        return math.inf


def _log(a: float, base: float | None = None) -> float:
    if base is not None:
        return _log(a) / _log(base)
    return -math.inf if a == 0 else math.log(a)


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + _exp(-a))


def _softplus(a: float) -> float:
    return a if a > 30 else math.log1p(math.exp(a))


#: float64 versions of the functions, to size constant sub-expressions without sympy's evaluation
_FLOAT_FUNCTIONS: dict[str, Callable[..., float]] = {
    "exp": _exp, "log": _log, "sqrt": math.sqrt, "tanh": math.tanh, "abs": abs, "Abs": abs,
    "min": min, "max": max, "Min": min, "Max": max, "minimum": min, "maximum": max,
    "sigmoid": _sigmoid, "softplus": _softplus, "clip": lambda x, lo, hi: min(max(x, lo), hi),
}


def _numeric_bits(value: sympy.Basic) -> float:
    """Bits of the exact numbers sympy would compute when raising ``value`` to a power of 1."""
    if isinstance(value, sympy.Rational):
        return max(int(value.p).bit_length(), int(value.q).bit_length(), 1)
    if isinstance(value, sympy.Mul):
        return sum(_numeric_bits(a) for a in value.args)
    if isinstance(value, sympy.Pow) and isinstance(value.exp, sympy.Rational):
        return _numeric_bits(value.base) * abs(float(value.exp))
    return 0.0


def parse_expression(text: str, schema: Any) -> sympy.Expr:
    """The sympy expression that ``text`` denotes over ``schema``'s fields; nothing is evaluated as Python.

    Raises :class:`DeclarationError` (one line) for anything outside the
    whitelist described in this module's docstring.
    """
    if not isinstance(text, str):
        raise DeclarationError(f"an expression to parse must be text, not {type(text).__name__}")
    source = str.__str__(text).strip()  # a plain str, whatever subclass came in
    shown = _one_line(source, 80)
    if len(source) > MAX_LENGTH:
        raise DeclarationError(f"expression refused: it is {len(source)} characters long (at most {MAX_LENGTH})")
    if not source:
        raise DeclarationError("could not parse expression '': it is empty")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset and (exc.lineno or 1) == 1 else ""
        raise DeclarationError(f"could not parse expression {shown!r}: {_one_line(str(exc.msg), 120)}{where}") from None
    except (RecursionError, MemoryError):
        raise DeclarationError(
            f"expression refused: it is too large or nested too deeply to parse (at most {MAX_NODES} syntax nodes, {MAX_DEPTH} levels)"
        ) from None
    except ValueError as exc:  # e.g. a null character
        raise DeclarationError(f"could not parse expression {shown!r}: {_one_line(str(exc), 120)}") from None
    for count, _ in enumerate(ast.walk(tree), start=1):
        if count > MAX_NODES:
            raise DeclarationError(f"expression refused: it has more than {MAX_NODES} syntax nodes")
    parser = _Parser(source, schema)
    try:
        return parser.run(tree)
    except DeclarationError:
        raise
    except (RecursionError, MemoryError):
        raise DeclarationError("expression refused: it is too large for sympy to build") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
        raise DeclarationError(f"could not build expression {shown!r}: {_one_line(str(exc), 120)}") from None
