"""Ahead-of-time kernel cache: generated modules written once, imported by every later process.

An artefact is a plain Python module named by the SHA-256 of the expression,
its box, the backend and the code generator's version, so a changed
expression or generator never loads a stale kernel. Writes are atomic
(temporary file, then ``os.replace``), so concurrent processes that compile
the same kernel both end up importing one complete file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

#: bump when generated code changes shape, so old artefacts are ignored
GENERATOR_VERSION = "7"


def default_cache_dir() -> Path:
    env = os.environ.get("OPENDP_HYBRIDAD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "opendp_hybridad" / "kernels"


def artefact_key(fingerprint: str, backend: str) -> str:
    return hashlib.sha256(f"{fingerprint}|{backend}|{GENERATOR_VERSION}".encode()).hexdigest()[:32]


def load(key: str, directory: Path) -> ModuleType | None:
    """Import the cached module for ``key``, or None when it is not there."""
    path = directory / f"kernel_{key}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"opendp_hybridad_kernel_{key}", path)
    if spec is None or spec.loader is None:  # pragma: no cover - a file that exists always has a spec
        return None
    module = importlib.util.module_from_spec(spec)
    # registered under its name, as an import would: numba's on-disk cache of a numba kernel finds
    # the module's compiled helpers again by that name
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


def store(key: str, directory: Path, source: str) -> Path:
    """Write the module atomically and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"kernel_{key}.py"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".kernel_{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(source)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def discard_numba_cache(key: str, directory: Path) -> None:
    """Remove numba's index and data files for the module of ``key`` (best effort; numba rebuilds them)."""
    for path in (directory / "__pycache__").glob(f"kernel_{key}.*.nb[ic]"):
        with contextlib.suppress(OSError):
            path.unlink()
