"""Several structures in one training run (``train_many``) against one run each: wall time and patches read.

    python benchmarks/run.py training multi --iterations 40
    python benchmarks/run.py training multi --tiny --no-save     # smoke test

dna, nuclear_envelope and membrane (the CPU-example model: depth 3, width 16; batch 8, 16x64x64; 60
iterations unless ``--iterations``; 6 synthetic fields of view of 32x256x256, 5 of them training) trained in
one ``train_many`` run against three separate runs of the same settings, one after the other. The loader is
in-process (``workers: 0``) so that the count of patches read sees every read: it wraps the dataset's
``__getitem__`` (``torch.utils.data.Dataset``'s protocol; the trainer reports no count of its own). One run
reads each patch once for all structures, so it reads a third of what three runs read; whether the wall time
follows depends on how much of it the steps take. The runs are trained in a fresh folder under the work folder
and removed afterwards (the synthetic data is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness import machine as M, results as R, workloads as W
from suites.training import common as C

SECTION = "Several structures in one training run (issue 17)"
COLUMNS = ["date", "settings", "structures", "one run: wall, patches read", "separate runs: wall, patches read", "one run / separate (wall)",
           "command", "machine"]
STRUCTURES = ("dna", "nuclear_envelope", "membrane")
FOVS, SHAPE = 6, (32, 256, 256)
SETTINGS = {"model": {"depth": 3, "width": 16}, "patch_shape": (16, 64, 64), "batch_size": 8, "n_train": 5}
TINY = {**W.TINY_TRAINING, "n_train": 2}


@contextlib.contextmanager
def counted_reads() -> Iterator[dict[str, int]]:
    """``{"n": patches read}`` while the block runs: every ``PatchDataset.__getitem__`` in this process."""
    from chunked_fnet.train.data import PatchDataset

    reads = {"n": 0}
    original = PatchDataset.__getitem__

    def counted(self, i):  # noqa: ANN001, ANN202
        reads["n"] += 1
        return original(self, i)

    PatchDataset.__getitem__ = counted
    try:
        yield reads
    finally:
        PatchDataset.__getitem__ = original


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, help="iterations of every run (default 60; --tiny: 3)")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="auto", help="training device (TrainConfig's default: auto)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    C.add_args(parser)
    args = parser.parse_args(argv)

    from chunked_fnet.train.trainer import TrainConfig, train_many

    iterations = args.iterations or (3 if args.tiny else 60)
    shape = C.TINY_SHAPE if args.tiny else SHAPE
    data = W.paired_data(C.workdir(args) / "multi", fovs=3 if args.tiny else FOVS, shape=shape, structures=STRUCTURES)
    base = dict(
        manifest=str(data / "manifest.yaml"), **(TINY if args.tiny else SETTINGS), iterations=iterations, validation_patches=0,
        checkpoint_every=10**6, workers=0, precision=args.precision, device=args.device, threads=args.threads,
    )
    walls, counts = {}, {}
    runs = Path(tempfile.mkdtemp(prefix="runs_", dir=data))  # fresh each call (a run folder is never overwritten); removed after
    for mode in ("together", "separate"):
        out = runs / mode
        configs = [TrainConfig(**base, output=str(out / s), structure=s, target_channel=s) for s in STRUCTURES]
        with counted_reads() as reads:
            start = time.perf_counter()
            if mode == "together":
                train_many(configs, progress=False)
            else:
                for c in configs:
                    train_many([c], progress=False)
            walls[mode], counts[mode] = time.perf_counter() - start, reads["n"]
        print(f"{mode}: {walls[mode]:.1f} s, {counts[mode]} patches read", flush=True)
    shutil.rmtree(runs)

    model = "tiny U-Net (depth 2, width 4, smoke test), batch 2, 16x32x32" if args.tiny else "CPU-example model, batch 8, 16x64x64"
    settings = f"{model}, {iterations} it, {args.precision}, in-process loader"
    print(R.save_row(C.SUITE, SECTION, COLUMNS, [
        R.today(), settings, ", ".join(STRUCTURES), f"{walls['together']:.0f} s, {counts['together']}",
        f"{walls['separate']:.0f} s, {counts['separate']}", f"**{walls['together'] / walls['separate']:.2f}**", R.command_line(), M.machine(),
    ], figures={"together_wall_s": walls["together"], "separate_wall_s": walls["separate"], "together_patches_read": counts["together"],
                "separate_patches_read": counts["separate"], "together_over_separate_wall": walls["together"] / walls["separate"]},
        params={"structures": list(STRUCTURES), "settings": TINY if args.tiny else SETTINGS, "iterations": iterations,
                "precision": args.precision, "device": args.device, "threads": args.threads, "tiny": args.tiny,
                "images": {"fovs": 3 if args.tiny else FOVS, "shape": list(shape)}},
        save_it=not args.no_save))


if __name__ == "__main__":
    main()
