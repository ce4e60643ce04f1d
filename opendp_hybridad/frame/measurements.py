"""Private releases over dataframes: counts, sums and means with OpenDP's noise.

``make_private_*`` pick OpenDP's Laplace mechanism for a requested epsilon
(pure DP) or its Gaussian mechanism for a requested rho (zCDP), calibrate the
scale to the certified sensitivity at ``d_in``, and return a plain OpenDP
``Measurement`` (it chains with ``>>``, composes and runs in odometers and filters).
Its scale, sensitivity and dp-accounting event are read with
:func:`~opendp_hybridad.accounting.accounting_of`. Noise is always drawn by OpenDP.
Each constructor has a ``then_*`` form made from it by
:func:`~opendp_hybridad.opendp_compat.to_then`.

OpenDP features are never enabled here: every constructor asserts the ones it needs
(``contrib`` for OpenDP's noise and combinators, ``honest-but-curious`` for the user-defined
frame domain, transformations and post-processing), so OpenDP explains what to enable.

Every limit a release relies on is part of its frame domain
(:class:`~opendp_hybridad.frame.domain.FrameDomain`): ``size_limit`` (the most rows)
and, for a mean with a public record count, ``size`` (the exact number of records
kept after the missing-value policies). A frame that breaks one is not a member:
:func:`opendp_hybridad.release` refuses it with :class:`SchemaMismatchError` before
any private computation (called directly, the measurement refuses it inside OpenDP's
``OpenDPException``); no member makes a release fail.

A public ``size`` counts *kept* records: with a field whose policy is ``"drop"``,
"the number of complete records is ``n``" is the public fact, and the domain is
the frames with exactly ``n`` complete records. Two neighbours in it differ in
complete records only in pairs (a complete record replaced by another), so a
replacement never turns into a removal.
"""

from __future__ import annotations

import math
from typing import Any

import dp_accounting
import numpy as np

from opendp_hybridad.accounting import Accounting, accounting_of, noise_accounting, with_accounting
from opendp_hybridad.analysis.rounding import (
    TINY,
    UNIT_ROUNDOFF,
    add_down,
    add_up,
    div_up,
    mul_down,
    mul_up,
    round_down,
    round_up,
    sqrt_down,
    sum_up,
)
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.aggregate import _domain_size_limit, _SumPlan, make_sum_of, make_sum_of_vector
from opendp_hybridad.frame.domain import (
    DEFAULT_SIZE_LIMIT,
    as_frame_domain,
    make_frame_domain,
    make_member_domain,
    read_member,
)
from opendp_hybridad.lattice_noise import transformation_noise_lattice
from opendp_hybridad.opendp_compat import to_then
from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE, FeatureLevel, Relation, relation_of
from opendp_hybridad.symbolic.function import RecordFunction
from opendp_hybridad.symbolic.schema import Schema

#: OpenDP features the private releases use: ``contrib`` (Laplace, Gaussian, composition) and
#: ``honest-but-curious`` (user_domain, make_user_transformation, new_function post-processing)
_FEATURES = ("contrib", "honest-but-curious")


def _space(domain_or_schema: Any, metric: Any, size_limit: int | None = None, size: int | None = None) -> tuple[Any, Any]:
    """The frame domain (built from a Schema, or checked against the limits asked for) and the metric."""
    import opendp.prelude as dp

    dp.assert_features(*_FEATURES)
    if isinstance(domain_or_schema, Schema):
        domain = make_frame_domain(domain_or_schema, size_limit=DEFAULT_SIZE_LIMIT if size_limit is None else size_limit,
                                   size=size)
    else:
        domain = domain_or_schema
        spec = as_frame_domain(domain)
        _domain_size_limit(domain, size_limit)
        if size is not None and spec.size != size:
            raise DeclarationError("the public size is part of the frame domain: declare it with "
                                   "make_frame_domain(schema, size=n), or pass the schema instead of a domain")
    return domain, (metric if metric is not None else dp.symmetric_distance())


