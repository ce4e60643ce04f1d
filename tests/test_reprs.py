"""Short reprs of functions and certificates, and float constants displayed as floats.

The display changes; the values must not: a fixed field is still substituted as its exact
double, so certificates and kernels are those of the exact-rational expression.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import opendp_hybridad as hd
from opendp_hybridad.symbolic.display import short_number, short_str

NUMBER = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?)"


@pytest.fixture(scope="module")
def bmi():
    schema = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
    a, w, h = schema.symbols()
    return schema.function(a * w / h**2, name="B")


def test_function_repr_is_name_expression_and_box(bmi):
    assert repr(bmi) == "RecordFunction(B: a*w/h**2 over a in [18, 90], w in [40, 200], h in [1.4, 2.2])"
    assert str(bmi) == "a*w/h**2"


def test_fix_displays_the_constant_as_a_float_and_keeps_its_exact_value(bmi):
    tall = bmi.fix(h=1.8)
    # the exact constant: 1 / (the double nearest 1.8)^2, a fraction with 32-digit terms
    exact = 1 / Fraction(1.8) ** 2
    assert repr(tall) == f"RecordFunction(B|h: {float(exact)!r}*a*w over a in [18, 90], w in [40, 200])"
    assert str(tall) == "0.30864197530864196*a*w"
    a, w = tall.symbols
    coefficient = tall.expr / (a * w)
    assert coefficient.is_Rational and Fraction(int(coefficient.p), int(coefficient.q)) == exact
    # the same object as substituting the exact double by hand: same fingerprint, so the same certificates
    by_hand = hd.RecordFunction(bmi.expr.xreplace({bmi.schema.symbol("h"): sympy.Rational(1.8)}), tall.schema, name="B|h")
    assert sympy.srepr(tall.expr) == sympy.srepr(by_hand.expr)
    assert tall.fingerprint == by_hand.fingerprint


def test_fixed_certificates_enclose_the_exact_range(bmi):
    tall = bmi.fix(h=1.8)
    rng = tall.range()
    exact = 1 / Fraction(1.8) ** 2
    lo, hi = 18 * 40 * exact, 90 * 200 * exact
    # sound against the exact values (in rationals) and tight
    assert Fraction(rng.lower) <= lo and Fraction(rng.upper) >= hi
    assert (lo - Fraction(rng.lower)) / lo < Fraction(1, 10**12) and (Fraction(rng.upper) - hi) / hi < Fraction(1, 10**12)
    k = tall.lipschitz()
    # grad = c (w, a): the supremum of its l2 norm is c * |(200, 90)| at the corner
    k_exact_sq = exact**2 * (200**2 + 90**2)
    assert Fraction(k.upper) ** 2 >= k_exact_sq
    assert Fraction(k.upper) ** 2 / k_exact_sq < 1 + Fraction(1, 10**12)


def test_displaying_changes_nothing(bmi):
    tall = bmi.fix(h=1.8, a=20.5)
    before = (sympy.srepr(tall.expr), tall.fingerprint)
    kernel_source = tall.compile(backend="numpy").source
    cert = tall.lipschitz()
    repr(tall), str(tall), repr(cert), repr(tall.range())
    assert (sympy.srepr(tall.expr), tall.fingerprint) == before
    assert tall.compile(backend="numpy").source == kernel_source
    fresh = bmi.fix(h=1.8, a=20.5)
    assert fresh.lipschitz().upper.hex() == cert.upper.hex()
    w = np.linspace(40, 200, 101)
    assert np.array_equal(fresh.compile(backend="numpy").value({"w": w}), tall.compile(backend="numpy").value({"w": w}))


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False).filter(lambda c: c != 0))
def test_every_displayed_constant_reads_back_as_its_value(c):
    # what the display promises: a long constant prints as the shortest decimal of its double
    # (exactly the constant, which is a double here), a short fraction prints as itself
    x = sympy.Symbol("x", positive=True)
    text = short_str(sympy.Rational(c) * x)
    match = re.fullmatch(r"(-?)([^*/]+)\*x(?:/(\d+))?|(-?)x/(\d+)|(-?)x", text)
    assert match, text
    if match.group(2) is not None:
        sign, head, denominator = match.group(1), match.group(2), match.group(3)
        value = Fraction(head) / Fraction(denominator or 1)
        value = -value if sign else value
    elif match.group(5) is not None:
        value = Fraction(-1 if match.group(4) else 1, int(match.group(5)))
    else:
        value = Fraction(-1 if match.group(6) else 1)
    assert value == Fraction(c) or float(value) == c, (c, text)


@pytest.mark.parametrize(("value", "shown"), [
    (0.1, "0.1*a"), (1.3, "1.3*a"), (-0.7, "-0.7*a"), (1e-300, "1e-300*a"), (123456.789, "123456.789*a"), (2.5, "5*a/2"),
])
def test_float_coefficients_print_as_written(value, shown):
    schema = hd.Schema(a=(1, 2))
    (a,) = schema.symbols()
    assert str(schema.function(value * a)) == shown


def test_exponents_sums_and_conditions_print_short():
    schema = hd.Schema(a=(18, 90), h=(1.4, 2.2))
    a, h = schema.symbols()
    assert str(schema.function(a * 0.1 + 0.1 - 2.5 * h**0.3)) == "0.1*a - 5*h**0.3/2 + 0.1"
    assert str(schema.function(1 / (0.3 + h))) == "1/(h + 0.3)"
    assert str(schema.function(hd.where(a > 30.3, 0.7 * a, h / 3))) == "Piecewise((0.7*a, a > 30.3), (h/3, True))"
    assert str(schema.function(hd.exp(-0.1 * a))) == "exp(-0.1*a)"


def test_long_expressions_are_cut_in_the_repr_only():
    schema = hd.Schema(**{f"x{i}": (0, 1) for i in range(60)})
    f = schema.function(sum(s**2 * (i + 0.1) for i, s in enumerate(schema.symbols())), name="big")
    assert len(str(f)) > 300 and "..." not in str(f)
    assert repr(f).startswith("RecordFunction(big: ") and str(f)[:300] + "... over" in repr(f)


def test_lipschitz_certificate_repr(bmi):
    cert = bmi.lipschitz()
    text = repr(cert)
    match = re.fullmatch(r"BoundCertificate\(sup \|\|grad B\|\|_2 <= " + NUMBER + r", witness " + NUMBER
                         + r" at \(a=90, w=200, h=1\.4\), ratio ([0-9.]+)\)", text)
    assert match, text
    # the bound is shown exactly (never a rounded-down upper bound); the ratio to 7 places
    assert float(match.group(1)) == cert.upper
    assert abs(float(match.group(2)) - cert.witness.value) <= 1e-9 * cert.witness.value
    assert match.group(3) == f"{cert.ratio:.7f}" == "1.0000000"
    # the exact supremum of sqrt(a^2 h^2 + 4 a^2 w^2 + h^2 w^2) / h^3 is at the corner (90, 200, 1.4)
    a, w, h = Fraction(90), Fraction(200), Fraction(1.4)
    assert Fraction(cert.upper) ** 2 >= (a * a * h * h + 4 * a * a * w * w + h * h * w * w) / h**6
    assert "subject" not in text and "method" not in text and "box" not in text
    assert str(cert) == text


def test_range_certificate_repr(bmi):
    rng = bmi.range()
    text = repr(rng)
    match = re.fullmatch(r"RangeCertificate\(\[" + NUMBER + ", " + NUMBER
                         + r"\], argmin \(a=18, w=40, h=2\.2\), argmax \(a=90, w=200, h=1\.4\)\)", text)
    assert match, text
    assert (float(match.group(1)), float(match.group(2))) == (rng.lower, rng.upper)
    assert Fraction(rng.lower) <= Fraction(18 * 40) / Fraction(2.2) ** 2
    assert Fraction(rng.upper) >= Fraction(90 * 200) / Fraction(1.4) ** 2


def test_partial_witness_and_analysis_reprs(bmi):
    partial = bmi.partial_bounds()["a"]
    assert repr(partial).startswith(f"BoundCertificate(sup |dB/da| <= {partial.upper!r}, witness ")
    assert repr(partial.witness).startswith("Witness(") and repr(partial.witness).endswith(" at (a=18, w=200, h=1.4))")
    analysis = bmi.analyse()
    text = repr(analysis)
    assert text.startswith("Analysis(a*w/h**2: range [") and "sup ||grad B||_2 <= " in text
    assert f"a <= {short_number(analysis.partials['a'].upper)}" in text and len(text) < 300


def test_unconverged_and_unbounded_ratios_are_said():
    schema = hd.Schema(x=(0, 1))
    (x,) = schema.symbols()
    cert = schema.function(x).lipschitz()
    assert "not converged" in repr(dataclasses.replace(cert, converged=False))
    zero_witness = dataclasses.replace(cert, witness=hd.analysis.certificate.Witness({"x": 0.5}, 0.0))
    assert "ratio inf" in repr(zero_witness)


@pytest.mark.parametrize(("value", "shown"), [(90.0, "90"), (1.4, "1.4"), (-0.0, "0"), (1e16, "1e+16"), (0.1 + 0.2, "0.30000000000000004")])
def test_short_number(value, shown):
    assert short_number(value) == shown
