"""Training pairs read straight from chunked stores: per-image statistics, model-grid resampling,
and reproducible random patches for torch DataLoader workers.

Sample ``i`` of a run is a pure function of ``(seed, i)`` (which pair, where), so resuming at
iteration ``n`` replays exactly the patches an uninterrupted run would have drawn, whatever the
number of loader workers. Each worker keeps an LRU cache of preprocessed pairs bounded in bytes;
a pair too large for the cache is read patch by patch from the store instead, so training data
may be far larger than memory.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from chunked_fnet.errors import InputError
from chunked_fnet.io.atomic import write_bytes
from chunked_fnet.io.reader import channel_index, open_image, open_level_array, spatial_frame
from chunked_fnet.preprocess.normalize import FrameStats, frame_stats
from chunked_fnet.preprocess.frame import ModelGridFrame
from chunked_fnet.preprocess.resample import ModelGrid
from chunked_fnet.train.augment import Augmentation, PlaneSymmetry, draw_symmetry
from chunked_fnet.train.manifest import ManifestEntry, Pair

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class PairSpec:
    """Everything a worker needs to read one pair, small and picklable (no open files)."""

    name: str
    path: str
    series: str | None
    t: int | None
    input_index: int
    target_index: int
    input_stats: FrameStats
    target_stats: FrameStats
    source_shape: tuple[int, int, int]
    source_scale: tuple[float, float, float]

    def grid(self, model_scale: Sequence[float]) -> ModelGrid:
        return ModelGrid(self.source_shape, self.source_scale, tuple(model_scale))  # type: ignore[arg-type]


def convert_if_tiff(entry: ManifestEntry, workdir: Path) -> ManifestEntry:
    """TIFF entries are converted once to OME-Zarr in ``workdir`` so patches come from a chunked store."""
    if not entry.path.lower().endswith(TIFF_SUFFIXES):
        return entry
    from chunked_fnet.io.convert import convert_tiff

    out = workdir / "converted" / (Path(entry.path).stem + ".zarr")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_tiff(entry.path, out, voxel_size=entry.voxel_size, progress=False)
    return entry.model_copy(update={"path": str(out)})


def expand_pairs(entries: Sequence[ManifestEntry]) -> list[Pair]:
    """One pair per (image, time point)."""
    pairs = []
    for e in entries:
        image = open_image(e.path, series=e.series)
        times = e.time_points if e.time_points is not None else (range(image.sizes["t"]) if "t" in image.dims else [None])
        for t in times:
            if t is not None and "t" in image.dims and not 0 <= t < image.sizes["t"]:
                raise InputError(f"{image.attrs['source']}: time point {t} out of range 0..{image.sizes['t'] - 1}")
            pairs.append(
                Pair(path=e.path, series=e.series, t=t, input_channel=e.input_channel, target_channel=e.target_channel, split=e.split)
            )
    return pairs


def describe_pair(pair: Pair, stats_cache: dict[str, dict] | None = None) -> PairSpec:
    """Open a pair lazily and compute (or reuse) whole-frame statistics of both channels."""
    image = open_image(pair.path, series=pair.series)
    ci = channel_index(image, pair.input_channel, "input")
    ct = channel_index(image, pair.target_channel, "target")
    cached = (stats_cache or {}).get(pair.name)
    if cached is not None:
        si, st = FrameStats(**cached["input"]), FrameStats(**cached["target"])
    else:
        si = frame_stats(spatial_frame(image, pair.t, ci), f"{pair.name} input channel {pair.input_channel!r}")
        st = frame_stats(spatial_frame(image, pair.t, ct), f"{pair.name} target channel {pair.target_channel!r}")
    scale = image.attrs["scale"]
    frame = spatial_frame(image, pair.t, ci)
    return PairSpec(
        name=pair.name,
        path=pair.path,
        series=pair.series,
        t=pair.t,
        input_index=ci,
        target_index=ct,
        input_stats=si,
        target_stats=st,
        source_shape=tuple(frame.shape),
        source_scale=(scale["z"], scale["y"], scale["x"]),
    )


def save_stats(specs: Sequence[PairSpec], path: Path) -> None:
    write_bytes(path, json.dumps({s.name: {"input": asdict(s.input_stats), "target": asdict(s.target_stats)} for s in specs}, indent=1).encode())


def load_stats(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.exists() else {}


class PairReader:
    """Reads z-scored, model-grid regions of a pair's input and target(s) straight from its store.

    Given several specs of the same image time point (one per structure, as a multi-structure run
    has), the input is read and resampled once and each structure's target beside it.
    """

    def __init__(self, spec: PairSpec | Sequence[PairSpec], model_scale: Sequence[float]) -> None:
        self.specs = (spec,) if isinstance(spec, PairSpec) else tuple(spec)
        self.spec = self.specs[0]
        if any((s.path, s.series, s.t, s.input_index) != (self.spec.path, self.spec.series, self.spec.t, self.spec.input_index) for s in self.specs):
            raise ValueError(f"specs read together must share one input: {[s.name for s in self.specs]}")
        self.grid = self.spec.grid(model_scale)
        array, meta, _ = open_level_array(self.spec.path, series=self.spec.series)
        self.input = ModelGridFrame(array, meta.dims, self.spec.t, self.spec.input_index, self.spec.input_stats, self.grid)
        self.targets = [ModelGridFrame(array, meta.dims, s.t, s.target_index, s.target_stats, self.grid) for s in self.specs]

    def read_stack(self, region: Sequence[slice]) -> tuple[np.ndarray, np.ndarray]:
        """``(input (z, y, x), targets (structures, z, y, x))``, each z-scored with its frame statistics."""
        return self.input.read(region), np.stack([target.read(region) for target in self.targets])

    def read(self, region: Sequence[slice]) -> tuple[np.ndarray, np.ndarray]:
        """``(input, target)`` of the first spec, both ``(z, y, x)``."""
        x, ys = self.read_stack(region)
        return x, ys[0]

    def whole(self) -> tuple[np.ndarray, np.ndarray]:
        return self.read(tuple(slice(0, n) for n in self.grid.shape))

    def whole_stack(self) -> tuple[np.ndarray, np.ndarray]:
        return self.read_stack(tuple(slice(0, n) for n in self.grid.shape))


class PairCache:
    """LRU cache of whole preprocessed pairs, bounded in bytes (per process)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.peak_bytes = 0
        self._items: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.max_bytes

    def put(self, key: str, value: tuple[np.ndarray, np.ndarray]) -> None:
        size = value[0].nbytes + value[1].nbytes
        while self._items and self.nbytes + size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old[0].nbytes + old[1].nbytes
        if size <= self.max_bytes:
            self._items[key] = value
            self.nbytes += size
            self.peak_bytes = max(self.peak_bytes, self.nbytes)