def make_count_of(input_domain: Any, input_metric: Any):
    """Transformation: frame -> number of records kept by the missing-value policies (a float).

    Stability ``d_in`` under symmetric distance (each record added or removed
    changes the count by at most 1); 0 under change-one when no field drops records,
    else ``d_in``; 0 when the domain fixes the kept ``size``.
    """
    import opendp.prelude as dp

    dp.assert_features(*_FEATURES)  # before any work: make_user_transformation needs both
    spec = as_frame_domain(input_domain)
    relation = relation_of(input_metric)
    if isinstance(relation, FeatureLevel):
        raise DeclarationError("a count does not change under the feature-level relation; there is nothing to privatise")
    constant = spec.size is not None or (relation == REPLACE_ONE and not spec.drops_records)

    def stability(d_in: Any) -> float:
        d = int(d_in)
        if d < 0:
            raise DeclarationError("d_in must be non-negative")
        return 0.0 if constant else round_up(d)

    def apply(frame: Any) -> float:
        # membership first (size limit, 'raise' fields, a fixed size); the count needs only the kept mask
        return float(read_member(frame, spec).kept_count)

    return dp.t.make_user_transformation(input_domain, input_metric, dp.atom_domain(T=float, nan=False),
                                         dp.absolute_distance(T=float), apply, stability)


def make_mean_of(input_domain: Any, input_metric: Any, function: RecordFunction, size: int | None = None, **kwargs: Any):
    """Transformation: frame with exactly ``size`` kept records -> mean of f (a float).

    The record count is public and part of the domain: ``make_frame_domain(schema,
    size=n)`` (a ``size`` given here must equal the domain's). A frame with another
    number of kept records is not a member and is refused before any value is
    computed. Under symmetric distance neighbours with the same kept count differ by
    replacements of kept records (``d_in = 2`` per replacement, OpenDP's convention),
    so the stability is that of the sum under change-one at ``d_in // 2``, divided by
    ``size``, plus the float division's rounding, all rounded up. ``kwargs``:
    ``range_certificate``, ``lipschitz_certificate``, ``backend``, ``size_limit`` (as
    for :func:`make_sum_of`).
    """
    import opendp.prelude as dp

    dp.assert_features(*_FEATURES)  # before the certification work: make_user_transformation needs both
    spec = as_frame_domain(input_domain)
    if spec.size is None:
        raise DeclarationError("a mean with a public record count needs a domain that fixes it: make_frame_domain(schema, size=n)")
    if size is not None and size != spec.size:
        raise DeclarationError(f"size {size} differs from the domain's size {spec.size}")
    size = spec.size
    if size < 1:
        raise DeclarationError("size must be a positive number of records")
    _domain_size_limit(input_domain, kwargs.pop("size_limit", None))
    unknown = set(kwargs) - {"range_certificate", "lipschitz_certificate", "backend"}
    if unknown:
        raise DeclarationError(f"unexpected arguments: {', '.join(sorted(unknown))}")
    relation = relation_of(input_metric)
    halve = relation == ADD_REMOVE
    plan = _SumPlan(input_domain, REPLACE_ONE.metric() if halve else input_metric, function,
                    kwargs.get("range_certificate"), kwargs.get("lipschitz_certificate"), kwargs.get("backend", "auto"))
    max_abs = max(abs(plan.lower), abs(plan.upper))
    # the float division by size is rounded to nearest: at most u |s / size| <= 2u max|f| per
    # dataset (|s| exceeds size max|f| only by the tiny summation error), plus an underflow
    divisor = round_down(size)
    division_error = add_up(mul_up(2 * (2 * UNIT_ROUNDOFF), max_abs), 2 * TINY)

    def stability(d_in: Any) -> float:
        d = int(d_in) // 2 if halve else d_in
        return add_up(div_up(plan.stability(d), divisor), division_error)

    def apply(frame: Any) -> float:
        return plan.total(plan.inputs(frame)) / size  # membership (size included) is checked first

    return dp.t.make_user_transformation(input_domain, input_metric, dp.atom_domain(T=float, nan=False),
                                         dp.absolute_distance(T=float), apply, stability)


then_count_of = to_then(make_count_of)
then_mean_of = to_then(make_mean_of)


