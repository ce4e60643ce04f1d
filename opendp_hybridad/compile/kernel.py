"""Batched kernels for a record function: value, gradient and gradient norm.

Kernels are float64 and take columns by field name: a pandas DataFrame, a
mapping of arrays, a 2-d array whose columns follow the schema, or keyword
arrays. They compute; they do not clamp. Clamping to the declared box and to
the certified range is the job of the data-facing constructors, so that a
kernel can also be used to inspect values outside the box.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from opendp_hybridad.compile import cache as kernel_cache
from opendp_hybridad.compile.codegen import generate_module
from opendp_hybridad.errors import DeclarationError

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction

BACKENDS = ("numpy", "numexpr")


def available_backends() -> list[str]:
    found = ["numpy"]
    try:
        import numexpr  # noqa: F401
    except ImportError:
        pass
    else:
        found.append("numexpr")
    return found


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "numexpr" if "numexpr" in available_backends() else "numpy"
    if backend not in BACKENDS:
        raise DeclarationError(f"backend must be 'auto', 'numpy' or 'numexpr', not {backend!r}")
    if backend not in available_backends():
        raise DeclarationError(f"backend {backend!r} is not installed (pip install 'opendp-hybridad[fast]')")
    return backend


class Kernel:
    """Compiled batched evaluation of one :class:`RecordFunction`.

    ``origin`` says where the code came from: ``"jit"`` (generated in this
    process), ``"aot-write"`` (generated and written to the cache) or
    ``"aot-load"`` (imported from the cache without generating anything).
    """

    def __init__(self, names: list[str], module: ModuleType, backend: str, origin: str,
                 path: Path | None, source: str | None, seconds: float):
        self.names = names
        self.backend = backend
        self.origin = origin
        self.path = path
        self.source = source
        self.compile_seconds = seconds
        self._module = module

    # -- inputs -----------------------------------------------------------------
    def columns(self, data: Any = None, **kwargs: Any) -> list[np.ndarray]:
        """The input columns, in schema order, as contiguous float64 arrays."""
        if data is None:
            data = kwargs
        elif kwargs:
            raise TypeError("pass either one data argument or keyword columns, not both")
        if isinstance(data, np.ndarray):
            arr = np.asarray(data, dtype=np.float64)
            if arr.ndim == 1 and len(self.names) == 1:
                arr = arr[:, None]
            if arr.ndim != 2 or arr.shape[1] != len(self.names):
                raise DeclarationError(f"expected a 2-d array with {len(self.names)} columns ({', '.join(self.names)})")
            return [np.ascontiguousarray(arr[:, j]) for j in range(arr.shape[1])]
        if hasattr(data, "columns") or isinstance(data, Mapping):
            cols = []
            for name in self.names:
                if name not in data:
                    raise DeclarationError(f"column {name!r} is missing from the input")
                cols.append(np.ascontiguousarray(np.asarray(data[name], dtype=np.float64)).reshape(-1))
            lengths = {c.shape[0] for c in cols}
            if len(lengths) > 1:
                raise DeclarationError("input columns have different lengths")
            return cols
        raise TypeError("kernel input must be a DataFrame, a mapping of columns, a 2-d array or keyword arrays")

    # -- evaluation ---------------------------------------------------------------
    def value(self, data: Any = None, **kwargs: Any) -> np.ndarray:
        """``f`` on every record."""
        return self._module.value(*self.columns(data, **kwargs))

    __call__ = value

    def value_clamped(self, columns: list[np.ndarray], lower: float, upper: float) -> np.ndarray:
        """``f`` on records clamped to the box (imputing where the field says so), clamped to ``[lower, upper]``.

        The columns must not contain missing values in fields without an impute
        value (the frame domain guarantees it). One fused pass with numexpr.
        """
        return self._module.value_clamped(*columns, lower, upper)

    def gradient(self, data: Any = None, **kwargs: Any) -> np.ndarray:
        """Per-record gradient, shape (records, fields), columns in schema order."""
        parts = self._module.gradient(*self.columns(data, **kwargs))
        if not isinstance(parts, tuple):
            parts = (parts,)
        return np.column_stack(parts)

    def gradient_norm(self, data: Any = None, norm: Any = 2, **kwargs: Any) -> np.ndarray:
        """Per-record ``||grad f||_p``; p = 2 runs the compiled closed form."""
        from opendp_hybridad.symbolic.function import normalise_norm

        p = normalise_norm(norm)
        if p == 2.0:
            return self._module.gradient_norm(*self.columns(data, **kwargs))
        g = self.gradient(data, **kwargs)
        return np.abs(g).sum(axis=1) if p == 1.0 else np.abs(g).max(axis=1)

    def __repr__(self) -> str:
        return f"Kernel({', '.join(self.names)}; backend={self.backend}, origin={self.origin})"


def _source_for(fn: RecordFunction, backend: str, key: str) -> str:
    grad = list(fn.gradient().values())
    box = {n: (f.lower, f.upper, f.impute if f.missing == "impute" else None) for n, f in fn.schema.fields.items()}
    return generate_module(
        key,
        {"value": [fn.expr], "gradient": grad, "gradient_norm": [fn.gradient_norm(2)]},
        fn.names,
        backend,
        clamped=(fn.expr, box),
    )


def _exec_source(source: str, key: str) -> ModuleType:
    module = ModuleType(f"opendp_hybridad_kernel_{key}")
    exec(compile(source, f"<opendp_hybridad kernel {key}>", "exec"), module.__dict__)  # noqa: S102
    return module


def compile_function(fn: RecordFunction, backend: str = "auto", cache: bool | str | Path = False) -> Kernel:
    """Build a :class:`Kernel` just in time, or through the ahead-of-time cache.

    ``cache`` False: generate and ``exec`` in this process. True: use the default
    cache directory (``$OPENDP_HYBRIDAD_CACHE`` or ``~/.cache/opendp_hybridad``);
    a path: use that directory.
    """
    chosen = resolve_backend(backend)
    key = kernel_cache.artefact_key(fn.fingerprint, chosen)
    start = time.perf_counter()
    if cache is False or cache is None:
        source = _source_for(fn, chosen, key)
        module = _exec_source(source, key)
        return Kernel(fn.names, module, chosen, "jit", None, source, time.perf_counter() - start)
    directory = kernel_cache.default_cache_dir() if cache is True else Path(cache)
    module = kernel_cache.load(key, directory)
    if module is not None:
        return Kernel(fn.names, module, chosen, "aot-load", directory / f"kernel_{key}.py", None,
                      time.perf_counter() - start)
    source = _source_for(fn, chosen, key)
    path = kernel_cache.store(key, directory, source)
    module = kernel_cache.load(key, directory)
    if module is None:  # pragma: no cover - store() just wrote it
        raise OSError(f"kernel cache {directory} did not keep {path.name}")
    return Kernel(fn.names, module, chosen, "aot-write", path, source, time.perf_counter() - start)


__all__ = ["Kernel", "compile_function", "available_backends"]