class PatchDataset(torch.utils.data.Dataset):
    """Sample ``i``: a random patch of a random training pair, both drawn from ``(seed, i)``.

    ``specs`` holds one :class:`PairSpec` per pair, or, to feed several structures' models from one
    read of the input, one tuple per pair of its specs for each structure (same image, same order
    of structures everywhere). A sample is ``(input (1, z, y, x), targets (structures, z, y, x))``.
    The draw depends only on the pairs, the seed and ``i``, so a structure trained alone or beside
    others sees the same patches. ``augmentation`` (:mod:`chunked_fnet.train.augment`) turns or flips
    each sample's input and targets alike, by a symmetry drawn from the same ``(seed, i)``.
    """

    def __init__(
        self,
        specs: Sequence[PairSpec] | Sequence[Sequence[PairSpec]],
        model_scale: Sequence[float],
        patch_shape: Sequence[int],
        seed: int,
        length: int,
        cache_bytes: int = 2 * 2**30,
        augmentation: Augmentation = "none",
    ) -> None:
        self.sources = [(s,) if isinstance(s, PairSpec) else tuple(s) for s in specs]
        self.specs = [source[0] for source in self.sources]
        if len({len(source) for source in self.sources}) > 1:
            raise ValueError("every pair needs a spec for each structure")
        self.model_scale = tuple(model_scale)
        self.patch_shape = tuple(int(p) for p in patch_shape)
        self.seed = int(seed)
        self.length = int(length)
        self.cache_bytes = int(cache_bytes)
        self.augmentation = augmentation
        for spec in self.specs:
            shape = spec.grid(self.model_scale).shape
            if any(n < p for n, p in zip(shape, self.patch_shape, strict=True)):
                raise InputError(
                    f"{spec.name}: on the model grid (voxel {self.model_scale} µm) the image is {shape} voxels (z, y, x), "
                    f"smaller than the training patch {self.patch_shape}; use a smaller patch_shape"
                )
        self._readers: dict[str, PairReader] = {}
        self.cache = PairCache(cache_bytes)

    def __len__(self) -> int:
        return self.length

    def draw(self, index: int) -> tuple[int, tuple[int, int, int], PlaneSymmetry]:
        """Which pair, which patch corner and which symmetry sample ``index`` uses (the symmetry drawn last, so
        pair and corner are the same with or without augmentation)."""
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.integers(len(self.specs)))
        shape = self.specs[k].grid(self.model_scale).shape
        corner = tuple(int(rng.integers(0, n - p + 1)) for n, p in zip(shape, self.patch_shape, strict=True))
        return k, corner, draw_symmetry(rng, self.augmentation)  # type: ignore[return-value]

    def _reader(self, k: int) -> PairReader:
        name = self.specs[k].name
        reader = self._readers.get(name)
        if reader is None:
            reader = self._readers[name] = PairReader(self.sources[k], self.model_scale)
        return reader

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, corner, symmetry = self.draw(index)
        name = self.specs[k].name
        region = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_shape, strict=True))
        reader = self._reader(k)
        whole_bytes = (1 + len(self.sources[k])) * 4 * math.prod(reader.grid.shape)
        cached = self.cache.get(name)
        if cached is None and self.cache.fits(whole_bytes):
            cached = reader.whole_stack()
            self.cache.put(name, cached)
        if cached is not None:
            x, ys = cached[0][region], cached[1][(slice(None), *region)]
            x, ys = np.ascontiguousarray(x), np.ascontiguousarray(ys)
        else:
            x, ys = reader.read_stack(region)
        x, ys = symmetry.apply(x), symmetry.apply(ys)
        return torch.from_numpy(x[None]), torch.from_numpy(ys)
