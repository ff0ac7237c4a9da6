"""Peak memory of generating a large synthetic dataset (issue: 2 GB written with peak RSS well under 1 GB).

Runs ``chunked-fnet synth`` in a child process and reads the child's peak resident set size from
``getrusage``; appends a row with the machine to BENCHMARKS.md.

    python benchmarks/run.py memory synth --config configs/synth_timelapse_2gb.yaml --out /tmp/bench_synth.zarr
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


from harness import machine as M, results as R
from harness.results import ROOT

SUITE = "memory"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

TITLE = "Data generation and prediction memory"
COLUMNS = ["date", "what", "data", "size", "memory", "time", "machine"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "synth_timelapse_2gb.yaml"))
    parser.add_argument("--out", default="/tmp/bench_synth.zarr")
    parser.add_argument("--no-save", action="store_true", help="print only; store no result")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "chunked_fnet", "synth", args.out, "--config", args.config, "--no-progress"], check=True
    )
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    from chunked_fnet.io.reader import open_image

    image = open_image(args.out)
    nbytes = image.nbytes
    disk = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    cells = [
        R.today(), f"synth {Path(args.config).name}", f"shape {tuple(image.shape)} {image.dtype}",
        f"{nbytes / 1e9:.2f} GB ({disk / 1e9:.2f} GB on disk)", f"peak RSS {peak_mib:.0f} MiB", f"{seconds:.0f} s", M.machine(),
    ]
    figures = {"bytes": nbytes, "disk_bytes": disk, "peak_rss_mib": peak_mib, "seconds": seconds}
    print(R.save_row(SUITE, TITLE, COLUMNS, cells, figures=figures, save_it=not args.no_save))


if __name__ == "__main__":
    main()
