"""Expression text is parsed from a whitelist and never evaluated as Python.

The injection tests use only the public API and the CLI, so they also run
against the old sympify-based parser (where they fail: the payloads run).
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp
from helpers.hang_guard import finishes

import opendp_hybridad as hd
from opendp_hybridad.cli import main


@pytest.fixture
def target(tmp_path):
    """A file that a successful injection would create."""
    return tmp_path / "pwned"


def _payloads(p: str) -> list[str]:
    return [
        f"__import__('os').system('touch {p}')",
        f"x + (__import__('os').system('touch {p}') or 0)",
        f"where(x > 0, __import__('os').system('touch {p}'), 0)",
        f"getattr(__import__('os'), 'system')('touch {p}')",
        f"__import__('pathlib').Path('{p}').touch()",
        f"open('{p}', 'w')",
        f"exec(\"open('{p}', 'w')\")",
        f"eval(\"open('{p}', 'w')\")",
        f"(lambda: open('{p}', 'w'))()",
        f"[open('{p}', 'w') for _ in (1,)]",
        f"{{open('{p}', 'w') for _ in (1,)}}",
        f"{{1: open('{p}', 'w') for _ in (1,)}}",
        f"sum(open('{p}', 'w') for _ in (1,))",
        f"{{open('{p}', 'w')}}",
        f"f'{{open(\"{p}\", \"w\")}}'",
        f"exp(x=__import__('os').system('touch {p}'))",
        f"x.__class__.__init__.__globals__['open']('{p}', 'w')",
    ]


def _assert_one_line(message: str) -> None:
    assert message
    assert "\n" not in message.strip()
    assert "Traceback" not in message


# -- injection through the API -------------------------------------------------------------------

@pytest.mark.parametrize("index", range(len(_payloads("p"))))
def test_injection_through_the_api_is_refused_and_runs_nothing(index, target):
    schema = hd.Schema(x=(0, 1))
    text = _payloads(str(target))[index]
    with pytest.raises(hd.DeclarationError) as info:
        hd.RecordFunction(text, schema)
    _assert_one_line(str(info.value))
    with pytest.raises(hd.DeclarationError):
        hd.parse(text, schema)
    assert not target.exists()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("os.system('ls')", 'attribute access is not allowed ("os.system")'),
        ("x.real", "attribute access"),
        ("x[0]", "subscripts"),
        ("__class__", "dunder names"),
        ("__import__('os')", "calling __import__ is not allowed"),
        ("eval('x')", "calling eval is not allowed"),
        ("exec('x')", "calling exec is not allowed"),
        ("open('f')", "calling open is not allowed"),
        ("getattr(x, 'real')", "calling getattr is not allowed"),
        ("(lambda: x)()", "whitelisted function"),
        ("lambda: x", "lambda"),
        ("[x for x in (1,)]", "comprehensions"),
        ("{x for x in (1,)}", "comprehensions"),
        ("{x: 1 for x in (1,)}", "comprehensions"),
        ("(x for x in (1,))", "comprehensions"),
        ("f'{x}'", "f-strings"),
        ("'x'", "string constants"),
        ("x + 'a'", "string constants"),
        ("b'x'", "bytes constants"),
        ("1j * x", "complex numbers"),
        ("None", "None"),
        ("exp(x=1)", "keyword arguments"),
        ("exp(*x)", "starred arguments"),
        ("[x]", "lists"),
        ("(x, x)", "tuples"),
        ("x if x > 0 else 0", "where(condition, a, b)"),
        ("(y := x)", "assignment expressions"),
        ("x == 0", "=="),
        ("x // 2", "//"),
        ("x % 2", "%"),
        ("True + x", "a condition was given"),
        ("x > 0", "is a condition, not a number"),
        ("where(x, 1, 0)", "takes a condition"),
        ("sqrt(x, 2)", "sqrt takes 1 argument, not 2"),
        ("exp", "exp is a function"),
        ("x +* 1", "could not parse"),
        ("", "empty"),
    ],
)
def test_refusals_name_what_was_refused_on_one_line(text, fragment):
    with pytest.raises(hd.DeclarationError) as info:
        hd.RecordFunction(text, hd.Schema(x=(0, 1)))
    message = str(info.value)
    _assert_one_line(message)
    assert fragment in message


def test_an_unknown_name_says_which_fields_exist():
    with pytest.raises(hd.DeclarationError, match="uses w, z, which the schema does not declare"):
        hd.RecordFunction("z*x + w", hd.Schema(x=(0, 1)))


# -- injection through the CLI --------------------------------------------------------------------

@pytest.mark.parametrize("index", [0, 2, 5, 9])
def test_injection_through_the_cli_exits_2_and_runs_nothing(index, target, tmp_path):
    text = _payloads(str(target))[index]
    proc = subprocess.run([sys.executable, "-m", "opendp_hybridad.cli", "analyse", text, "--bound", "x=0:1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert not target.exists()
    assert proc.stdout == ""
    _assert_one_line(proc.stderr)
    assert proc.stderr.startswith("opendp-hybridad: error: ")


@pytest.mark.parametrize("index", range(len(_payloads("p"))))
def test_injection_through_cli_main_exits_2_and_runs_nothing(index, target, capsys):
    assert main(["analyse", _payloads(str(target))[index], "-b", "x=0:1"]) == 2
    captured = capsys.readouterr()
    assert not target.exists()
    assert captured.out == ""
    _assert_one_line(captured.err)
    assert captured.err.startswith("opendp-hybridad: error: ")


# -- no text reaches sympify through the API ----------------------------------------------------------

class _EvilStr(str):
    def __str__(self):
        return "__import__('os').system('exit 3')"

    __repr__ = __str__


class _EvilObject:
    def __init__(self, path):
        self.path = path

    def __str__(self):
        return f"__import__('pathlib').Path('{self.path}').touch() or 1"


def test_text_arguments_of_the_api_functions_are_refused(target):
    s = hd.Schema(x=(0, 1))
    text = f"__import__('pathlib').Path('{target}').touch() or 1"
    calls = [
        lambda: hd.where(text, 1, 0), lambda: hd.where(s.x > 0, text, 0), lambda: hd.where(s.x > 0, 1, text),
        lambda: hd.clip(text, 0, 1), lambda: hd.clip(s.x, text, 1), lambda: hd.sigmoid(text), lambda: hd.softplus(text),
        lambda: hd.exp(text), lambda: hd.log(text), lambda: hd.log(s.x, text), lambda: hd.sqrt(text), lambda: hd.tanh(text),
        lambda: hd.Abs(text), lambda: hd.minimum(s.x, text), lambda: hd.maximum(text, s.x),
        lambda: hd.where(np.str_(text), 1, 0), lambda: hd.sigmoid(np.str_(text)),
        lambda: hd.RecordFunction(_EvilObject(target), s), lambda: s.function(_EvilObject(target)),
        lambda: s.function(lambda x: text), lambda: s.function(lambda x: x + np.str_(text)),
        lambda: s.function(lambda x: np.maximum(x, text)), lambda: hd.RecordFunction(b"x", s),
    ]
    for call in calls:
        with pytest.raises(hd.DeclarationError) as info:
            call()
        _assert_one_line(str(info.value))
    assert not target.exists()


def test_a_str_subclass_is_parsed_as_its_characters_not_its_repr():
    f = hd.RecordFunction(_EvilStr("2*x"), hd.Schema(x=(0, 1)))
    assert f.expr == 2 * f.schema.x


def test_non_text_values_still_convert():
    s = hd.Schema(x=(-1, 1))
    assert hd.where(s.x > 0, 0.5, np.float64(2)) == sp.Piecewise((sp.Float(0.5), s.x > 0), (sp.Float(2.0), True))
    assert hd.where(True, s.x, 0) == s.x
    assert hd.maximum(s.x, 1) == sp.Max(s.x, 1) and hd.log(s.x, 2) == sp.log(s.x, 2)
    assert s.function(lambda x: x * np.float64(2) + 1).expr == 2 * s.x + 1  # float constants exact
    assert hd.RecordFunction(3, s).expr == 3
    with pytest.raises(hd.DeclarationError, match="complex"):
        hd.RecordFunction(1j, s)
    with pytest.raises(hd.DeclarationError, match="list"):
        hd.RecordFunction([s.x], s)


# -- resource caps ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("9**9**9", "exponent 387420489 is larger than 1000"),
        ("x**1001", "exponent 1001"),
        ("2**9**9", "exponent"),
        ("(2**99*x)**999", "constants are too large"),
        ("((2**99)**999)**999", "constants are too large"),
        ("(" * 10_000 + "x" + ")" * 10_000, "characters long"),
        ("(" * 250 + "x" + ")" * 250, "too many nested parentheses"),
        ("-" * 10_000 + "x", "too large or nested too deeply"),
        ("exp(" * 101 + "x" + ")" * 101, "nested more than 100 levels"),
        ("+".join(["x"] * 50_000), "characters long"),
        ("+".join(["x"] * 6_000), "too large or nested too deeply"),
        ("+".join(["x*y"] * 3_000), "syntax nodes"),
        ("1" * 5000 + "*x", "could not parse"),
        ("1e99999999999*x", "too large or too small"),
        ("exp(exp(exp(10)))*x", "not a finite float64"),
        ("exp(exp(exp(exp(10))))*x", "not a finite float64"),
        ("10**400*x", "beyond the float64 range"),
        ("1e400*x", "beyond the float64 range"),
        ("1/0 + x", "not a finite"),
        ("log(0)*x", "not a finite"),
        ("(-8)**(1/3)*x", "not a finite"),
        ("sqrt(-1)*x", "not a finite"),
    ],
)
def test_resource_caps_refuse_quickly_on_one_line(text, fragment):
    with pytest.raises(hd.DeclarationError) as info:
        finishes(lambda: hd.RecordFunction(text, hd.Schema(x=(0, 1), y=(0, 1))))
    _assert_one_line(str(info.value))
    assert fragment in str(info.value)


def test_the_caps_leave_room_for_real_expressions():
    s = hd.Schema(x=(0, 1), y=(0, 1))
    assert hd.parse("+".join(f"{k}*x**{k % 7}*y" for k in range(1, 500)), s).is_Add
    assert hd.parse("exp(" * 60 + "x" + ")" * 60, s).has(sp.exp)
    assert hd.parse("(" * 150 + "x" + ")" * 150, s) == s.x
    assert hd.parse("x**1000 + (2*x)**1000 + 10**400/10**399", s) == s.x**1000 + (2 * s.x) ** 1000 + 10
    assert hd.parse("x*exp(700)", s) == s.x * sp.exp(700)


def test_the_caps_are_the_documented_constants():
    from opendp_hybridad.symbolic.parse import MAX_DEPTH, MAX_EXPONENT, MAX_LENGTH, MAX_NODES

    assert (MAX_LENGTH, MAX_NODES, MAX_DEPTH, MAX_EXPONENT) == (20_000, 10_000, 100, 1000)
    with pytest.raises(hd.DeclarationError, match="20001 characters"):
        hd.parse("x" + " " * 19_999 + "+", hd.Schema(x=(0, 1)))


# -- what the whitelist accepts ------------------------------------------------------------------------

@pytest.fixture
def box():
    return hd.Schema(x=(0.5, 2), y=(1, 3))


def test_every_whitelisted_function_parses_to_its_sympy_expression(box):
    x, y = box.symbols()
    expected = {
        "exp(x)": sp.exp(x), "log(x)": sp.log(x), "log(x, 2)": sp.log(x) / sp.log(2), "sqrt(x)": sp.sqrt(x),
        "tanh(x)": sp.tanh(x), "abs(x - y)": sp.Abs(x - y), "Abs(x - y)": sp.Abs(x - y),
        "min(x, y)": sp.Min(x, y), "max(x, y)": sp.Max(x, y), "Min(x, y, 1)": sp.Min(x, y, 1), "Max(x, y)": sp.Max(x, y),
        "minimum(x, y)": sp.Min(x, y), "maximum(x, y)": sp.Max(x, y),
        "sigmoid(x)": hd.sigmoid(x), "softplus(x)": hd.softplus(x),
        "where(x > 1, x, 0)": sp.Piecewise((x, x > 1), (0, True)),
        "clip(x, 0.75, 1.5)": sp.Min(sp.Max(x, sp.Rational(3, 4)), sp.Rational(3, 2)),
        "Piecewise((x, x < 1), (1/x, True))": sp.Piecewise((x, x < 1), (1 / x, True)),
        "pi*x + E": sp.pi * x + sp.E, "E**x": sp.exp(x),
    }
    for text, want in expected.items():
        got = hd.parse(text, box)
        assert got == want or sp.simplify(got - want) == 0, text


def test_every_name_of_the_namespace_is_a_function_or_a_constant():
    from opendp_hybridad.symbolic.functions import NAMESPACE
    from opendp_hybridad.symbolic.parse import CONSTANTS, FUNCTIONS

    assert set(NAMESPACE) == set(FUNCTIONS) | set(CONSTANTS)
    assert not set(FUNCTIONS) & set(CONSTANTS)


def test_precedence_and_associativity_follow_python(box):
    x, y = box.symbols()
    assert hd.parse("-x**2", box) == -(x**2)
    assert hd.parse("x/y/2", box) == x / (2 * y)
    assert hd.parse("x - y - 1", box) == x - y - 1
    assert hd.parse("x/y*2", box) == 2 * x / y
    assert hd.parse("2**-1", box) == sp.Rational(1, 2)
    assert hd.parse("2**3**2", box) == 512
    assert hd.parse("-2**2", box) == -4
    assert hd.parse("x^2", box) == x**2  # sympy's syntax: ^ is a power
    assert hd.parse("+x - -y", box) == x + y
    assert hd.parse("2*x**-1", box) == 2 / x


def test_conditions_compose(box):
    x, y = box.symbols()
    assert hd.parse("where(1 < x < 1.5, x, 0)", box) == sp.Piecewise((x, sp.And(x > 1, x < sp.Rational(3, 2))), (0, True))
    both = sp.Piecewise((x, sp.And(x > 1, y < 2)), (0, True))
    assert hd.parse("where(x > 1 and y < 2, x, 0)", box) == both
    assert hd.parse("where((x > 1) & (y < 2), x, 0)", box) == both
    either = sp.Piecewise((x, sp.Or(x > 1, y < 2)), (0, True))
    assert hd.parse("where(x > 1 or y < 2, x, 0)", box) == either
    assert hd.parse("where((x > 1) | (y < 2), x, 0)", box) == either
    assert hd.parse("where(not x > 1, x, 0)", box) == sp.Piecewise((x, x <= 1), (0, True))
    assert hd.parse("where(~(x >= 1), x, 0)", box) == sp.Piecewise((x, x < 1), (0, True))


@pytest.mark.parametrize(
    ("literal", "exact"),
    [("0.1", Fraction(1, 10)), ("1e-3", Fraction(1, 1000)), ("2.5e2", Fraction(250)), (".5", Fraction(1, 2)),
     ("1.", Fraction(1)), ("1_000.25", Fraction(4001, 4)), ("0x1f", Fraction(31)), ("1e-400", Fraction(1, 10**400)),
     ("0.30000000000000004", Fraction(30000000000000004, 10**17))],
)
def test_float_literals_are_the_exact_decimals_written(box, literal, exact):
    got = hd.parse(f"{literal}*x", box) / box.x
    assert got == sp.Rational(exact.numerator, exact.denominator)


def test_exact_literals_keep_constant_folding_exact(box):
    # with binary floats 0.1 + 0.2 - 0.3 is 5.55e-17, not 0
    assert hd.parse("(0.1 + 0.2 - 0.3)*y + x", box) == box.x
    f = hd.RecordFunction("0.3*x**2", box)
    assert f.partial("x") == sp.Rational(3, 5) * box.x


def test_a_text_function_certifies_like_the_same_function_built_in_python():
    schema = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
    a, w, h = schema.symbols()
    from_text = hd.RecordFunction("a*w/h**2", schema)
    assert from_text.expr == schema.function(a * w / h**2).expr
    assert from_text.lipschitz().upper >= 13120.0107015588
