"""Compiled batched kernels: code generation with cse, ahead-of-time cache, backends."""

from opendp_hybridad.compile.kernel import Kernel, available_backends, compile_function

__all__ = ["Kernel", "compile_function", "available_backends"]
