"""Seam metric of chunked prediction with a trained model, against one whole-volume forward pass.

    python benchmarks/run.py seams metrics RUN_DIR [--chunks 16 32 32] [--patch 16 64 64]

Takes the first test image of a training run (examples/train_cpu.py), predicts it (a) as chunk tasks
on the global blended grid (what `chunked-fnet predict` does) and (b) naively, each chunk as its own
image, and reports chunked_fnet.evaluate.seams.seam_metrics for both against a single forward pass
of the whole volume (which fits in memory here).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from harness import results as R, workloads as W

SUITE = "seams"
TITLE = "Seam metric: chunked prediction against the naive per-chunk one, trained model"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

from chunked_fnet.evaluate.seams import seam_metrics
from chunked_fnet.sliding_window import PatchRunner, SlidingWindow, padded_reader, partition, predict_volume
from chunked_fnet.train.data import PairReader, describe_pair


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--chunks", nargs=3, type=int, default=(16, 32, 32))
    parser.add_argument("--patch", nargs=3, type=int, default=(16, 64, 64))
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--no-save", action="store_true", help="print only; store no result")
    args = parser.parse_args(argv)
    structure, model, card, stats, pairs = W.load_run(args.run)
    pair = pairs[0]
    x, _ = PairReader(describe_pair(pair, stats), card.voxel_size).whole()
    m = model.multiple
    crop = tuple(slice(0, n - n % m) for n in x.shape)  # the single pass needs sizes divisible by 2**depth
    volume = np.ascontiguousarray(x[crop])[None]
    with torch.inference_mode():
        whole = model(torch.from_numpy(volume[None]))[0].numpy()
    # patch, overlap, blend and batch all given: predict_volume uses exactly this window (not the run policy's)
    options = dict(patch=tuple(args.patch), overlap=args.overlap, blend="gaussian", multiple=m, batch_size=4)
    blended = np.zeros_like(whole)
    naive = np.zeros_like(whole)
    window = SlidingWindow(volume.shape, options["patch"], options["overlap"], m, options["blend"])
    runner = PatchRunner(model, batch_size=options["batch_size"])
    read = padded_reader(volume)
    # as predict's tasks: each chunk evaluates the patches centred in it; each blends the pieces landing in it
    sums = [runner.weighted_sums(window, read, *window.owned(b)) for b in partition(volume.shape[1:], args.chunks) if window.owned(b)[0]]
    for region in partition(volume.shape[1:], args.chunks):
        pieces = [s.crop(inter) for s in sums if (inter := s.box.intersect(region)) is not None]
        blended[(slice(None), *region.slices)] = window.blend_pieces(region, pieces)
        naive[(slice(None), *region.slices)] = predict_volume(model, np.ascontiguousarray(volume[(slice(None), *region.slices)]), **options)
    print(f"{structure} model on {pair.name}, volume {volume.shape[1:]}, chunks {tuple(args.chunks)}, patch {tuple(args.patch)}, overlap {args.overlap}")
    rows, figures = [], {}
    for key, name, pred in (("chunked", "chunked, global blended grid", blended), ("naive", "naive, chunks as separate images", naive)):
        metrics = seam_metrics(pred, args.chunks, reference=whole, period=m)
        print(f"  {name:<34} " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        rows.append({"model, image": f"{structure}, {pair.name}", "volume, chunks": f"{volume.shape[1:]}, {tuple(args.chunks)}",
                     "window": f"{tuple(args.patch)}, {args.overlap} gaussian", "prediction": name,
                     **{k: f"{v:.3f}" for k, v in metrics.items()}})
        figures.update({f"{key}_{k}": float(v) for k, v in metrics.items()})
    if not args.no_save:
        R.save(R.make(SUITE, "seams", TITLE, rows=rows, figures=figures, params=vars(args)))


if __name__ == "__main__":
    main()
