"""Dataframe-facing pieces: the frame domain, data-independent preparation, and OpenDP constructors.

Names are imported on first use (:mod:`opendp_hybridad._lazy`): the frame domain does
not bring in dp-accounting or OpenDP; the measurements do, when they are first used.
"""

from typing import TYPE_CHECKING

from opendp_hybridad._lazy import lazy_exports

if TYPE_CHECKING:
    from opendp_hybridad.frame.aggregate import make_sum_of, make_sum_of_vector, then_sum_of, then_sum_of_vector
    from opendp_hybridad.frame.domain import (
        DEFAULT_SIZE_LIMIT,
        FrameDomain,
        PreparedFrame,
        SchemaMismatchError,
        check_frame,
        make_frame_domain,
        prepare_frame,
    )
    from opendp_hybridad.frame.groupby import (
        GroupKeys,
        make_grouped_count_of,
        make_grouped_sum_of,
        make_private_grouped_count,
        make_private_grouped_mean,
        make_private_grouped_sum,
        then_grouped_count_of,
        then_grouped_sum_of,
        then_private_grouped_count,
        then_private_grouped_mean,
        then_private_grouped_sum,
    )
    from opendp_hybridad.frame.measurements import (
        make_count_of,
        make_mean_of,
        make_private_count,
        make_private_mean,
        make_private_sum,
        make_private_sum_vector,
        then_count_of,
        then_mean_of,
        then_private_count,
        then_private_mean,
        then_private_sum,
        then_private_sum_vector,
    )
    from opendp_hybridad.frame.polars_bridge import CertifiedColumn, with_certified_column
    from opendp_hybridad.frame.report import curator_report
    from opendp_hybridad.frame.rowmap import make_row_map, then_row_map
    from opendp_hybridad.relations import feature_distance

__all__ = [
    "DEFAULT_SIZE_LIMIT", "FrameDomain", "PreparedFrame", "SchemaMismatchError", "check_frame", "make_frame_domain",
    "prepare_frame", "feature_distance",
    "make_row_map", "then_row_map", "make_sum_of", "then_sum_of", "make_sum_of_vector", "then_sum_of_vector",
    "make_count_of", "then_count_of", "make_mean_of", "then_mean_of",
    "make_private_sum", "make_private_sum_vector", "make_private_count", "make_private_mean",
    "then_private_sum", "then_private_sum_vector", "then_private_count", "then_private_mean",
    "GroupKeys", "make_grouped_sum_of", "then_grouped_sum_of", "make_grouped_count_of", "then_grouped_count_of",
    "make_private_grouped_sum", "make_private_grouped_count", "make_private_grouped_mean",
    "then_private_grouped_sum", "then_private_grouped_count", "then_private_grouped_mean",
    "CertifiedColumn", "with_certified_column",
    "curator_report",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".aggregate": ("make_sum_of", "make_sum_of_vector", "then_sum_of", "then_sum_of_vector"),
        ".domain": ("DEFAULT_SIZE_LIMIT", "FrameDomain", "PreparedFrame", "SchemaMismatchError", "check_frame",
                    "make_frame_domain", "prepare_frame"),
        ".groupby": ("GroupKeys", "make_grouped_count_of", "make_grouped_sum_of", "make_private_grouped_count",
                     "make_private_grouped_mean", "make_private_grouped_sum", "then_grouped_count_of", "then_grouped_sum_of",
                     "then_private_grouped_count", "then_private_grouped_mean", "then_private_grouped_sum"),
        ".measurements": ("make_count_of", "make_mean_of", "make_private_count", "make_private_mean", "make_private_sum",
                          "make_private_sum_vector", "then_count_of", "then_mean_of", "then_private_count",
                          "then_private_mean", "then_private_sum", "then_private_sum_vector"),
        ".polars_bridge": ("CertifiedColumn", "with_certified_column"),
        ".report": ("curator_report",),
        ".rowmap": ("make_row_map", "then_row_map"),
        "opendp_hybridad.relations": ("feature_distance",),
    },
    submodules=("aggregate", "domain", "groupby", "measurements", "polars_bridge", "report", "rowmap"),
)
