"""What the precision check measures for correct bf16: the figures that set its bound.

    python benchmarks/precision_check.py [--archs tiny small default] [--seeds 3] [--patch 32 128 128] [--device cpu] [--no-append]

For each architecture (``_common.ARCHS``: the tests' depth-2 width-4 U-Net, a depth-2 width-16 one, the
paper's U-Net) and seeded random initialisation, the check itself
(:func:`chunked_fnet.predict.precision_check.measure_job`) runs on the first patch of a synthetic
phantom frame, read as a block task reads it: Pearson r of bf16 against fp32 and max |bf16 - fp32| /
std(fp32). Random weights are what the benchmarks run bf16 with, so the bound must pass them; a wrong
kernel gives r far below 0.99. bf16 autocast works on any CPU (emulated where not native, slower).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import _common as C


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["tiny", "small", "default"], choices=sorted(C.ARCHS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--patch", nargs=3, type=int, default=(32, 128, 128))
    parser.add_argument("--frame", nargs=3, type=int, default=None, help="default: the patch (one patch covers the frame)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    import torch

    from chunked_fnet.predict.options import PredictOptions
    from chunked_fnet.predict.plan import plan
    from chunked_fnet.predict.policy import Hardware
    from chunked_fnet.predict.precision_check import measure_job
    from chunked_fnet.synth.dataset import SynthConfig, generate

    torch.set_num_threads(C.cores())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        z, y, x = args.frame or args.patch
        generate(SynthConfig(size_z=z, size_y=y, size_x=x, voxel_size=(0.29,) * 3, chunks=(z, y, x)), root / "in.zarr", progress=False)
        options = PredictOptions(patch_shape=tuple(args.patch), precision="bf16", device=args.device, batch_size=1)
        for arch in args.archs:
            for seed in range(args.seeds):
                (ckpt,) = C.make_checkpoints(root / f"{arch}_{seed}", arch, 1) if seed == 0 else [_seeded(root, arch, seed)]
                job = plan(str(root / "in.zarr"), [ckpt], root / "out.zarr", options)
                check = measure_job(job, job.resolve_policy(Hardware()))
                row = {"arch": arch, "seed": seed, "r": check["r"], "max_over_std": check["max_over_std"], "patch": check["patch"],
                       "seconds": check["seconds"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    worst_r = min(float(r["r"]) for r in rows)
    worst = max(float(r["max_over_std"]) for r in rows)
    print(f"{len(rows)} models: r(bf16, fp32) >= {worst_r:.7f}; max |bf16 - fp32| <= {worst:.4f} x std")
    if not args.no_append:
        per_arch = "; ".join(
            f"{a}: r >= {min(float(r['r']) for r in rows if r['arch'] == a):.7f}, max <= "
            f"{max(float(r['max_over_std']) for r in rows if r['arch'] == a):.4f}" for a in args.archs
        )
        C.append_row(
            "bf16 against fp32 in the precision check, random-weight U-Nets (issue 29)",
            ["date", "patch", "models", "worst r / max abs diff / std(fp32)", "per architecture", "command", "machine"],
            [C.today(), "x".join(map(str, args.patch)), f"{args.seeds} seeds x {', '.join(args.archs)}, {args.device}",
             f"{worst_r:.7f} / {worst:.4f}", per_arch, C.command_line(), C.machine()],
        )


def _seeded(root: Path, arch: str, seed: int) -> str:
    """A checkpoint of ``arch`` initialised with ``seed`` (``make_checkpoints`` seeds its i-th model i)."""
    return C.make_checkpoints(root / f"{arch}_{seed}", arch, seed + 1)[seed]


if __name__ == "__main__":
    main()
