"""Which stored chunks a region of a zarr array needs, and which of them are missing.

zarr reads a chunk that was never written as the array's fill value, silently: an input left
incomplete by an interrupted copy would be predicted from zeros without a word. Listing what the
store holds (one listing, no chunk is read) tells the difference before any work starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import zarr
from zarr.core.sync import sync

__all__ = ["Completeness", "completeness"]


@dataclass(frozen=True)
class Completeness:
    needed: int  # stored objects (chunks, or shards for a sharded array) the region touches
    missing: tuple[str, ...]  # their keys, relative to the array

    def describe(self, where: str) -> str:
        shown = ", ".join(self.missing[:3]) + (", ..." if len(self.missing) > 3 else "")
        return f"{where}: {len(self.missing)} of the {self.needed} stored chunks the prediction reads are missing ({shown})"


async def _stored_keys(array: zarr.Array) -> set[str]:
    path = array.store_path.path
    prefix = f"{path}/" if path else ""
    return {key[len(prefix):] async for key in array.store_path.store.list_prefix(prefix)}


def completeness(array: zarr.Array, region: Sequence[slice]) -> Completeness:
    """Which chunks (or shards) of ``array`` under ``region`` (a unit-step slice per axis) are stored."""
    grid = array.shards or array.chunks
    ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(region, grid, strict=True)]
    encode = array._async_array.metadata.encode_chunk_key  # the array's own key encoding ("c/0/1", "0.1", ...)
    stored = sync(_stored_keys(array))
    keys = [encode(coords) for coords in itertools.product(*ranges)]
    return Completeness(len(keys), tuple(k for k in keys if k not in stored))
