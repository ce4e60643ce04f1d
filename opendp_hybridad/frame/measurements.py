"""Private releases over dataframes: counts, sums and means with OpenDP's noise.

``make_private_*`` pick OpenDP's Laplace mechanism for a requested epsilon
(pure DP) or its Gaussian mechanism for a requested rho (zCDP), calibrate the
scale to the certified sensitivity at ``d_in``, and return an
:class:`~opendp_hybridad.accounting.AccountedMeasurement` that states the scale
and reports its dp-accounting event. Noise is always drawn by OpenDP.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from opendp_hybridad.accounting import AccountedMeasurement
from opendp_hybridad.analysis.rounding import div_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.aggregate import DEFAULT_SIZE_LIMIT, make_sum_of, make_sum_of_vector
from opendp_hybridad.frame.domain import SchemaMismatchError, make_frame_domain, prepare_frame, schema_of
from opendp_hybridad.frame.relations import parse_relation
from opendp_hybridad.symbolic.function import RecordFunction
from opendp_hybridad.symbolic.schema import Schema


def _space(domain_or_schema: Any, metric: Any) -> tuple[Any, Any]:
    import opendp.prelude as dp

    dp.enable_features("contrib", "honest-but-curious")
    domain = make_frame_domain(domain_or_schema) if isinstance(domain_or_schema, Schema) else domain_or_schema
    return domain, (metric if metric is not None else dp.symmetric_distance())


def make_count_of(input_domain: Any, input_metric: Any):
    """Transformation: frame -> number of records kept by the missing-value policies (a float).

    Stability ``d_in`` under symmetric distance (each record added or removed
    changes the count by at most 1); 0 under change-one when no field drops records,
    else ``d_in``.
    """
    import opendp.prelude as dp

    schema = schema_of(input_domain)
    relation = parse_relation(input_metric)
    drops = any(f.missing == "drop" for f in schema.fields.values())
    if relation.kind == "feature":
        raise DeclarationError("a count does not change under the feature-level relation; there is nothing to privatise")

    def stability(d_in: Any) -> float:
        if relation.kind == "change_one" and not drops:
            return 0.0
        return float(int(d_in))

    def apply(frame: Any) -> float:
        return float(prepare_frame(frame, schema).rows)

    return dp.t.make_user_transformation(input_domain, input_metric, dp.atom_domain(T=float, nan=False),
                                         dp.absolute_distance(T=float), apply, stability)


def make_mean_of(input_domain: Any, input_metric: Any, function: RecordFunction, size: int, **kwargs: Any):
    """Transformation: frame with exactly ``size`` kept records -> mean of f (a float).

    The record count is public: a frame with another number of kept records is not
    a member of the domain. Under symmetric distance neighbours of equal size
    differ by replacements (``d_in = 2`` per replacement, OpenDP's convention), so
    the stability is that of the sum under change-one at ``d_in // 2``, divided by
    ``size`` and rounded up.
    """
    import opendp.prelude as dp

    if size < 1:
        raise DeclarationError("size must be a positive number of records")
    schema = schema_of(input_domain)
    relation = parse_relation(input_metric)
    if relation.kind == "symmetric":
        inner = make_sum_of(input_domain, dp.change_one_distance(), function, **kwargs)
        halve = True
    else:
        inner = make_sum_of(input_domain, input_metric, function, **kwargs)
        halve = False

    max_abs = max(abs(function.range().lower), abs(function.range().upper))
    # the float division by size is rounded to nearest: at most u * max|f| per dataset
    division_error = math.nextafter(2 * 2.0**-52 * max_abs, math.inf)

    def stability(d_in: Any) -> float:
        d = int(d_in) // 2 if halve else d_in
        return math.nextafter(div_up(inner.map(d), float(size)) + division_error, math.inf)

    def apply(frame: Any) -> float:
        if prepare_frame(frame, schema).rows != size:
            raise SchemaMismatchError(f"the domain has exactly {size} records after the missing-value policies")
        return inner(frame) / size

    return dp.t.make_user_transformation(input_domain, input_metric, dp.atom_domain(T=float, nan=False),
                                         dp.absolute_distance(T=float), apply, stability)


def then_count_of():
    """Partial form of :func:`make_count_of`."""
    from opendp.mod import _PartialConstructor

    return _PartialConstructor(make_count_of)


def then_mean_of(function: RecordFunction, size: int, **kwargs: Any):
    """Partial form of :func:`make_mean_of`."""
    from opendp.mod import _PartialConstructor

    return _PartialConstructor(lambda d, m: make_mean_of(d, m, function, size, **kwargs))


def _calibrate(transformation: Any, d_in: Any, epsilon: float | None, rho: float | None, relation: str) -> AccountedMeasurement:
    """Chain OpenDP's Laplace (epsilon) or Gaussian (rho) mechanism at the smallest scale that meets the target."""
    import opendp.prelude as dp

    if (epsilon is None) == (rho is None):
        raise DeclarationError("give exactly one of epsilon (Laplace, pure DP) or rho (Gaussian, zCDP)")
    target = float(epsilon if epsilon is not None else rho)
    if not (target > 0 and math.isfinite(target)):
        raise DeclarationError("the privacy budget must be a positive finite number")
    sensitivity = float(transformation.map(d_in))
    mechanism = "laplace" if epsilon is not None else "gaussian"
    then = dp.m.then_laplace if mechanism == "laplace" else dp.m.then_gaussian
    if sensitivity == 0:
        scale = 0.0
    elif mechanism == "laplace":
        scale = div_up(sensitivity, target)
    else:
        scale = div_up(sensitivity, math.sqrt(2.0 * target))
        scale = math.nextafter(scale, math.inf)  # the square root is rounded to nearest
    measurement = transformation >> then(scale)
    # OpenDP's own map is the authority: widen the scale until it agrees with the target
    for _ in range(64):
        if measurement.map(d_in) <= target:
            break
        scale = math.nextafter(scale * (1 + 2**-40), math.inf)
        measurement = transformation >> then(scale)
    else:  # pragma: no cover - a handful of ulps always suffices
        raise DeclarationError("could not calibrate the noise scale to the target")
    return AccountedMeasurement(measurement, d_in, mechanism, scale, sensitivity, relation)


def _relation_name(metric: Any) -> str:
    return parse_relation(metric).dp_accounting_name


def make_private_sum(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *, epsilon: float | None = None,
                     rho: float | None = None, d_in: Any = 1, size_limit: int = DEFAULT_SIZE_LIMIT,
                     backend: str = "auto") -> AccountedMeasurement:
    """``sum_i f(x_i)`` plus OpenDP noise calibrated to the certified sensitivity at ``d_in``."""
    domain, metric = _space(domain_or_schema, metric)
    t = make_sum_of(domain, metric, function, size_limit=size_limit, backend=backend)
    return _calibrate(t, d_in, epsilon, rho, _relation_name(metric))


def make_private_sum_vector(domain_or_schema: Any, functions: list[RecordFunction], metric: Any = None, *,
                            epsilon: float | None = None, rho: float | None = None, d_in: Any = 1,
                            size_limit: int = DEFAULT_SIZE_LIMIT) -> AccountedMeasurement:
    """Several sums at once: Laplace in the l1 distance for epsilon, Gaussian in l2 for rho."""
    domain, metric = _space(domain_or_schema, metric)
    t = make_sum_of_vector(domain, metric, functions, 1 if epsilon is not None else 2, size_limit=size_limit)
    return _calibrate(t, d_in, epsilon, rho, _relation_name(metric))


def make_private_count(domain_or_schema: Any, metric: Any = None, *, epsilon: float | None = None,
                       rho: float | None = None, d_in: Any = 1) -> AccountedMeasurement:
    """Number of kept records plus OpenDP noise."""
    domain, metric = _space(domain_or_schema, metric)
    return _calibrate(make_count_of(domain, metric), d_in, epsilon, rho, _relation_name(metric))


def make_private_mean(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *, size: int | None = None,
                      epsilon: float | None = None, rho: float | None = None, d_in: Any = 1,
                      count_share: float = 0.5, size_limit: int = DEFAULT_SIZE_LIMIT):
    """Mean of f: with a public ``size``, or (``size=None``) a private sum over a private count.

    With a private count the budget is split (``count_share`` to the count), both
    are released by one ``dp.c.make_composition`` and the mean is post-processed as
    ``sum / max(count, 1)``, clamped to the certified range of f. The result is an
    :class:`AccountedMeasurement` for a public size, else a pair
    ``(measurement, [accounted sum, accounted count])``.
    """
    import opendp.prelude as dp

    domain, metric = _space(domain_or_schema, metric)
    if size is not None:
        t = make_mean_of(domain, metric, function, size, size_limit=size_limit)
        return _calibrate(t, d_in, epsilon, rho, _relation_name(metric))
    if not 0 < count_share < 1:
        raise DeclarationError("count_share must lie strictly between 0 and 1")
    budget = epsilon if epsilon is not None else rho
    share = {"epsilon": None, "rho": None}
    key = "epsilon" if epsilon is not None else "rho"
    share[key] = budget * (1 - count_share)
    total = make_private_sum(domain, function, metric, d_in=d_in, size_limit=size_limit, **share)
    share[key] = budget * count_share
    count = make_private_count(domain, metric, d_in=d_in, **share)
    rng = function.range()
    composed = dp.c.make_composition([total.measurement, count.measurement])
    lower, upper = rng.lower, rng.upper

    def mean(pair: Any) -> float:
        s, c = pair
        return float(np.clip(s / max(c, 1.0), lower, upper))

    measurement = composed >> dp.new_function(mean, TO=float)
    return measurement, [total, count]


__all__ = ["make_count_of", "make_mean_of", "make_private_count", "make_private_mean", "make_private_sum",
           "make_private_sum_vector", "then_count_of", "then_mean_of"]
