"""Read and write throughput of the package's OME-Zarr I/O on an S3 server against local disk, side by side.

    python benchmarks/run.py storage object-store [--shape 1 1 64 512 512] [--chunks 1 1 32 256 256] [--repeats 3] [--no-append]

Writes a float32 image with ``chunked_fnet.create_image`` + ``write_region`` and reads it back with
``chunked_fnet.open_image(...).values``, once into a temporary folder and once into ``s3://`` on a
moto S3 server started here on 127.0.0.1 (``pip install 'moto[server]'``; the same server the tests
use), after one untimed round, repetitions interleaved (disk, S3, disk, S3, ...). Prints MB/s (10^6 bytes of voxels per second,
median and spread) and adds a row to BENCHMARKS.md. moto keeps objects in its own process's memory
and speaks HTTP on loopback: the S3 figures are the cost of the protocol path (request signing, HTTP,
one object per zarr chunk), not of a real object store's disks or network, which are usually slower.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, timing as T

SUITE = "storage"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

SECTION = "Object storage: OME-Zarr write and read, S3 (moto on 127.0.0.1) vs local disk"
COLUMNS = ["date", "image (t c z y x), chunks", "disk write MB/s", "S3 write MB/s", "disk read MB/s", "S3 read MB/s", "S3/disk write", "S3/disk read", "load", "command", "machine"]
BUCKET = "chunked-fnet-bench"


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 at a free port, reached through the AWS environment variables; its endpoint."""
    executable = Path(sys.executable).with_name("moto_server")
    exe = str(executable) if executable.exists() else shutil.which("moto_server")
    if exe is None:
        raise SystemExit("moto_server not found: pip install 'moto[server]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.2)
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8), "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def write(store: str, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    from chunked_fnet import create_image, write_region

    group = create_image(store, shape=data.shape, chunks=chunks, dtype="float32", scale={"z": 0.29, "y": 0.108, "x": 0.108},
                         channel_names=["brightfield"], overwrite=True)
    write_region(group, tuple(slice(0, n) for n in data.shape), data)


def read(store: str) -> np.ndarray:
    from chunked_fnet import open_image

    return open_image(store).values


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def shown(rates: list[float]) -> str:
    """Median MB/s and the spread of the repeats."""
    return f"{T.median(rates):.0f} ({T.fmt_spread(rates)})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs=5, type=int, default=[1, 1, 64, 512, 512], metavar=("T", "C", "Z", "Y", "X"))
    parser.add_argument("--chunks", nargs=5, type=int, default=[1, 1, 32, 256, 256], metavar=("T", "C", "Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-save", "--no-append", dest="no_save", action="store_true", help="print only; store no result")
    args = parser.parse_args(argv)
    import s3fs

    data = np.random.default_rng(0).standard_normal(args.shape, dtype=np.float32)
    megabytes = data.nbytes / 1e6
    chunks = tuple(args.chunks)
    times: dict[str, list[float]] = {k: [] for k in ("disk write", "S3 write", "disk read", "S3 read")}
    with tempfile.TemporaryDirectory(prefix="chunked_fnet_objstore_") as tmp, moto_server():
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        stores = {"disk": str(Path(tmp) / "image.zarr"), "S3": f"s3://{BUCKET}/image.zarr"}
        for store in stores.values():  # untimed: imports, the first connection and the bucket's first objects
            write(store, data, chunks)
            read(store)
        for repeat in range(args.repeats):
            for where, store in stores.items():
                times[f"{where} write"].append(timed(lambda store=store: write(store, data, chunks)))
                back: list[np.ndarray] = []
                times[f"{where} read"].append(timed(lambda store=store: back.append(read(store))))
                np.testing.assert_array_equal(back[0], data)  # checked, not timed
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {megabytes / v[-1]:.0f} MB/s" for k, v in times.items()), flush=True)
    rates = {k: [megabytes / s for s in v] for k, v in times.items()}
    med = {k: T.median(v) for k, v in rates.items()}
    print(f"image {tuple(args.shape)} float32 ({megabytes:.1f} MB), chunks {chunks}, {args.repeats} repeats (median, spread):")
    for k, v in rates.items():
        print(f"  {k:10s} {shown(v)}")
    if not args.no_save:
        R.save_row(SUITE, SECTION, COLUMNS, [
            R.today(), f"{'x'.join(map(str, args.shape))} float32 ({megabytes:.0f} MB), chunks {'x'.join(map(str, chunks))}",
            shown(rates["disk write"]), shown(rates["S3 write"]), shown(rates["disk read"]), shown(rates["S3 read"]),
            f"{med['S3 write'] / med['disk write']:.2f}x", f"{med['S3 read'] / med['disk read']:.2f}x", M.load_note(), R.command_line(), M.machine(),
        ])


if __name__ == "__main__":
    main()
