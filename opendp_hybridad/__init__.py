"""opendp-hybridad: hybrid automatic differentiation for differential privacy.

Declare bounded record fields, write a per-record function over them, and get
closed forms, certified sensitivity bounds and compiled batched kernels, all
before any private data is seen.

    >>> import opendp_hybridad as hd
    >>> schema = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
    >>> a, w, h = schema.symbols()
    >>> bmi = schema.function(a * w / h**2, name="bmi")
    >>> bmi.lipschitz().upper  # doctest: +SKIP
"""

from opendp_hybridad.analysis import Analysis, BoundCertificate, RangeCertificate, Witness
from opendp_hybridad.compile import Kernel
from opendp_hybridad.errors import (
    AccountingError,
    DataError,
    DeclarationError,
    HybridADError,
    NotLipschitzError,
    SchemaMismatchError,
    UnboundedError,
    UnsupportedExpressionError,
)
from opendp_hybridad.release import check_member, release
from opendp_hybridad.symbolic import Field, RecordFunction, Schema, clip, dual_norm, parse, sigmoid, where
from opendp_hybridad.symbolic.functions import Abs, exp, log, maximum, minimum, softplus, sqrt, tanh

__version__ = "0.1.0"

__all__ = [
    "Schema", "Field", "RecordFunction", "parse", "dual_norm",
    "sigmoid", "softplus", "where", "clip", "exp", "log", "sqrt", "tanh", "Abs", "minimum", "maximum",
    "Analysis", "BoundCertificate", "RangeCertificate", "Witness", "Kernel",
    "HybridADError", "DeclarationError", "UnsupportedExpressionError", "UnboundedError", "NotLipschitzError",
    "AccountingError", "DataError", "SchemaMismatchError", "release", "check_member",
]
