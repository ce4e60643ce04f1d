"""Saving and loading DP-SGD weights with the privacy they have spent.

``save(path, params, history)`` writes two files: a JSON sidecar (``model.json`` next to
``model.npz``) holding the run's public parameters and the privacy spent so far (steps run,
sampling, ``q``, noise multiplier, the proven epsilon at delta, and whether the run was
private at all), then the weights and the optimizer's state in an ``npz``. The sidecar is
written first, each file atomically (a temporary file renamed into place), so a
checkpoint's weights never exist on disk without the record of what they cost (the
project's rule: spent budget is recorded before a result is released).

:func:`load` returns a :class:`Checkpoint`; passing it to ``DPSGD.fit(..., resume=checkpoint)``
continues the step count, so the reported epsilon is that of all steps together
(resuming adds to the spent budget, it never starts it afresh).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opendp_hybridad.errors import DataError, DeclarationError

FORMAT = "opendp-hybridad dp-sgd checkpoint"
VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """Loaded weights (one tuple of arrays per part) with the privacy their training spent (:attr:`privacy`)."""

    params: list[tuple[np.ndarray, ...]]
    #: steps run (all runs), sampling, q, noise multiplier, public n, batch size, epsilon and delta, relation
    privacy: dict[str, Any]
    #: the run's other public settings (mode, clip, optimizer, schedule, ...), for the record
    settings: dict[str, Any] = field(default_factory=dict)
    #: the optimizer's state (momentum, Adam's moments): post-processing of released sums, public
    optimizer_state: dict[str, Any] = field(default_factory=dict)

    @property
    def private(self) -> bool:
        """False when any run behind these weights drew seeded (not private) noise."""
        return bool(self.privacy.get("private", False))

    @property
    def steps(self) -> int:
        return int(self.privacy["steps"])


def paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The weights file (``.npz``) and its JSON sidecar for ``path`` (with or without the ``.npz`` suffix)."""
    weights = Path(path)
    if weights.suffix != ".npz":
        weights = weights.with_name(weights.name + ".npz")
    return weights, weights.with_suffix(".json")


def _atomic_write(target: Path, write: Any) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save(path: str | os.PathLike[str], params: Any, privacy: dict[str, Any], settings: dict[str, Any],
         optimizer_state: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write the sidecar (``privacy`` and ``settings``, JSON), then the weights; returns ``(weights, sidecar)``."""
    weights, sidecar = paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    layout = []
    for i, part in enumerate(params):
        part = tuple(part)
        layout.append(len(part))
        for j, array in enumerate(part):
            arrays[f"param_{i}_{j}"] = np.asarray(array, dtype=float)
    state_keys = []
    for key, value in (optimizer_state or {}).items():
        arrays[f"optimizer_{key}"] = np.asarray(value)
        state_keys.append(key)
    record = {"format": FORMAT, "version": VERSION, "privacy": privacy, "settings": settings,
              "layout": layout, "optimizer_state": state_keys}
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=True).encode()
    _atomic_write(sidecar, lambda out: out.write(text))  # the spent budget first
    _atomic_write(weights, lambda out: np.savez(out, **arrays))
    return weights, sidecar


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save` (``DataError`` if a file is missing or not one)."""
    weights, sidecar = paths(path)
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"no readable checkpoint sidecar at {sidecar.name}") from error
    if record.get("format") != FORMAT or record.get("version") != VERSION:
        raise DeclarationError(f"{sidecar.name} is not a {FORMAT} (version {VERSION})")
    try:
        with np.load(weights, allow_pickle=False) as data:
            params = [tuple(np.array(data[f"param_{i}_{j}"]) for j in range(count)) for i, count in enumerate(record["layout"])]
            state: dict[str, Any] = {}
            for key in record["optimizer_state"]:
                value = np.array(data[f"optimizer_{key}"])
                state[key] = value.item() if value.ndim == 0 else value
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"the weights file {weights.name} does not match its sidecar") from error
    return Checkpoint(params, dict(record["privacy"]), dict(record.get("settings", {})), state)
