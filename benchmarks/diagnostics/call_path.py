"""How far a newcomer walks: the chunked_fnet calls between ``predict()`` and a written chunk.

Runs a small prediction on an in-process (threaded) dask cluster so that one process sees the client
and the tasks, and prints the chain of package functions on the stack (a) where the client hands the
first tasks to dask, (b) where a block task reads the input store, (c) where a chunk task writes.

    python benchmarks/diagnostics/call_path.py

A developer diagnostic, not a measurement: it stores no result and, to print the chains, patches three of the
package's functions (which is why it is not a suite: suites call the public API only).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import traceback
from pathlib import Path

from distributed import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from factories import tiny_checkpoint  # noqa: E402

import chunked_fnet.predict.job as job_module  # noqa: E402
from chunked_fnet.preprocess.frame import ModelGridFrame  # noqa: E402
from chunked_fnet.predict import predict  # noqa: E402
from chunked_fnet.synth.dataset import SynthConfig, generate  # noqa: E402

PACKAGE = str(Path(job_module.__file__).resolve().parents[1])


def package_chain() -> list[str]:
    """The package's frames on the current stack, outermost first, as ``file:function``."""
    return [f"{Path(f.filename).relative_to(PACKAGE)}:{f.name}" for f in traceback.extract_stack()[:-1] if f.filename.startswith(PACKAGE)]


def main() -> None:
    chains: dict[str, list[str]] = {}
    real_write, real_compute, real_read = job_module.write_region, Client.compute, ModelGridFrame._read_source

    def write_region(*args, **kwargs):
        chains.setdefault("chunk task -> chunk written", package_chain())
        return real_write(*args, **kwargs)

    def compute(self, *args, **kwargs):
        chains.setdefault("client: predict() -> tasks handed to dask", package_chain())
        return real_compute(self, *args, **kwargs)

    def read_source(self, *args, **kwargs):
        chains.setdefault("block task -> input store read", package_chain())
        return real_read(self, *args, **kwargs)

    job_module.write_region, Client.compute, ModelGridFrame._read_source = write_region, compute, read_source
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(SynthConfig(size_t=1, size_z=16, size_y=64, size_x=64, voxel_size=(0.4, 0.4, 0.4)), root / "in.zarr", progress=False)
        models = [tiny_checkpoint(root / "dna.ckpt")]
        with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
            predict(root / "in.zarr", models, root / "out.zarr", client=client, progress=False)
    assert threading.current_thread() is threading.main_thread()
    total, files = 0, set()
    for what, chain in chains.items():
        print(f"{what}: {len(chain)} calls")
        for frame in chain:
            print("   ", frame)
        total += len(chain)
        files |= {c.split(":")[0] for c in chain}
    print(f"in all: {total} calls in {len(files)} files: {sorted(files)}")


if __name__ == "__main__":
    main()
