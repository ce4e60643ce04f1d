"""Compiled batched kernels: code generation with cse, ahead-of-time cache, backends.

Names are imported on first use (:mod:`opendp_hybridad._lazy`); numexpr and numba
load only when a kernel is compiled for them.
"""

from typing import TYPE_CHECKING

from opendp_hybridad._lazy import lazy_exports

if TYPE_CHECKING:
    from opendp_hybridad.compile.kernel import Kernel, available_backends, compile_function

__all__ = ["Kernel", "compile_function", "available_backends"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {".kernel": ("Kernel", "available_backends", "compile_function")},
    submodules=("cache", "codegen", "kernel"),
)