def _calibrate(transformation: Any, d_in: Any, epsilon: float | None, rho: float | None, relation: Relation) -> Any:
    """Chain OpenDP's Laplace (epsilon) or Gaussian (rho) mechanism at the smallest scale that meets the target.

    The measurement carries its :class:`~opendp_hybridad.accounting.Accounting`; the noise
    multiplier there is at most both ``scale / sensitivity`` and what OpenDP's own map implies,
    and its ``statistical_distance`` covers OpenDP's lattice noise (one bound per coordinate:
    :func:`~opendp_hybridad.lattice_noise.lattice_noise_distance`).
    """
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
        scale = div_up(sensitivity, sqrt_down(2.0 * target))  # sigma = Delta / sqrt(2 rho)
    measurement = transformation >> then(scale)
    # OpenDP's own map is the authority: widen the scale until it agrees with the target
    for _ in range(64):
        if measurement.map(d_in) <= target:
            break
        scale = mul_up(scale, 1 + 2**-40)
        measurement = transformation >> then(scale)
    else:  # pragma: no cover - a handful of ulps always suffices
        raise DeclarationError("could not calibrate the noise scale to the target")
    # OpenDP draws the noise on its default lattice (2^-1074 for these float outputs), one draw per coordinate:
    # the record's statistical_distance bounds how far that is from continuous noise (opendp_hybridad.lattice_noise)
    k, coordinates = transformation_noise_lattice(transformation)
    record = noise_accounting(d_in, mechanism, scale, sensitivity, relation, opendp_loss=measurement.map(d_in),
                              k=k, coordinates=coordinates)
    return with_accounting(measurement, record)


def make_private_sum(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *, epsilon: float | None = None,
                     rho: float | None = None, d_in: Any = 1, size_limit: int | None = None,
                     backend: str = "auto") -> Any:
    """Measurement: ``sum_i f(x_i)`` plus OpenDP noise calibrated to the certified sensitivity at ``d_in``.

    Laplace for ``epsilon`` (``max_divergence``), Gaussian for ``rho``
    (``zero_concentrated_divergence``). ``metric``: ``dp.symmetric_distance()`` (default),
    ``dp.change_one_distance()`` or ``feature_distance(q)``.

    ``size_limit`` builds the domain from a Schema (default 2^32); with a domain it must equal the domain's.
    """
    domain, metric = _space(domain_or_schema, metric, size_limit)
    t = make_sum_of(domain, metric, function, backend=backend)
    return _calibrate(t, d_in, epsilon, rho, relation_of(metric))


def make_private_sum_vector(domain_or_schema: Any, functions: list[RecordFunction], metric: Any = None, *,
                            epsilon: float | None = None, rho: float | None = None, d_in: Any = 1,
                            size_limit: int | None = None) -> Any:
    """Measurement: several sums at once, Laplace in the l1 distance for epsilon, Gaussian in l2 for rho."""
    domain, metric = _space(domain_or_schema, metric, size_limit)
    t = make_sum_of_vector(domain, metric, functions, 1 if epsilon is not None else 2)
    return _calibrate(t, d_in, epsilon, rho, relation_of(metric))


def make_private_count(domain_or_schema: Any, metric: Any = None, *, epsilon: float | None = None,
                       rho: float | None = None, d_in: Any = 1, size_limit: int | None = None) -> Any:
    """Measurement: number of kept records plus OpenDP noise."""
    domain, metric = _space(domain_or_schema, metric, size_limit)
    return _calibrate(make_count_of(domain, metric), d_in, epsilon, rho, relation_of(metric))


def _read_once(domain: Any, metric: Any) -> Any:
    """Transformation: frame -> the :class:`~opendp_hybridad.frame.domain.MemberFrame` read from it.

    The membership check and the float64 conversion, done once for measurements that all read
    the frame. Record-wise: each input record is one row of the output (a record a field drops
    stays, marked not kept), so neighbours under a relation stay neighbours under it and the
    stability is the identity, ``d_out = d_in``.
    """
    import opendp.prelude as dp

    spec = as_frame_domain(domain)
    return dp.t.make_user_transformation(domain, metric, make_member_domain(spec), metric,
                                         lambda frame: read_member(frame, spec), lambda d_in: d_in)


