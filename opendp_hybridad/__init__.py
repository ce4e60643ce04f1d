"""opendp-hybridad: hybrid automatic differentiation for differential privacy.

Declare bounded record fields, write a per-record function over them, and get
closed forms, certified sensitivity bounds and compiled batched kernels, all
before any private data is seen.

    >>> import opendp_hybridad as hd
    >>> schema = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
    >>> a, w, h = schema.symbols()
    >>> bmi = schema.function(a * w / h**2, name="bmi")
    >>> bmi.lipschitz().upper  # doctest: +SKIP

The public names are imported on first use (:mod:`opendp_hybridad._lazy`), so
``import opendp_hybridad`` loads neither sympy nor numpy, and OpenDP, dp-accounting,
numba and scipy wait until a measurement, accountant or certificate needs them.
"""

from typing import TYPE_CHECKING

from opendp_hybridad._lazy import lazy_exports
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

# eager: ``release`` is also the name of a submodule (see opendp_hybridad._lazy); it imports only errors
from opendp_hybridad.release import check_member, release

if TYPE_CHECKING:
    from opendp_hybridad.analysis.certificate import Analysis, BoundCertificate, RangeCertificate, Witness
    from opendp_hybridad.compile.kernel import Kernel
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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".analysis.certificate": ("Analysis", "BoundCertificate", "RangeCertificate", "Witness"),
        ".compile.kernel": ("Kernel",),
        # the package, not .symbolic.function: its ``parse`` is the function (the submodule of that name is shadowed)
        ".symbolic": ("Field", "RecordFunction", "Schema", "clip", "dual_norm", "parse", "sigmoid", "where"),
        ".symbolic.functions": ("Abs", "exp", "log", "maximum", "minimum", "softplus", "sqrt", "tanh"),
    },
    submodules=("analysis", "compile", "symbolic", "time_limit"),
)
