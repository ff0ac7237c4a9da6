"""Training in bf16 against fp32: loss curves and test scores of the same model trained both ways.

    python benchmarks/run.py training bf16-curve                                   # CPU example, 450 it, seed 0
    python benchmarks/run.py training bf16-curve --iterations 600 --seeds 0 1 2 --last 3
    python benchmarks/run.py training bf16-curve --tiny --no-save                  # smoke test

The CPU example's settings (configs/train_cpu_example.yaml: depth 3, width 16, batch 8, 16x64x64, 450
iterations) trained in fp32 and in bf16 from the same seed on the same data (12 synthetic fields of view of
32x256x256, DNA), for each of ``--seeds``: a single pair differs by as much as two fp32 runs of different
seeds do (at a few hundred iterations the last validation point still swings), so the comparison is made
over seeds, beside fp32's own spread between seeds. Reported: the final validation loss of each precision
(mean over seeds) and their ratio, and the test split's Pearson r and normalised error of every run, scored
by ``evaluate_run`` in fp32 whatever the model trained in (``precision: auto`` would be bf16 on a CPU with
native bf16) with the run policy's window. Both curves of the first seed are drawn in
``benchmarks/results/train_bf16_curve.png`` (with ``--no-save``: in the work folder).

``--last K`` makes the final validation loss the mean of the last K validations (with a constant learning
rate the last iterate swings). A run already in ``--workdir`` is resumed up to ``--iterations`` (resume is
exact), so a longer curve continues the shorter one instead of training it again; ``training heldout``
scores these runs' final models again on more patches.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import yaml

from harness import machine as M, results as R, workloads as W
from suites.training import common as C

SECTION = "Training in bf16 against fp32: loss curves (issue 17)"
COLUMNS = [
    "date", "settings", "fp32 final val loss", "bf16 final val loss", "bf16 / fp32", "test r fp32, bf16", "test norm. error fp32, bf16",
    "wall fp32, bf16", "command", "machine",
]
PRECISIONS = ("fp32", "bf16")
CONFIG = R.ROOT / "configs" / "train_cpu_example.yaml"
PNG = "train_bf16_curve.png"  # under the results folder
FOVS, SHAPE = 12, (32, 256, 256)
#: --tiny: the config's settings overridden to smoke-test sizes (4 iterations unless --iterations, 2 validations).
TINY = {**W.TINY_TRAINING, "n_train": 2, "validate_every": 2, "validation_patches": 4, "iterations": 4}


def train_pair(args: argparse.Namespace, data: Path, seed: int, precision: str) -> tuple[Path, float]:
    """Train (or resume) one run of the curve; returns its folder and the wall seconds of this call."""
    from chunked_fnet.config import load_yaml_config
    from chunked_fnet.train.trainer import TrainConfig, train

    run = C.curve_run(C.workdir(args), precision, seed, args.validation_patches)
    overrides = {"manifest": str(data / "manifest.yaml"), "output": str(run), "structure": "dna", "precision": precision, "seed": seed}
    overrides |= TINY if args.tiny else {}
    overrides |= {"iterations": args.iterations} if args.iterations else {}
    overrides |= {"validation_patches": args.validation_patches} if args.validation_patches else {}
    overrides |= {"threads": args.threads} if args.threads else {}
    overrides |= {"device": args.device} if args.device else {}
    config = load_yaml_config(TrainConfig, CONFIG, overrides)
    start = time.perf_counter()
    train(config, resume=(run / "config.yaml").exists(), progress=False)
    return run, time.perf_counter() - start


def score_test_split(run: Path) -> dict[str, float]:
    """The test split's metrics (mean and std over its images) of ``run``'s final model, predicted in fp32
    with the run policy's window."""
    from chunked_fnet.evaluate.report import evaluate_run, summarize
    from chunked_fnet.predict import PredictOptions

    return summarize(evaluate_run(run, options=PredictOptions(precision="fp32"), progress=False))[("dna", "test")]


