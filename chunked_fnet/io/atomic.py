"""Write a file or a folder under a temporary name beside its final path, then rename it into place:
a reader, or a crash, sees the old version or the new one, never half of one.

Permissions follow the umask like any other file this package writes (files ``0666 & ~umask``,
folders ``0777 & ~umask``): ``tempfile.mkstemp``/``mkdtemp`` would make them 0600/0700 and lock
colleagues who share a models folder out.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _beside(path: Path, suffix: str, create: Callable[[Path], T]) -> tuple[Path, T]:
    """A new hidden name next to ``path`` (``.NAME.RANDOM SUFFIX``) and what ``create`` made there."""
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            return candidate, create(candidate)
        except FileExistsError:
            continue


def write_bytes(path: str | os.PathLike, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename). ``exclusive``: only if
    ``path`` does not exist (FileExistsError otherwise), by a hard link, which, unlike a rename, never
    replaces: of two writers at one moment exactly one succeeds, and no reader sees half a file."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tmp, fd = _beside(path, ".tmp", lambda p: os.open(p, flags, 0o666))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_dir_beside(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new empty folder next to ``path`` (same file system, so it can be renamed onto it)."""
    folder, _ = _beside(Path(path), suffix, lambda p: os.mkdir(p, 0o777))
    return folder


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Swap the fully written folder ``tmp`` in for ``target`` (which may exist, or be a link)."""
    tmp, target = Path(tmp), Path(target)
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    old = new_dir_beside(target, ".old")
    os.replace(target, old / "previous")  # move aside, then swap in the new one
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """An empty folder beside ``target`` to fill: swapped in for ``target`` when the block ends, removed
    (and ``target`` left as it was) when the block raises."""
    tmp = new_dir_beside(target)
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
