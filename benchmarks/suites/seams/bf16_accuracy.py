"""bf16 against fp32 on a trained model: how much does running the U-Net in bfloat16 change its prediction?

    python benchmarks/run.py seams bf16-accuracy RUN_DIR [--device cpu] [--no-save]

RUN_DIR is a training run (``python examples/train_cpu.py OUT --structures dna`` makes
``OUT/run_dna``). Every test image of the run is predicted whole through the package's sliding
window (``predict_volume`` with an explicit window: the whole frame in one patch, band blend) once
in float32 and once under bfloat16 autocast, on the model's voxel grid; reported per image: Pearson
r between the two, the largest absolute difference in units of the fp32 prediction's standard
deviation, and each one's Pearson r against the observed target (does bf16 cost accuracy that
matters?), plus the wall time of each.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from harness import machine as M, results as R, workloads as W

SUITE = "seams"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-save", "--no-append", dest="no_save", action="store_true", help="print only; store no result")
    args = parser.parse_args(argv)

    import torch

    from chunked_fnet.evaluate.metrics import pearson_r
    from chunked_fnet.sliding_window import predict_volume
    from chunked_fnet.train.data import PairReader, describe_pair

    torch.set_num_threads(M.cores())
    structure, model, card, stats, pairs = W.load_run(args.run)
    model = model.inference_copy()
    rows = []
    for pair in pairs:
        x, y = PairReader(describe_pair(pair, stats), card.voxel_size).whole()
        m = model.multiple
        patch = tuple(m * -(-n // m) for n in x.shape)  # the whole frame in one patch where it fits
        options = dict(patch=patch, overlap=0, blend="band", multiple=m, device=args.device, batch_size=1)
        start = time.perf_counter()
        fp32 = predict_volume(model, x[None], **options)[0]
        t32 = time.perf_counter() - start
        start = time.perf_counter()
        bf16 = predict_volume(model, x[None], amp_dtype=torch.bfloat16, **options)[0]
        t16 = time.perf_counter() - start
        row = {
            "image": pair.name,
            "r(bf16, fp32)": pearson_r(fp32, bf16),
            "max |bf16 - fp32| / std(fp32)": float(np.abs(bf16 - fp32).max() / fp32.std()),
            "r(fp32, target)": pearson_r(y, fp32),
            "r(bf16, target)": pearson_r(y, bf16),
            "seconds fp32 / bf16": f"{t32:.2f} / {t16:.2f}",
        }
        rows.append(row)
        print(json.dumps(row))
    worst_r = min(r["r(bf16, fp32)"] for r in rows)
    worst_err = max(r["max |bf16 - fp32| / std(fp32)"] for r in rows)
    target32 = float(np.mean([r["r(fp32, target)"] for r in rows]))
    target16 = float(np.mean([r["r(bf16, target)"] for r in rows]))
    print(f"{structure}, {len(rows)} test images: r(bf16, fp32) >= {worst_r:.6f}; max |bf16 - fp32| <= {worst_err:.4f} x std; "
          f"mean r vs target fp32 {target32:.4f}, bf16 {target16:.4f}")
    if not args.no_save:
        R.save_row(SUITE, 
            "bf16 against fp32 on a trained model (issue 15)",
            ["date", "model", "images", "min r(bf16, fp32)", "max abs diff / std(fp32)", "mean r vs target fp32 / bf16", "command", "machine"],
            [R.today(), f"{structure} (depth {card.architecture.depth}, width {card.architecture.width}), {args.device}", len(rows),
             f"{worst_r:.6f}", f"{worst_err:.4f}", f"{target32:.4f} / {target16:.4f}", R.command_line(), M.machine()],
        )


if __name__ == "__main__":
    main()
