"""Symbolic front end: bounded schemas, expressions over their fields, closed forms, tracing."""

from opendp_hybridad.symbolic.function import RecordFunction, dual_norm, parse
from opendp_hybridad.symbolic.functions import clip, sigmoid, where
from opendp_hybridad.symbolic.schema import Field, Schema

__all__ = ["Field", "Schema", "RecordFunction", "parse", "dual_norm", "sigmoid", "where", "clip"]
