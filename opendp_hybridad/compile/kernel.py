"""Batched kernels for a record function: value, gradient and gradient norm.

Kernels are float64 and take columns by field name: a pandas DataFrame, a
mapping of arrays, a 2-d array whose columns follow the schema, or keyword
arrays. They compute; they do not clamp. Clamping to the declared box and to
the certified range is the job of the data-facing constructors, so that a
kernel can also be used to inspect values outside the box.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from opendp_hybridad.compile import cache as kernel_cache
from opendp_hybridad.compile.codegen import generate_module, numba_unsupported
from opendp_hybridad.errors import DeclarationError

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction

BACKENDS = ("numpy", "numexpr", "numba")

#: ``OPENDP_HYBRIDAD_BACKEND=numpy|numexpr|numba`` pins what ``backend="auto"`` means (no calibration)
BACKEND_ENV = "OPENDP_HYBRIDAD_BACKEND"


def available_backends() -> list[str]:
    """The installed backends (found without importing them: numexpr and numba load only when used)."""
    return ["numpy"] + [name for name in ("numexpr", "numba") if importlib.util.find_spec(name) is not None]


def resolve_backend(backend: str) -> str:
    """A named backend, checked to be installed. ``"auto"`` is resolved per function by :func:`choose_backend`."""
    if backend not in BACKENDS:
        raise DeclarationError(f"backend must be 'auto', 'numpy', 'numexpr' or 'numba', not {backend!r}")
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
        value (the frame domain guarantees it). One fused pass with numexpr or numba.
        Every backend maps a record to the same IEEE computation wherever it sits in
        the columns, so a record's value never depends on the other records.
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


def _numba_refusal(fn: RecordFunction) -> str | None:
    """Why the numba backend is not offered for ``fn`` (None when it is). Imports numba."""
    import numba

    return numba_unsupported(fn.expr, bool(getattr(numba.config, "USING_SVML", False)))


def _checked(chosen: str, fn: RecordFunction, build: Any) -> Any:
    """``build()``; for numexpr and numba, a refusal, a failed import or a failed compile is a DeclarationError."""
    if chosen == "numpy":
        return build()
    try:
        why = _numba_refusal(fn) if chosen == "numba" else None
        if why is None:
            return build()
    except DeclarationError:
        raise
    except Exception as exc:  # an import or compile error (numba's quote only the generated source)
        raise DeclarationError(f"backend {chosen!r} cannot compile this function ({type(exc).__name__})") from None
    raise DeclarationError(f"backend 'numba' cannot compile this function: {why}")


def compile_function(fn: RecordFunction, backend: str = "auto", cache: bool | str | Path = False) -> Kernel:
    """Build a :class:`Kernel` just in time, or through the ahead-of-time cache.

    ``backend``: ``"numpy"``, ``"numexpr"``, ``"numba"`` or ``"auto"`` (the backend
    :func:`choose_backend` picks for ``fn``, before any data). ``cache`` False: generate
    and ``exec`` in this process. True: use the default cache directory
    (``$OPENDP_HYBRIDAD_CACHE`` or ``~/.cache/opendp_hybridad``); a path: use that
    directory (numba's machine code is cached there too).
    """
    chosen = choose_backend(fn) if backend == "auto" else resolve_backend(backend)
    key = kernel_cache.artefact_key(fn.fingerprint, chosen)
    start = time.perf_counter()
    if cache is False or cache is None:
        source = _source_for(fn, chosen, key)
        module = _checked(chosen, fn, lambda: _exec_source(source, key))
        return Kernel(fn.names, module, chosen, "jit", None, source, time.perf_counter() - start)
    directory = kernel_cache.default_cache_dir() if cache is True else Path(cache)
    try:
        module = _checked(chosen, fn, lambda: kernel_cache.load(key, directory))
        if module is not None:
            return Kernel(fn.names, module, chosen, "aot-load", directory / f"kernel_{key}.py", None,
                          time.perf_counter() - start)
        source = _source_for(fn, chosen, key)
        path = kernel_cache.store(key, directory, source)
        module = _checked(chosen, fn, lambda: kernel_cache.load(key, directory))
        if module is None:  # pragma: no cover - store() just wrote it
            raise OSError(f"kernel cache {directory} did not keep {path.name}")
        return Kernel(fn.names, module, chosen, "aot-write", path, source, time.perf_counter() - start)
    except DeclarationError:
        if chosen != "numba" or _numba_refusal(fn) is not None:
            raise
    # numba's own cache of the module's machine code (its index and data files in __pycache__) is
    # only a speed-up: a corrupted or unreadable one is discarded and the module loaded again, and
    # where that fails too the kernel is compiled afresh in this process, without any cache
    kernel_cache.discard_numba_cache(key, directory)
    try:
        module = kernel_cache.load(key, directory)
    except Exception:  # still unreadable (e.g. a cache numba keeps elsewhere, or one it cannot replace)
        module = None
    if module is not None:
        return Kernel(fn.names, module, chosen, "aot-load", directory / f"kernel_{key}.py", None,
                      time.perf_counter() - start)
    source = _source_for(fn, chosen, key)
    module = _checked(chosen, fn, lambda: _exec_source(source, key))
    return Kernel(fn.names, module, chosen, "jit", None, source, time.perf_counter() - start)


# -- backend="auto" -----------------------------------------------------------------------

#: ties, and a loaded machine, go to the first of these: numba and numpy run in the calling
#: thread, numexpr's worker threads wait for each other when another job holds a core
PREFERENCE = ("numba", "numpy", "numexpr")
#: records in the calibration sample: a few milliseconds per backend
CALIBRATION_ROWS = 1 << 16


@dataclass(frozen=True)
class Calibration:
    """How ``backend="auto"`` chose for one function: the backend, and why.

    ``reason``: ``"calibrated"`` (fastest best-of-``rounds`` time on a synthetic sample),
    ``"loaded"`` (the machine's load average reaches its core count, so timings would
    measure the other jobs: the first single-threaded backend in :data:`PREFERENCE`),
    ``"pinned"`` (``$OPENDP_HYBRIDAD_BACKEND``) or ``"only"`` (one candidate).
    ``seconds``: best time per timed candidate; ``refused``: why a backend was not a candidate.
    """

    backend: str
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


_choices: dict[str, Calibration] = {}
_choices_lock = threading.Lock()


def machine_loaded() -> bool:
    """Whether the 1-minute load average reaches the number of cores this process may use."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - no load average on this platform
        return False
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return load >= cpus


def calibration_sample(fn: RecordFunction, rows: int = CALIBRATION_ROWS) -> list[np.ndarray]:
    """Synthetic columns for timing: uniform over each field's range widened by a tenth on each side
    (so the clamps work), from a fixed seed. Never the data a release reads: the choice it informs
    is made before any data, so a record's value cannot depend on which dataset is released."""
    rng = np.random.default_rng(0)
    columns = []
    for f in fn.schema.fields.values():
        lo, hi = float(f.lower), float(f.upper)
        # lo + t (hi - lo) as (1 - t) lo + t hi: never hi - lo, which overflows for a box as wide as
        # [-1e308, 1e308] (numpy's uniform refuses such a range); an infinite end becomes the largest float
        t = rng.uniform(-0.1, 1.1, rows)
        with np.errstate(all="ignore"):
            columns.append(np.nan_to_num((1.0 - t) * lo + t * hi))
    return columns


def calibrate(fn: RecordFunction, *, rows: int = CALIBRATION_ROWS, rounds: int = 3,
              loaded: bool | None = None) -> Calibration:
    """Pick the backend for ``fn``: compile every installed one that can evaluate it, then time
    ``value_clamped`` on :func:`calibration_sample` (rounds interleaved, best of ``rounds``).

    A backend that cannot compile ``fn`` is skipped (``refused``); numpy always can. On a loaded
    machine (``loaded``, default :func:`machine_loaded`) nothing is timed: the first
    single-threaded candidate in :data:`PREFERENCE`. Which backend wins changes no map: under
    add/remove and replace-one a sum's stability rests only on each value lying in the certified
    range (every backend clamps to it, NaN to its lower end), and the feature relation evaluates
    certified enclosures, not the kernel.
    """
    kernels: dict[str, Kernel] = {}
    refused: dict[str, str] = {}
    for name in PREFERENCE:
        if name not in available_backends():
            refused[name] = "not installed"
            continue
        try:
            kernels[name] = fn.compile(backend=name)
        except DeclarationError as exc:
            refused[name] = str(exc)
    if len(kernels) == 1:
        return Calibration(next(iter(kernels)), "only", refused=refused)
    if machine_loaded() if loaded is None else loaded:
        single = [name for name in kernels if name != "numexpr"]
        return Calibration(single[0], "loaded", refused=refused)
    columns = calibration_sample(fn, rows)
    lower, upper = -np.inf, np.inf
    best = dict.fromkeys(kernels, np.inf)
    with np.errstate(all="ignore"):
        for kernel in kernels.values():  # warm-up: numexpr starts its threads, caches fill
            kernel.value_clamped(columns, lower, upper)
        for _ in range(rounds):
            for name, kernel in kernels.items():
                start = time.perf_counter()
                kernel.value_clamped(columns, lower, upper)
                best[name] = min(best[name], time.perf_counter() - start)
    fastest = min(kernels, key=lambda name: (best[name], PREFERENCE.index(name)))
    return Calibration(fastest, "calibrated", seconds=best, refused=refused)


def backend_choice(fn: RecordFunction) -> Calibration:
    """What ``backend="auto"`` means for ``fn`` in this process: ``$OPENDP_HYBRIDAD_BACKEND`` when set,
    else :func:`calibrate`, run once per function (by fingerprint) and kept for the process."""
    pinned = os.environ.get(BACKEND_ENV, "").strip()
    if pinned and pinned != "auto":
        return Calibration(resolve_backend(pinned), "pinned")
    with _choices_lock:
        choice = _choices.get(fn.fingerprint)
        if choice is None:
            choice = _choices[fn.fingerprint] = calibrate(fn)
    return choice


def choose_backend(fn: RecordFunction) -> str:
    """The backend ``backend="auto"`` compiles ``fn`` with (see :func:`backend_choice`)."""
    return backend_choice(fn).backend


__all__ = ["BACKENDS", "Calibration", "Kernel", "available_backends", "backend_choice", "calibrate",
           "choose_backend", "compile_function", "machine_loaded"]
