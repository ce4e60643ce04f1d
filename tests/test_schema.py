"""Declaration-time errors: before any data is touched, naming fields and never values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

import opendp_hybridad as hd


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (hd.Field(None, 1), "lower bound is missing"),
        (hd.Field(0, math.inf), "not finite"),
        (hd.Field(float("nan"), 1), "not finite"),
        (hd.Field(2, 1), "box is empty"),
        (hd.Field(0, 1, missing="guess"), "missing-value policy"),
        (hd.Field(0, 1, missing="impute"), "impute value"),
        (hd.Field(0, 1, missing="impute", impute=5), "impute value"),
        (hd.Field(0, 1, dtype="complex"), "dtype"),
    ],
)
def test_bad_fields_are_refused_at_declaration(field, message):
    with pytest.raises(hd.DeclarationError, match=message) as err:
        hd.Schema(age=field)
    assert "'age'" in str(err.value)


def test_an_expression_over_an_undeclared_field_is_refused():
    s = hd.Schema(x=(0, 1))
    with pytest.raises(hd.DeclarationError, match="z, which the schema does not declare"):
        s.function(s.x * sp.Symbol("z"))
    with pytest.raises(hd.DeclarationError, match="does not declare"):
        s.function(lambda x, q: x + q)


def test_unsupported_operations_are_refused_at_declaration():
    s = hd.Schema(x=(0, 1))
    with pytest.raises(hd.UnsupportedExpressionError, match="sin"):
        s.function(sp.sin(s.x))
    with pytest.raises(hd.UnsupportedExpressionError, match="floor"):
        s.function(sp.floor(s.x))


def test_symbols_carry_sign_assumptions_that_hold_on_the_box():
    s = hd.Schema(p=(1, 2), n=(-3, -1), z=(-1, 1), nn=(0, 1))
    assert s.p.is_positive and s.n.is_negative and s.z.is_real and s.z.is_positive is None
    assert s.nn.is_nonnegative
    # symbols made elsewhere with the same name are replaced by the schema's
    f = s.function(sp.Symbol("p") ** 2)
    assert f.expr.free_symbols == {s.p}


def test_tracing_refuses_python_control_flow_with_a_pointer_to_where():
    s = hd.Schema(x=(-1, 1))

    def branchy(x):
        if x > 0:
            return x
        return -x

    with pytest.raises(hd.DeclarationError, match="where"):
        s.function(branchy)
    assert s.function(lambda x: abs(x)).expr == sp.Abs(s.x)
    # float constants are kept as their exact (binary) values
    assert s.function(lambda x: np.clip(x, -0.5, 0.5)).expr == sp.Min(sp.Max(s.x, sp.Rational(-1, 2)), sp.Rational(1, 2))


def test_parse_uses_the_documented_function_names():
    s = hd.Schema(x=(-1, 1), y=(0, 1))
    f = hd.RecordFunction("sigmoid(x) * max(x, y) + where(x > 0, x, 0) + softplus(y)", s)
    assert f.expr.has(hd.sigmoid) and f.expr.has(sp.Max) and f.expr.has(sp.Piecewise)
    with pytest.raises(hd.DeclarationError, match="could not parse"):
        hd.RecordFunction("x +* y", s)


def test_norm_must_be_one_two_or_inf():
    s = hd.Schema(x=(0, 1))
    with pytest.raises(hd.DeclarationError, match="norm"):
        s.function(s.x).lipschitz(norm=3)
    assert hd.dual_norm(1) == math.inf and hd.dual_norm(2) == 2 and hd.dual_norm("inf") == 1


@pytest.mark.parametrize("name", ["lambda", "import", "__builtins__", "__class__", "match", "x\u00e9"])
def test_reserved_or_non_ascii_field_names_are_refused(name):
    # field names become variable names in generated kernel source
    with pytest.raises(hd.DeclarationError):
        hd.Schema({name: (0, 1)})
