"""Bytes from the operating system's CSPRNG, in calls it can take (one home for the rule).

OpenSSL's ``RAND_bytes`` takes a C ``int`` count, so one call gives at most about 2^31 bytes;
longer requests are joined from chunks of :data:`CHUNK` bytes. The source is passed in (the
callers' module-level ``_random_bytes``) so tests and audits can record what each caller drew.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from ssl import RAND_bytes as random_bytes
except ImportError:  # pragma: no cover
    from os import urandom as random_bytes

__all__ = ["CHUNK", "chunked", "random_bytes"]

CHUNK = 2**30


def chunked(source: Callable[[int], bytes], count: int, chunk: int | None = None) -> bytes:
    """``count`` bytes from ``source``, in calls of at most ``chunk`` bytes (default: :data:`CHUNK`, read at the call)."""
    chunk = CHUNK if chunk is None else chunk
    if count <= chunk:
        return source(count)
    return b"".join(source(min(chunk, count - start)) for start in range(0, count, chunk))