def plot_curves(runs: dict[str, Path], png: Path, title: str) -> None:
    """Training loss (running mean) and validation loss of each precision's run against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for (precision, run), color in zip(runs.items(), ("C0", "C3"), strict=True):
        with (run / "losses.csv").open() as f:
            rows = list(csv.DictReader(f))
        it = [int(r["iteration"]) for r in rows]
        tr = [float(r["train_loss"]) for r in rows]
        w = max(1, len(tr) // 30)
        smooth = [statistics.fmean(tr[max(0, i - w + 1) : i + 1]) for i in range(len(tr))]
        ax.plot(it, smooth, color=color, lw=1.2, label=f"{precision} train (mean of {w})")
        val = C.val_curve(run)
        if val:
            ax.plot(*zip(*val), "o--", color=color, ms=3, lw=0.8, label=f"{precision} validation")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("MSE (z-scored units)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, help="iterations of every run (default: the config's 450); a shorter run is resumed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="train both precisions from each of these seeds")
    parser.add_argument("--validation-patches", type=int, help="held-out patches per validation (default: the config's 16)")
    parser.add_argument("--last", type=int, default=1, help="the final validation loss is the mean of the last this many validations")
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's 2)")
    parser.add_argument("--device", help="training device (default: the config's)")
    C.add_args(parser)
    args = parser.parse_args(argv)

    data = W.paired_data(C.workdir(args) / "curve", fovs=4 if args.tiny else FOVS, shape=C.TINY_SHAPE if args.tiny else SHAPE)
    runs: dict[tuple[str, int], Path] = {}
    walls: dict[tuple[str, int], float] = {}
    scores: dict[tuple[str, int], dict[str, float]] = {}
    for seed in args.seeds:
        for precision in PRECISIONS:
            key = (precision, seed)
            runs[key], walls[key] = train_pair(args, data, seed, precision)
            scores[key] = score_test_split(runs[key])
            print(f"seed {seed} {precision}: {walls[key] / 60:.1f} min, final val {C.final_val(runs[key], args.last):.4f}, "
                  f"test r {scores[key]['pearson_r']:.3f} ({M.load_note()})", flush=True)

    val = {k: C.final_val(r, args.last) for k, r in runs.items()}
    mean = {p: statistics.fmean(val[(p, s)] for s in args.seeds) for p in PRECISIONS}
    ratios = [val[("bf16", s)] / val[("fp32", s)] for s in args.seeds]
    fp32_spread = max(val[("fp32", s)] for s in args.seeds) / min(val[("fp32", s)] for s in args.seeds)
    first = args.seeds[0]
    config = yaml.safe_load((runs[("fp32", first)] / "config.yaml").read_text())
    what = "tiny smoke test" if args.tiny else "CPU example"
    png = (C.workdir(args) if args.no_save else R.RESULTS) / PNG
    plot_curves({p: runs[(p, first)] for p in PRECISIONS}, png, f"DNA, {what} settings: bf16 autocast against fp32")
    print(png)

    settings = (f"{what} ({C.model_label(config)}, {config['iterations']} it, {config['validation_patches']} validation patches), "
                f"synthetic DNA, seeds {', '.join(map(str, args.seeds))}"
                + (f"; final val loss = mean of the last {args.last} validations" if args.last > 1 else ""))
    if len(args.seeds) > 1:
        settings += (f" (val loss columns: mean over seeds); per seed bf16/fp32 {', '.join(f'{r:.3f}' for r in ratios)}; "
                     f"fp32 between seeds max/min {fp32_spread:.3f}")

    def per_seed(precision: str, metric: str) -> str:
        return ", ".join(f"{scores[(precision, s)][metric]:.3f}" for s in args.seeds)

    figures = {f"{p}_mean_final_val_loss": mean[p] for p in PRECISIONS}
    figures |= {"bf16_over_fp32": mean["bf16"] / mean["fp32"], "fp32_between_seeds_max_over_min": fp32_spread}
    for (p, s), run in runs.items():
        figures |= {f"{p}_seed{s}_final_val_loss": val[(p, s)], f"{p}_seed{s}_wall_s": walls[(p, s)]}
        figures |= {f"{p}_seed{s}_test_{k}": v for k, v in scores[(p, s)].items()}
        figures |= {f"{p}_seed{s}_val_loss_it{it}": v for it, v in C.val_curve(run)}
    print(R.save_row(C.SUITE, SECTION, COLUMNS, [
        R.today(), settings, f"{mean['fp32']:.4g}", f"{mean['bf16']:.4g}", f"**{mean['bf16'] / mean['fp32']:.3f}**",
        f"{per_seed('fp32', 'pearson_r')}; {per_seed('bf16', 'pearson_r')}",
        f"{per_seed('fp32', 'normalized_error')}; {per_seed('bf16', 'normalized_error')}",
        f"{sum(w for (p, _), w in walls.items() if p == 'fp32') / 60:.1f} min, {sum(w for (p, _), w in walls.items() if p == 'bf16') / 60:.1f} min",
        R.command_line(), M.machine() + f" ({M.load_note()})",
    ], figures=figures, params={
        "config": str(CONFIG.relative_to(R.ROOT)), "iterations": config["iterations"], "validation_patches": config["validation_patches"],
        "seeds": args.seeds, "last": args.last, "threads": args.threads, "device": args.device, "tiny": args.tiny,
        "images": {"fovs": 4 if args.tiny else FOVS, "shape": list(C.TINY_SHAPE if args.tiny else SHAPE)},
        "figure": str(png.relative_to(R.ROOT)) if png.is_relative_to(R.ROOT) else str(png),
    }, save_it=not args.no_save))


if __name__ == "__main__":
    main()
