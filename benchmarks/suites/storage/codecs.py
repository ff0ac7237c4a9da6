"""The output's codec: stored size and the CPU to write and to read a prediction, per ``compression`` choice.

    python benchmarks/run.py storage codecs [--shape 64 512 512] [--chunks 32 256 256] [--repeats 3] [--no-save]

Each codec writes the same frames through the package's own path (``chunked_fnet.create_image(compression=...)``,
then ``chunked_fnet.io.writer.write_region`` per chunk, as the prediction's chunk tasks write) and reads them back
whole (``zarr``); CPU seconds are the process's (zarr runs its codecs in its own threads), per MB of float32 frame,
interleaved codec by codec after one untimed round; the stored bytes are the files on disk. Three frames, because
what compresses is the low mantissa bits: a smooth random field (a continuous prediction), the same field plus
1e-3 noise, and a quantised one (a z-scored uint16 camera image, ``x * gain``: few distinct values, zstd's best case).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, timing as T
from suites.storage.shards import smooth_field

SUITE = "storage"
SECTION = "The output's codec: stored size, write and read CPU (issue 29)"
COLUMNS = ["date", "frame (z y x), chunks", "values", "compression", "stored / raw", "write CPU-ms per MB", "read CPU-ms per MB",
           "write vs zstd", "read vs zstd", "command", "machine"]
CODECS = ("lz4", "zstd", "none")


def frames(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The three kinds of float32 values a prediction's chunks hold (see the module's docstring)."""
    smooth = smooth_field((1, 1, *shape))[0, 0]
    smooth = (smooth - smooth.mean()) / smooth.std()
    noisy = smooth + 1e-3 * np.random.default_rng(1).random(shape, dtype=np.float32)
    camera = np.round(500 + 100 * smooth).astype(np.uint16).astype(np.float32)
    return {"smooth (a continuous prediction)": smooth.astype(np.float32), "smooth + 1e-3 noise": noisy.astype(np.float32),
            "quantised (z-scored uint16)": ((camera - camera.mean()) / camera.std()).astype(np.float32)}


def stored_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path / "0").rglob("*") if p.is_file() and not p.name.startswith((".z", "zarr.json")))


def write_and_read(folder: Path, values: np.ndarray, chunks: tuple[int, int, int], compression: str) -> tuple[float, float, int]:
    """CPU seconds to write ``values`` chunk by chunk into a new image with ``compression``, to read it back, and its bytes."""
    import zarr

    from chunked_fnet import create_image
    from chunked_fnet.io.writer import finish_pending_writes, write_region

    path = Path(tempfile.mkdtemp(dir=folder)) / "out.zarr"
    group = create_image(path, shape=(1, 1, *values.shape), chunks=(1, 1, *chunks), dtype="float32", channel_names=["dna"],
                         compression=compression)
    start = T.cpu_seconds()
    for z in range(0, values.shape[0], chunks[0]):
        for y in range(0, values.shape[1], chunks[1]):
            for x in range(0, values.shape[2], chunks[2]):
                region = (slice(z, z + chunks[0]), slice(y, y + chunks[1]), slice(x, x + chunks[2]))
                write_region(group, (slice(0, 1), slice(0, 1), *region), values[None, None, *region])
    finish_pending_writes()
    written = T.cpu_seconds() - start
    start = T.cpu_seconds()
    back = zarr.open_group(path, mode="r")["0"][0, 0]
    read = T.cpu_seconds() - start
    if not np.array_equal(back, values):
        raise SystemExit(f"{compression}: the values read back differ from those written")
    return written, read, stored_bytes(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(64, 512, 512))
    parser.add_argument("--chunks", nargs=3, type=int, default=(32, 256, 256))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    shape, chunks = tuple(args.shape), tuple(args.chunks)
    mb = 4 * np.prod(shape) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, values in frames(shape).items():
            methods = {c: (lambda c=c: write_and_read(Path(tmp), values, chunks, c)) for c in CODECS}
            results: dict[str, list[tuple[float, float, int]]] = {c: [] for c in CODECS}
            for r in range(1 + args.repeats):
                for c, fn in methods.items():
                    got = fn()
                    if r:
                        results[c].append(got)
            med = {c: (T.median([w for w, _, _ in v]), T.median([rd for _, rd, _ in v]), v[0][2]) for c, v in results.items()}
            print(f"\n{kind}: {mb:.0f} MB a frame")
            for c in CODECS:
                w, rd, size = med[c]
                row = [R.today(), f"{'x'.join(map(str, shape))}, {'x'.join(map(str, chunks))}", kind, c, f"{size / (mb * 1e6):.3f}",
                       f"{1e3 * w / mb:.2f}", f"{1e3 * rd / mb:.2f}", f"{med['zstd'][0] / w:.2f}x", f"{med['zstd'][1] / rd:.2f}x",
                       R.command_line(), M.machine()]
                print(f"  {c:5s} stored/raw {row[4]}  write {row[5]} CPU-ms/MB  read {row[6]} CPU-ms/MB  "
                      f"(vs zstd: write {row[7]}, read {row[8]})")
                rows.append((row, {"stored_over_raw": size / (mb * 1e6), "write_cpu_ms_per_mb": 1e3 * w / mb,
                                   "read_cpu_ms_per_mb": 1e3 * rd / mb}, {"values": kind, "compression": c}))
    print(f"\n{M.machine()}; {M.load_note()}")
    if args.no_save:
        return
    for row, figures, params in rows:
        R.save_row(SUITE, SECTION, COLUMNS, row, figures=figures,
                   params={**params, "shape": list(shape), "chunks": list(chunks), "repeats": args.repeats})
