"""Keep long array-heavy loops from holding freed memory (glibc only; a no-op elsewhere).

glibc raises its mmap threshold after large blocks are freed, after which big numpy arrays come from
the heap and freed pages stay with the process; worker threads also get their own arenas. Fixing the
threshold keeps large arrays in mmap (returned to the system on free), and ``malloc_trim`` hands
back what the heap still holds. Hand-written because no library exposes ``mallopt``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
from collections.abc import Mapping

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once per process: ``find_library`` runs ``ldconfig -p`` in a subprocess
    each time (with a call per task, a quarter of a small task's time: benchmarks/many_chunks.py)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


#: glibc's allocator settings a person sets on purpose (dask's own worker default, MALLOC_TRIM_THRESHOLD_, is not one).
USER_ALLOCATOR_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")


def allocator_set_by_user(environ: Mapping[str, str] | None = None) -> str | None:
    """The allocator setting of the process's environment that makes its heap the user's choice, or None:
    ``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``, or
    another allocator preloaded (``LD_PRELOAD`` naming jemalloc, tcmalloc or mimalloc), where
    :func:`bound_heap_growth` would override or not apply."""
    env = os.environ if environ is None else environ
    for name in USER_ALLOCATOR_SETTINGS:
        if name in env:
            return name
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    if any(lib in env.get("LD_PRELOAD", "") for lib in ("jemalloc", "tcmalloc", "mimalloc")):
        return "LD_PRELOAD"
    return None


def bound_heap_growth(mmap_threshold: int = 1 << 20, arenas: int = 2) -> bool:
    """Ask glibc to mmap blocks above ``mmap_threshold`` bytes and to use at most ``arenas`` arenas."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def release_memory() -> None:
    """Collect garbage and return free heap pages to the system."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return free heap pages to the system, without a garbage collection (cheap enough per task)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def reuse_freed_memory(mmap_threshold: int = 1 << 36) -> bool:
    """Keep freed blocks in the heap for the next allocation instead of unmapping them (glibc).

    The opposite of :func:`bound_heap_growth`, for a loop that allocates the same large tensors every
    iteration (a training step): by default glibc returns each large block to the system and faults
    fresh zeroed pages in for the next one; measured here on the paper U-Net's bf16 training step
    (batch 8), that is about half a million page faults per step and 15-25 % of its time.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, mmap_threshold))
