"""The run record kept inside a prediction's output store, so an interrupted run can be resumed.

``OUT.zarr/.chunked_fnet/run.json`` holds what determines the output (input, models, parameters);
``OUT.zarr/.chunked_fnet/done/<chunk>`` is written by a chunk task only after every zarr chunk of
its region has been stored. A chunk without its marker is recomputed on resume, so a half-written
chunk is never taken as done. The folder is not a zarr node: zarr and OME-Zarr readers ignore it.

Markers are separate small objects rather than one shared file because many workers finish chunks
at once: one object per chunk needs no lock and works the same on a local disk and an object store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import fsspec

from chunked_fnet.io.store import redact

LEDGER = ".chunked_fnet"


def chunk_key(time_index: int, region: tuple[slice, ...]) -> str:
    """A chunk's name in the ledger and in messages: its time index and the start of each axis."""
    return f"t{time_index}-" + "-".join(f"{axis}{sl.start}" for axis, sl in zip("zyx", region, strict=True))


def describe_chunk(time_index: int, region: tuple[slice, ...], time_point: int | None) -> str:
    """Where a chunk is, for a person: time point and voxel ranges on the output grid."""
    where = " ".join(f"{axis}[{sl.start}:{sl.stop}]" for axis, sl in zip("zyx", region, strict=True))
    return f"t={time_point if time_point is not None else time_index} {where}"


class Ledger:
    """Read and write the run record of one output store (a local path or an fsspec URL)."""

    def __init__(self, output: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.fs, root = fsspec.core.url_to_fs(str(output).removeprefix("file://"), **dict(storage_options or {}))
        self.output = root.rstrip("/")
        self.root = f"{self.output}/{LEDGER}"

    def output_exists(self) -> bool:
        return bool(self.fs.exists(self.output))

    def write_record(self, record: Mapping[str, Any]) -> None:
        self.fs.makedirs(f"{self.root}/done", exist_ok=True)
        self.fs.pipe_file(f"{self.root}/run.json", json.dumps(record, indent=1, sort_keys=True).encode())

    def read_record(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(f"{self.root}/run.json"))
        except FileNotFoundError:
            return None

    def mark_done(self, key: str, info: Mapping[str, float]) -> None:
        self.fs.pipe_file(f"{self.root}/done/{key}", json.dumps(dict(info)).encode())

    def done(self) -> set[str]:
        try:
            return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/done", detail=False)}
        except FileNotFoundError:
            return set()


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """What differs between two run records, one readable line per field (floats within 1e-9)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{name}.")
        elif not _same(a, b):
            out.append(f"{name}: interrupted run {redact(json.dumps(a))}, now {redact(json.dumps(b))}")
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b
