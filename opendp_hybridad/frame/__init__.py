"""Dataframe-facing pieces: the frame domain and data-independent preparation (clamping, missing values)."""

from opendp_hybridad.frame.domain import (
    PreparedFrame,
    SchemaMismatchError,
    check_frame,
    make_frame_domain,
    prepare_frame,
)

__all__ = ["PreparedFrame", "SchemaMismatchError", "check_frame", "make_frame_domain", "prepare_frame"]
