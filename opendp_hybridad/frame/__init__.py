"""Dataframe-facing pieces: the frame domain, data-independent preparation, and OpenDP constructors."""

from opendp_hybridad.frame.domain import (
    PreparedFrame,
    SchemaMismatchError,
    check_frame,
    make_frame_domain,
    prepare_frame,
)
from opendp_hybridad.frame.rowmap import make_row_map, then_row_map

__all__ = ["PreparedFrame", "SchemaMismatchError", "check_frame", "make_frame_domain", "prepare_frame", "make_row_map", "then_row_map"]
