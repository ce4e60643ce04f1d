"""Row map: a dataframe to the vector of per-record values of a certified expression.

The output lives in OpenDP's ``vector_domain(atom_domain(bounds=(lo, hi), nan=False))``
with ``[lo, hi]`` the certified range of the function over the declared box (sized
when the frame domain fixes the number of kept records), so OpenDP's own aggregates
(``then_sum``, ``then_mean``, ...) chain after it and account for floating-point
summation themselves.

Stability: the map is applied record by record, with data-independent
preparation (clamping, imputation, dropping a record with a missing value), so
each record added or removed changes at most one output row: ``d_out = d_in``
under ``symmetric_distance``. (Under ``change_one_distance`` a record that is
dropped for a missing value would change the output length, so that relation is
accepted only when no field drops records, or when the domain fixes the number of
kept records, so that a replaced record is kept in both neighbours or in neither.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from opendp_hybridad.analysis.certificate import RangeCertificate
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.domain import as_frame_domain, kernel_inputs
from opendp_hybridad.opendp_compat import to_then
from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE, relation_of
from opendp_hybridad.symbolic.function import RecordFunction


def make_row_map(input_domain: Any, input_metric: Any, function: RecordFunction,
                 certificate: RangeCertificate | None = None):
    """Transformation: frame -> vector of ``function`` per kept record, each in its certified range.

    :param input_domain: ``make_frame_domain(schema)``; the function's fields must be the schema's.
    :param input_metric: ``dp.symmetric_distance()``, or ``dp.change_one_distance()`` when no field
        drops records (or the domain fixes the kept ``size``).
    :param certificate: a range certificate of ``function`` (computed if not given); one issued
        for another function or box is refused.
    Stability: ``d_out = d_in`` (one record affects one output row).
    """
    import opendp.prelude as dp

    spec = as_frame_domain(input_domain)
    schema = spec.schema
    if function.schema != schema:
        raise DeclarationError("the function's schema differs from the input domain's schema")
    relation = relation_of(input_metric)
    if relation == REPLACE_ONE:
        if spec.drops_records:
            raise DeclarationError("change_one_distance needs a fixed record count, but some field drops records with missing values")
    elif relation != ADD_REMOVE:
        raise DeclarationError(f"unsupported input metric {input_metric}; use symmetric_distance or change_one_distance")
    cert = (certificate or function.range()).certifies(function)
    lo, hi = float(cert.lower), float(cert.upper)
    kernel = function.compile()

    def apply(frame: Any) -> list[float]:
        columns = kernel_inputs(frame, spec)  # raises SchemaMismatchError on a non-member, before any value
        if columns[0].shape[0] == 0:
            return []
        with np.errstate(all="ignore"):
            # clamped to the certified range: a float rounding can step outside it
            return kernel.value_clamped(columns, lo, hi).tolist()

    output_domain = dp.vector_domain(dp.atom_domain(bounds=(lo, hi), nan=False), size=spec.size)
    return dp.t.make_user_transformation(
        input_domain, input_metric, output_domain, input_metric, apply, lambda d_in: d_in,
    )


#: ``(domain, metric) >> then_row_map(f)``
then_row_map = to_then(make_row_map)