def make_private_mean(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *, size: int | None = None,
                      epsilon: float | None = None, rho: float | None = None, d_in: Any = 1,
                      count_share: float = 0.5, size_limit: int | None = None, backend: str = "auto") -> Any:
    """Measurement: mean of f, with a public ``size``, or (``size=None``) a private sum over a private count.

    A public ``size`` is the number of records kept after the missing-value
    policies, and is part of the domain: given a Schema, the domain is built with
    it; given a domain, the domain must fix the same ``size`` (or pass
    ``size=None`` with a domain from ``make_frame_domain(schema, size=n)`` to use its size).
    With a private count the budget is split (``count_share`` to the count), both
    are released by one ``dp.c.make_composition`` and the mean is post-processed as
    ``sum / max(count, 1)``, clamped to the certified range of f: one measurement
    (composition ``>>`` post-processing) whose accounting record is the composed event,
    with the sum's and the count's records in its ``parts``. The frame is read once per
    release (membership, conversion: a record-wise transformation with stability
    ``d_out = d_in`` before the composition), and the kernel runs once per record.
    ``backend`` picks the kernel backend (as for :func:`make_private_sum`).
    """

    fixed = size is not None or (not isinstance(domain_or_schema, Schema) and as_frame_domain(domain_or_schema).size is not None)
    if fixed:
        domain, metric = _space(domain_or_schema, metric, size_limit, size)
        t = make_mean_of(domain, metric, function, backend=backend)
        return _calibrate(t, d_in, epsilon, rho, relation_of(metric))
    domain, metric = _space(domain_or_schema, metric, size_limit)
    key, sum_budget, count_budget = split_mean_budget(epsilon, rho, count_share)
    # the sum and the count read the frame read once; each is the measurement it would be on the frame
    read = _read_once(domain, metric)
    read_domain = read.output_domain
    total = make_private_sum(read_domain, function, metric, d_in=d_in, backend=backend, **{key: sum_budget})
    count = make_private_count(read_domain, metric, d_in=d_in, **{key: count_budget})
    return private_mean_of(total, count, function, metric, d_in, read)


def split_mean_budget(epsilon: float | None, rho: float | None, count_share: float) -> tuple[str, float, float]:
    """``(key, sum budget, count budget)`` of a private mean: ``count_share`` of the one budget given to the
    count, both shares rounded down, so they add up to at most the budget in exact arithmetic."""
    if not 0 < count_share < 1:
        raise DeclarationError("count_share must lie strictly between 0 and 1")
    if (epsilon is None) == (rho is None):
        raise DeclarationError("give exactly one of epsilon (Laplace, pure DP) or rho (Gaussian, zCDP)")
    budget = float(epsilon if epsilon is not None else rho)
    count_budget = mul_down(budget, count_share)
    return ("epsilon" if epsilon is not None else "rho"), add_down(budget, -count_budget), count_budget


def private_mean_of(total: Any, count: Any, function: RecordFunction, metric: Any, d_in: Any, read: Any = None) -> Any:
    """One measurement releasing ``total`` and ``count`` by ``dp.c.make_composition`` (after ``read``, a
    record-wise transformation with ``d_out = d_in``, if given), post-processed to
    ``clip(sum / max(count, 1), L, U)`` with ``[L, U]`` the certified range of f. Its accounting
    record is the composed event, with the sum's and the count's records in its ``parts``:
    post-processing the composed release never increases its loss, so the record holds for the mean.
    """
    import opendp.prelude as dp

    composed = dp.c.make_composition([total, count])
    if read is not None:
        composed = read >> composed
    rng = function.range()
    lower, upper = rng.lower, rng.upper

    def mean(pair: Any) -> float:
        s, c = pair
        return float(np.clip(s / max(c, 1.0), lower, upper))

    parts = (accounting_of(total), accounting_of(count))
    record = Accounting(dp_accounting.ComposedDpEvent([p.dp_event() for p in parts]), relation_of(metric), d_in,
                        "composition", statistical_distance=sum_up([p.statistical_distance for p in parts]), parts=parts)
    return with_accounting(composed >> dp.new_function(mean, TO=float), record)


then_private_sum = to_then(make_private_sum)
then_private_sum_vector = to_then(make_private_sum_vector)
then_private_count = to_then(make_private_count)
then_private_mean = to_then(make_private_mean)


__all__ = ["make_count_of", "make_mean_of", "make_private_count", "make_private_mean", "make_private_sum",
           "make_private_sum_vector", "then_count_of", "then_mean_of", "then_private_count", "then_private_mean",
           "then_private_sum", "then_private_sum_vector"]
