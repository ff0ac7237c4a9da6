"""Sharded against unsharded output (zarr v3, NGFF 0.5): files written, write and read throughput, on local
disk and on an S3 server (moto on 127.0.0.1), side by side in one run.

    python benchmarks/run.py storage shards [--shape 2 2 64 512 512] [--chunks 32 256 256] [--shards 32 512 512 64 512 512]
                                [--repeats 3] [--no-append]

The image is written the way ``predict`` writes it: one task per stored object (a chunk unsharded, a whole
shard sharded; :func:`chunked_fnet.io.writer.write_grid`) through ``write_region``, two task threads
(this machine's worker threads). Values are a smooth random field (predictions are smooth, so zstd
compresses them like real outputs, unlike white noise). Read is measured two ways: the whole image
(``open_image(...).values``, dask), and a viewer's access: single chunks at random places
(``zarr.Array.__getitem__`` of one chunk; sharded, that is a read of the shard's index and a ranged read).
Repeats are interleaved (each layout on disk, then on S3, then the next layout) after one untimed round.
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, timing as T

SUITE = "storage"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)
from suites.storage.object_store import BUCKET, moto_server

SECTION = "Sharded output: files and throughput, sharded vs unsharded, local disk and S3 (moto on 127.0.0.1)"
COLUMNS = ["date", "image (t c z y x), chunks", "layout", "objects", "disk write MB/s", "S3 write MB/s", "disk read MB/s",
           "S3 read MB/s", "disk chunk read ms", "S3 chunk read ms", "load", "command", "machine"]
THREADS = 2
CHUNK_READS = 32


def smooth_field(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 field smooth over ~8 voxels in y and x, ~4 in z (trilinear upsampling of coarse noise)."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    coarse_shape = (*shape[:2], *(max(2, n // f) for n, f in zip(shape[2:], (4, 8, 8), strict=True)))
    coarse = rng.standard_normal(coarse_shape, dtype=np.float32)
    factors = (1, 1, *(n / c for n, c in zip(shape[2:], coarse_shape[2:], strict=True)))
    return zoom(coarse, factors, order=1).astype(np.float32)[tuple(slice(0, n) for n in shape)]


def write(store: str, data: np.ndarray, chunks: tuple[int, int, int], shards: tuple[int, int, int] | None) -> None:
    """Create the image and write it one stored object per task, as the prediction's write tasks do."""
    from chunked_fnet import create_image
    from chunked_fnet.io.writer import write_grid, write_region

    group = create_image(store, shape=data.shape, chunks=(1, 1, *chunks), shards=(1, 1, *shards) if shards else None,
                         dtype="float32", scale={"z": 0.29, "y": 0.108, "x": 0.108}, channel_names=["a", "b"][: data.shape[1]],
                         overwrite=True)
    grid = write_grid(group["0"])
    regions = [tuple(slice(s, min(s + g, n)) for s, g, n in zip(starts, grid, data.shape, strict=True))
               for starts in itertools.product(*(range(0, n, g) for n, g in zip(data.shape, grid, strict=True)))]
    # t and c are one per task here too: a prediction's task writes every structure of one region, which is the
    # same objects as these c-by-c regions
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda r: write_region(group, r, data[r]), regions))


def read_all(store: str) -> np.ndarray:
    from chunked_fnet import open_image

    return open_image(store).values


def read_chunks(store: str, chunks: tuple[int, int, int], shape: tuple[int, ...], seed: int) -> float:
    """Median seconds to read one chunk at a random place, opened as a viewer would (the array once)."""
    import zarr

    from chunked_fnet.io.reader import open_zarr_group

    array = open_zarr_group(store, None)["0"]
    assert isinstance(array, zarr.Array)
    rng = np.random.default_rng(seed)
    grid = [math.ceil(n / c) for n, c in zip(shape[2:], chunks, strict=True)]
    seconds = []
    for _ in range(CHUNK_READS):
        t, c = int(rng.integers(shape[0])), int(rng.integers(shape[1]))
        index = [int(rng.integers(g)) for g in grid]
        region = (t, c, *(slice(i * k, (i + 1) * k) for i, k in zip(index, chunks, strict=True)))
        start = time.perf_counter()
        array[region]
        seconds.append(time.perf_counter() - start)
    return T.median(seconds)


