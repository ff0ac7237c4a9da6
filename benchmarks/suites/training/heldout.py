"""Training in bf16 against fp32: the bf16 curve's final models scored on the same held-out patches.

    python benchmarks/run.py training heldout --seeds 0 1 2     # after: training bf16-curve --seeds 0 1 2
    python benchmarks/run.py training heldout --tiny --no-save  # after: training bf16-curve --tiny

Each final model of ``training bf16-curve``'s runs (``--seeds``, found in ``--workdir``) is scored on
``--patches`` held-out patches (the test split's images, drawn as the runs drew their validation patches:
the first 16 are their own), in fp32 and in bf16 autocast whatever it trained in, so that both precisions'
models get the same measurement: a run's own validation loss (16 patches, in its own precision) swings by
more than the 5 % asked for.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from harness import machine as M, results as R
from suites.training import common as C

SECTION = "Training in bf16 against fp32: the final models on held-out patches (issue 17)"
COLUMNS = [
    "date", "settings", "per seed: fp32-trained, bf16-trained (fp32 evaluation)", "bf16 / fp32 per seed", "bf16 / fp32 of the means",
    "fp32 between seeds max/min", "evaluated in bf16 instead: bf16 / fp32 of the means", "command", "machine",
]
PRECISIONS = ("fp32", "bf16")


def held_out_loss(run: Path, patches: int, precision: str) -> float:
    """The MSE of ``run``'s final model over ``patches`` held-out patches of its test split (the draw of its
    validation patches, continued), computed in ``precision`` (on the CPU)."""
    import torch

    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.train.data import PatchDataset, describe_pair, load_stats
    from chunked_fnet.train.manifest import Pair

    config = yaml.safe_load((run / "config.yaml").read_text())
    stats = load_stats(run / "stats.json")
    test = [describe_pair(Pair(**p), stats) for p in json.loads((run / "split.json").read_text())["test"]]
    draw = PatchDataset([(spec,) for spec in test], tuple(config["voxel_size"]), tuple(config["patch_shape"]), config["seed"] + 1, patches, 0)
    model = load_checkpoint(run / f"{config['structure']}.ckpt")[0].eval()
    total, count = 0.0, 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(0, patches, 8):
            items = [draw[j] for j in range(i, min(patches, i + 8))]
            x, y = torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])
            total += float(torch.nn.functional.mse_loss(model(x).float(), y, reduction="sum"))
            count += y.numel()
    return total / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="the curve's seeds whose runs are scored")
    parser.add_argument("--patches", type=int, help="held-out patches each final model is scored on (default 256; --tiny: 8)")
    C.add_args(parser)
    args = parser.parse_args(argv)
    patches = args.patches or (8 if args.tiny else 256)

    runs = {(p, s): C.curve_run(C.workdir(args), p, s) for p in PRECISIONS for s in args.seeds}
    missing = [str(r) for r in runs.values() if not (r / "losses.csv").exists()]
    if missing:
        raise SystemExit(f"no curve runs at {missing}: run `python benchmarks/run.py training bf16-curve --seeds "
                         f"{' '.join(map(str, args.seeds))}{' --tiny' if args.tiny else ''}` first")
    loss = {(p, s, e): held_out_loss(r, patches, e) for (p, s), r in runs.items() for e in PRECISIONS}
    for (p, s, e), v in sorted(loss.items()):
        print(f"seed {s}, trained {p}, evaluated {e}: {v:.4f}", flush=True)

    def mean(trained: str, evaluated: str) -> float:
        return statistics.fmean(loss[(trained, s, evaluated)] for s in args.seeds)

    ratios = [loss[("bf16", s, "fp32")] / loss[("fp32", s, "fp32")] for s in args.seeds]
    fp32 = [loss[("fp32", s, "fp32")] for s in args.seeds]
    configs = [yaml.safe_load((r / "config.yaml").read_text()) for r in runs.values()]
    iterations = sorted({c["iterations"] for c in configs})
    what = "tiny smoke test" if args.tiny else "CPU example"
    figures = {f"trained_{p}_seed{s}_evaluated_{e}": v for (p, s, e), v in loss.items()}
    figures |= {"bf16_over_fp32_of_means": mean("bf16", "fp32") / mean("fp32", "fp32"), "fp32_between_seeds_max_over_min": max(fp32) / min(fp32),
                "bf16_over_fp32_of_means_evaluated_bf16": mean("bf16", "bf16") / mean("fp32", "bf16")}
    print(R.save_row(C.SUITE, SECTION, COLUMNS, [
        R.today(),
        f"{what} ({C.model_label(configs[0])}, {'/'.join(map(str, iterations))} it), synthetic DNA, seeds "
        f"{', '.join(map(str, args.seeds))}; {patches} held-out patches of the test split",
        "; ".join(f"{loss[('fp32', s, 'fp32')]:.4f}, {loss[('bf16', s, 'fp32')]:.4f}" for s in args.seeds),
        ", ".join(f"{r:.3f}" for r in ratios), f"**{mean('bf16', 'fp32') / mean('fp32', 'fp32'):.3f}**",
        f"{max(fp32) / min(fp32):.3f}", f"{mean('bf16', 'bf16') / mean('fp32', 'bf16'):.3f}",
        R.command_line(), M.machine(),
    ], figures=figures, params={"seeds": args.seeds, "patches": patches, "iterations": iterations, "tiny": args.tiny},
        save_it=not args.no_save))


if __name__ == "__main__":
    main()
