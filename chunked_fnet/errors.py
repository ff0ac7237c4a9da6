"""Exceptions with messages meant for the person at the keyboard: what was wrong, where, what was expected."""

from __future__ import annotations

import errno


class ChunkedFnetError(Exception):
    """Base class of every error this package raises on purpose (the CLI prints these without a traceback)."""


class OmeZarrError(ChunkedFnetError, ValueError):
    """An OME-Zarr store is missing, malformed, or does not hold what was asked for."""


class UnreadableChunkError(OmeZarrError):
    """A chunk of an input that no retry can read: it cannot be decoded (damaged), or the system refuses it."""


class InputError(ChunkedFnetError, ValueError):
    """A user-supplied argument or file is unusable."""


class DeviceMemoryError(ChunkedFnetError, RuntimeError):
    """A forward pass ran out of its device's memory. No retry of the same patch can fit, and no block may
    shrink its own patch (the patch grid is one for the whole run): the message names one that fits.
    ``patch`` (z, y, x), ``batch`` and ``device`` say what failed."""

    patch: tuple[int, ...] = ()
    batch: int = 1
    device: str = ""


class OutputExistsError(ChunkedFnetError, FileExistsError):
    """Refusing to overwrite an existing output without an explicit ``overwrite``."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) made one space: error messages are one line."""
    return " ".join(str(text).split())


#: What no retry can change: a full disk or quota, a read-only file system, access refused.
PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def retryable(exc: BaseException) -> bool:
    """Whether trying a failed task again may succeed: the one place that decides (a run stops at the
    first error this refuses, see :mod:`chunked_fnet.predict.submit`).

    No for an OSError of :data:`PERMANENT_ERRNOS`, a damaged or refused input chunk
    (:class:`UnreadableChunkError`), a patch too large for its device (:class:`DeviceMemoryError`) and
    input a task finds unusable (:class:`InputError`: NaN voxels, say): every try would fail the same way. Yes for everything else: a lost
    worker (KilledWorker), a timeout, a transient OSError of a network store, and what is not known.
    """
    if isinstance(exc, (UnreadableChunkError, DeviceMemoryError, InputError)):
        return False
    return not (isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS)