def count_objects(store: str, fs) -> int:  # noqa: ANN001
    """Stored objects under the image's level 0 (chunk files, or shard files, and the array's zarr.json)."""
    if store.startswith("s3://"):
        return len(fs.find(store.removeprefix("s3://") + "/0"))
    return sum(1 for p in (Path(store) / "0").rglob("*") if p.is_file())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs=5, type=int, default=[2, 2, 64, 512, 512], metavar=("T", "C", "Z", "Y", "X"))
    parser.add_argument("--chunks", nargs=3, type=int, default=[32, 256, 256], metavar=("Z", "Y", "X"))
    parser.add_argument("--shards", nargs="+", type=int, default=[32, 512, 512, 64, 512, 512],
                        help="shard shapes to compare, z y x each (the unsharded layout is always measured)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-save", "--no-append", dest="no_save", action="store_true", help="print only; store no result")
    args = parser.parse_args(argv)
    if len(args.shards) % 3:
        parser.error("--shards takes z y x triples")
    import s3fs

    shape, chunks = tuple(args.shape), tuple(args.chunks)
    layouts: dict[str, tuple[int, int, int] | None] = {"unsharded": None}
    for i in range(0, len(args.shards), 3):
        shard = tuple(args.shards[i : i + 3])
        layouts[f"shards {'x'.join(map(str, shard))}"] = shard  # type: ignore[assignment]
    data = smooth_field(shape)
    megabytes = data.nbytes / 1e6
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    objects: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory(prefix="chunked_fnet_shards_") as tmp, moto_server():
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        stores = {(where, name): (str(Path(tmp) / f"{i}.zarr") if where == "disk" else f"s3://{BUCKET}/{i}.zarr")
                  for i, (name, where) in enumerate(itertools.product(layouts, ("disk", "S3")))}
        for (where, name), store in stores.items():  # untimed: imports, connections, the bucket's first objects
            write(store, data, chunks, layouts[name])
            np.testing.assert_array_equal(read_all(store), data)
            objects[(where, name)] = count_objects(store, fs)
            results[(where, name)] = {"write": [], "read": [], "chunk": []}
        for repeat in range(args.repeats):
            for (where, name), store in stores.items():
                r = results[(where, name)]
                r["write"].append(megabytes / timed(lambda store=store, name=name: write(store, data, chunks, layouts[name])))
                r["read"].append(megabytes / timed(lambda store=store: read_all(store)))
                r["chunk"].append(1e3 * read_chunks(store, chunks, shape, seed=repeat))
            print(f"repeat {repeat + 1} done", flush=True)
    print(f"image {shape} float32 ({megabytes:.0f} MB), chunks {chunks}, {args.repeats} repeats (median, spread), {THREADS} write threads:")
    for name in layouts:
        d, s = results[("disk", name)], results[("S3", name)]
        line = (f"  {name:18s} objects {objects[('disk', name)]:5d} | write MB/s disk {T.median(d['write']):6.0f} S3 {T.median(s['write']):6.0f}"
                f" | read MB/s disk {T.median(d['read']):6.0f} S3 {T.median(s['read']):6.0f}"
                f" | one chunk ms disk {T.median(d['chunk']):6.1f} S3 {T.median(s['chunk']):6.1f}")
        print(line)
        if not args.no_save:
            R.save_row(SUITE, SECTION, COLUMNS, [
                R.today(), f"{'x'.join(map(str, shape))} float32 ({megabytes:.0f} MB), chunks {'x'.join(map(str, chunks))}", name,
                objects[("disk", name)],
                *(f"{T.median(x[k]):.0f} ({T.fmt_spread(x[k])})" for k, x in (("write", d), ("write", s), ("read", d), ("read", s))),
                f"{T.median(d['chunk']):.1f}", f"{T.median(s['chunk']):.1f}", M.load_note(), R.command_line(), M.machine(),
            ])


if __name__ == "__main__":
    main()
