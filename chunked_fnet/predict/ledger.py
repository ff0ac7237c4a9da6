"""The run record kept inside a prediction's output store, so an interrupted run can be resumed.

``OUT.zarr/.chunked_fnet/run.json`` holds what determines the output (input, models, parameters);
``OUT.zarr/.chunked_fnet/done/<chunk>`` is written by a chunk task only after every zarr chunk of
its region has been stored; ``OUT.zarr/.chunked_fnet/blocks/<block>`` by a block task of a run that skips
background, counting its patches and the background ones (the summary adds them up). A chunk without its marker is recomputed on resume, so a half-written
chunk is never taken as done. The folder is not a zarr node: zarr and OME-Zarr readers ignore it.

Markers are separate small objects rather than one shared file because many workers finish chunks
at once: one object per chunk needs no lock and works the same on a local disk and an object store.

Both are written whole or not at all: on a local disk to a temporary name in the same folder, then
renamed into place (:func:`chunked_fnet.io.atomic.write_bytes`); on an object store by one PUT, which
is atomic there. A crash therefore never leaves a torn ``run.json``; one damaged anyway (by hand, by a
disk) is refused in one line by :meth:`Ledger.read_record`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from chunked_fnet.errors import InputError, one_line
from chunked_fnet.io.atomic import write_bytes
from chunked_fnet.io.store import RUN_FOLDER, redact, refuse_url_credentials
from chunked_fnet.sliding_window.box import Box

LEDGER = RUN_FOLDER
OWNER = "owner"  # the claims of the runs that held the output (predict/ownership.py)


def chunk_key(time_index: int, region: Box) -> str:
    """A chunk's name in the ledger and in messages: its time index and the start of each axis."""
    return f"t{time_index}-" + "-".join(f"{axis}{start}" for axis, start in zip("zyx", region.start, strict=True))


def describe_chunk(time_index: int, region: Box, time_point: int | None) -> str:
    """Where a chunk is, for a person: time point and voxel ranges on the output grid."""
    where = " ".join(f"{axis}[{a}:{b}]" for axis, a, b in zip("zyx", region.start, region.stop, strict=True))
    return f"t={time_point if time_point is not None else time_index} {where}"


class Ledger:
    """Read and write the run record of one output store (a local path or an fsspec URL)."""

    def __init__(self, output: str, storage_options: Mapping[str, Any] | None = None) -> None:
        refuse_url_credentials(str(output))
        self.fs, root = fsspec.core.url_to_fs(str(output).removeprefix("file://"), **dict(storage_options or {}))
        self.output = root.rstrip("/")
        self.root = f"{self.output}/{LEDGER}"

    def output_exists(self) -> bool:
        """Whether the output holds anything: the claims alone of a run stopped before it made the output do not count."""
        try:
            return self.names(self.output) != {LEDGER} or self.names(self.root) != {OWNER}
        except (FileNotFoundError, NotADirectoryError):  # nothing there, or a file where a folder would be
            return False

    def names(self, folder: str) -> set[str]:
        """What ``folder`` holds now (not an object store's cached listing: another process may have just written)."""
        self.fs.invalidate_cache(folder)
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)}

    def put(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        """Write one small file whole or not at all (see the module's docstring); ``exclusive``: only if
        it does not exist yet (FileExistsError), atomically, for claims (predict/ownership.py)."""
        if isinstance(self.fs, LocalFileSystem):
            write_bytes(path, data, exclusive=exclusive)  # temporary file beside it, fsync, rename (or link)
        else:
            self.fs.pipe_file(path, data, mode="create" if exclusive else "overwrite")  # a PUT (If-None-Match: *)

    def write_record(self, record: Mapping[str, Any]) -> None:
        self.fs.makedirs(f"{self.root}/done", exist_ok=True)
        self.put(f"{self.root}/run.json", json.dumps(record, indent=1, sort_keys=True).encode())

    def read_record(self) -> dict[str, Any] | None:
        """The run record, None when there is none; a damaged one raises :class:`InputError` in one line."""
        path = f"{self.root}/run.json"
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if isinstance(record, dict):
                return record
            problem = f"a JSON {type(record).__name__}, not an object"
        raise InputError(one_line(f"{redact(self._shown(path))} is damaged ({problem}); rerun with --overwrite to start over"))

    def _shown(self, path: str) -> str:
        """``path`` as the user would write it (with the protocol for a remote store)."""
        if isinstance(self.fs, LocalFileSystem):
            return path
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{path.lstrip('/') if protocol == 'memory' else path}"

    def mark_done(self, key: str, info: Mapping[str, float]) -> None:
        self.put(f"{self.root}/done/{key}", json.dumps(dict(info)).encode())

    def mark_block(self, key: str, info: Mapping[str, Any]) -> None:
        """What a block task of a run that skips background or profiles did: its patches, how many were
        background, and its time by stage (``chunked_fnet.profiling``)."""
        self.fs.makedirs(f"{self.root}/blocks", exist_ok=True)
        self.put(f"{self.root}/blocks/{key}", json.dumps(dict(info)).encode())

    def blocks(self, keys: Collection[str]) -> list[dict[str, Any]]:
        """The records of the block tasks ``keys`` (those there are), read at once (concurrently from an object store)."""
        return self._records("blocks", keys)

    def mark_frame(self, time_index: int, stats: Mapping[str, float]) -> None:
        """A frame's statistics, computed by the task that read it (``predict/frame_stats.py``)."""
        self.fs.makedirs(f"{self.root}/frames", exist_ok=True)
        self.put(f"{self.root}/frames/t{time_index}", json.dumps(dict(stats)).encode())

    def frame(self, time_index: int) -> dict[str, float] | None:
        """The statistics recorded for the frame at output time index ``time_index``, None where there are none yet."""
        try:
            return json.loads(self.fs.cat_file(f"{self.root}/frames/t{time_index}"))
        except FileNotFoundError:
            return None

    def chunks(self, keys: Collection[str]) -> list[dict[str, Any]]:
        """The done markers of the chunks ``keys`` (those there are): each chunk task's seconds, voxels and stages."""
        return self._records("done", keys)

    def _records(self, folder: str, keys: Collection[str]) -> list[dict[str, Any]]:
        paths = [f"{self.root}/{folder}/{k}" for k in keys]
        return [json.loads(raw) for raw in self.fs.cat(paths, on_error="omit").values()] if paths else []

    def done(self) -> set[str]:
        try:
            names = {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/done", detail=False)}
        except FileNotFoundError:
            return set()
        return {n for n in names if not n.startswith(".")}  # .KEY.RANDOM.tmp: a marker being written, or torn by a crash
