"""What the precision check measures for correct bf16: the figures that set its bound.

    python benchmarks/run.py seams precision-check [--archs tiny small default] [--seeds 3] [--patch 32 128 128]
                                [--device cpu] [--no-save]

For each architecture (``harness.workloads.ARCHS``: the tests' depth-2 width-4 U-Net, a depth-2 width-16
one, the paper's U-Net) and seeded random initialisation, the check itself
(:func:`chunked_fnet.predict.precision_check.measure_job`) runs on the first patch of a synthetic
phantom frame, read as a block task reads it: Pearson r of bf16 against fp32 and max |bf16 - fp32| /
std(fp32). Random weights are what the benchmarks run bf16 with, so the bound
(``policy.REDUCED_MIN_R``, ``REDUCED_MAX_OVER_STD``) must pass them; a wrong kernel gives r far below
0.99. bf16 autocast works on any CPU (emulated where not native, slower).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness import machine as M, results as R, workloads as W

SUITE = "seams"
TITLE = "bf16 against fp32 in the precision check, random-weight U-Nets (issue 29)"
COLUMNS = ["date", "patch", "models", "worst r / max abs diff / std(fp32)", "per model (seed: r, max)", "command", "machine"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["tiny", "small", "default"], choices=sorted(W.ARCHS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--patch", nargs=3, type=int, default=(32, 128, 128))
    parser.add_argument("--frame", nargs=3, type=int, default=None, help="default: the patch (one patch covers the frame)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-save", "--no-append", dest="no_save", action="store_true", help="print only; store no result")
    args = parser.parse_args(argv)

    import torch

    from chunked_fnet.predict.options import PredictOptions
    from chunked_fnet.predict.plan import plan
    from chunked_fnet.predict.policy import REDUCED_MAX_OVER_STD, REDUCED_MIN_R, Hardware
    from chunked_fnet.predict.precision_check import measure_job
    from chunked_fnet.synth.dataset import SynthConfig, generate

    torch.set_num_threads(M.cores())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        z, y, x = args.frame or args.patch
        generate(SynthConfig(size_z=z, size_y=y, size_x=x, voxel_size=(0.29,) * 3, chunks=(z, y, x)), root / "in.zarr", progress=False)
        options = PredictOptions(patch_shape=tuple(args.patch), precision="bf16", device=args.device, batch_size=1)
        for arch in args.archs:
            # make_checkpoints seeds its i-th model i (as main's script did, one seed at a time)
            checkpoints = W.make_checkpoints(root / arch, arch, args.seeds)
            for seed, ckpt in enumerate(checkpoints):
                job = plan(str(root / "in.zarr"), [ckpt], root / f"out_{arch}_{seed}.zarr", options)
                check = measure_job(job, job.resolve_policy(Hardware()))
                row = {"arch": arch, "seed": seed, "r": float(check["r"]), "max_over_std": float(check["max_over_std"]),
                       "patch": check["patch"], "seconds": check["seconds"]}
                rows.append(row)
                print(json.dumps(row, default=str), flush=True)
    worst_r = min(rows, key=lambda r: r["r"])
    worst = max(rows, key=lambda r: r["max_over_std"])
    passing = all(r["r"] >= REDUCED_MIN_R and r["max_over_std"] <= REDUCED_MAX_OVER_STD for r in rows)
    print(f"{len(rows)} models: r(bf16, fp32) >= {worst_r['r']:.7f}; max |bf16 - fp32| <= {worst['max_over_std']:.4f} x std; "
          f"the run's bound (r >= {REDUCED_MIN_R}, max <= {REDUCED_MAX_OVER_STD} std) {'passes' if passing else 'FAILS'} them all")
    if args.no_save:
        return
    per_model = ". ".join(
        f"{a}: " + "; ".join(f"{r['seed']}: {r['r']:.7f}, {r['max_over_std']:.4f}" for r in rows if r["arch"] == a) for a in args.archs
    )
    cells = [
        R.today(), "x".join(map(str, args.patch)),
        f"{args.seeds} seeds x " + ", ".join(W.arch_label(a) for a in args.archs) + f"; {args.device}, bf16 autocast",
        f"{worst_r['r']:.7f} / {worst['max_over_std']:.4f} ({worst['arch']} seed {worst['seed']})", per_model, R.command_line(), M.machine(),
    ]
    figures = {"worst_r": worst_r["r"], "worst_max_over_std": worst["max_over_std"], "bound_passes": passing}
    figures.update({f"{r['arch']}_{r['seed']}_r": r["r"] for r in rows})
    figures.update({f"{r['arch']}_{r['seed']}_max_over_std": r["max_over_std"] for r in rows})
    R.save_row(SUITE, TITLE, COLUMNS, cells, figures=figures,
               params={"archs": args.archs, "seeds": args.seeds, "patch": list(args.patch), "device": args.device})


if __name__ == "__main__":
    main()
