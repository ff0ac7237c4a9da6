"""Which stored chunks a region of a zarr array needs, and which of them are missing.

zarr reads a chunk that was never written as the array's fill value, silently: an input left
incomplete by an interrupted copy would be predicted from zeros without a word. Listing what the
store holds (one listing, no chunk is read) tells the difference before any work starts.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

__all__ = ["Completeness", "chunk_ranges", "completeness", "complete_prefix"]


@dataclass(frozen=True)
class Completeness:
    needed: int  # stored objects (chunks, or shards for a sharded array) the region touches
    missing: tuple[str, ...]  # their keys, relative to the array

    def describe(self, where: str) -> str:
        shown = ", ".join(self.missing[:3]) + (", ..." if len(self.missing) > 3 else "")
        return f"{where}: {len(self.missing)} of the {self.needed} stored chunks the prediction reads are missing ({shown})"


async def _stored_keys(array: zarr.Array, folder: str = "") -> set[str]:
    """The keys (relative to the array) stored under ``folder`` of the array (default: all of them)."""
    path = array.store_path.path
    prefix = f"{path}/" if path else ""
    return {key[len(prefix):] async for key in array.store_path.store.list_prefix(prefix + folder)}


def chunk_ranges(array: zarr.Array, index: tuple[Any, ...]) -> list[range] | None:
    """The chunk (or shard) indices along each axis that ``index`` touches; None when it is not basic indexing."""
    grid = getattr(array, "shards", None) or array.chunks
    index = index + (slice(None),) * (array.ndim - len(index))
    out = []
    for item, n, c in zip(index, array.shape, grid, strict=False):
        if isinstance(item, (int, np.integer)):
            i = int(item) % n if n else 0
            out.append(range(i // c, i // c + 1))
        elif isinstance(item, slice):
            start, stop, _ = item.indices(n)
            out.append(range(start // c, max(start // c, -(-stop // c))))
        else:
            return None
    return out


def completeness(array: zarr.Array, region: Sequence[slice]) -> Completeness:
    """Which chunks (or shards) of ``array`` under ``region`` (a unit-step slice per axis) are stored."""
    ranges = chunk_ranges(array, tuple(region))
    assert ranges is not None  # slices are basic indexing
    stored = sync(_stored_keys(array))
    # the array's own key encoding ("c/0/1", "0.1", ...)
    keys = [array.metadata.encode_chunk_key(coords) for coords in itertools.product(*ranges)]
    return Completeness(len(keys), tuple(k for k in keys if k not in stored))


def complete_prefix(array: zarr.Array, regions: Sequence[Sequence[slice]]) -> int:
    """How many of ``regions``, in order from the first, have every chunk (or shard) they touch stored.
    A followed time-lapse asks this of every frame not yet predicted at every look, so each region's
    listing covers only the folder its keys share (NGFF keys nest by t, then c: one frame's channel),
    and listing stops at the first incomplete region."""
    listed: dict[str, set[str]] = {}
    for n, region in enumerate(regions):
        ranges = chunk_ranges(array, tuple(region))
        assert ranges is not None
        keys = [array.metadata.encode_chunk_key(coords) for coords in itertools.product(*ranges)]
        shared = os.path.commonprefix(keys)
        folder = shared[: shared.rfind("/") + 1]  # "" for flat keys ("0.0.1"): the whole array
        if folder not in listed:
            listed[folder] = sync(_stored_keys(array, folder))
        if any(key not in listed[folder] for key in keys):
            return n
    return len(regions)
