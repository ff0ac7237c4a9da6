"""Seams and error against one whole-volume forward pass, old default window vs band blend at several overlaps.

    python benchmarks/run.py seams vs-overlap RUN_DIR [--synth 32 352 352] [--fit] [--patch-yx 128] [--overlaps 32 48 64 80 96]

For a trained model (a training run of examples/train_cpu.py: its checkpoint, split.json and stats.json)
predicts every test image, and optionally a larger synthetic frame (chunked_fnet.synth at 0.29 µm
isotropic, z-scored like the training images), with

- the old default window: ``SlidingWindow(shape, (32, 64, 64) or (16, 64, 64), 0.25, multiple)``
  (gaussian blend, MONAI's grid, ``align=False``);
- the band blend with ``align=True``, the whole z-depth, and overlaps of ``--overlaps`` model voxels in
  y/x (``chunked_fnet.predict.policy.AUTO_OVERLAP`` = 96 is the product's default);

and reports per window (worst over the images):

- ``chunked_fnet.evaluate.seams.seam_metrics`` at the window's blend seams: the planes midway through
  each overlap between neighbouring patches (where one patch hands over to the next). The metric
  takes boundaries every ``chunks`` voxels, so the arrays are cropped to start one step before the
  first seam and ``chunks`` is the step; an axis whose seams are not evenly spaced (the last patch of
  MONAI's grid shifted back) is left out and marked ``*``;
- max |pred - whole| / std(whole): over the frame, in the interior (more than ``--margin`` voxels from the
  frame's y/x edges: with ``align=True`` the last patch runs into the reflect padding past the frame's
  end, which the whole pass does not see, so that edge differs for a reason that is no seam), and deep
  inside (more than ``--deep`` voxels, past the reach of the frame's border);
- with ``--fit``, each band window also on the frame cut in y/x to end exactly on its grid (and the
  whole pass of that cut), so that no patch reads padding and the error is the seams' alone;
- the recompute factor (patch evaluations x patch voxels / frame voxels, ``PatchGrid.recompute_factor``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from harness import machine as M, results as R, workloads as W

SUITE = "seams"
TITLE = "Seams against the overlap, with a trained model (issue 15: the default overlap)"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

from chunked_fnet.evaluate.seams import seam_metrics
from chunked_fnet.sliding_window import SlidingWindow, predict_volume
from chunked_fnet.train.data import PairReader, describe_pair
from chunked_fnet.train.manifest import Pair


def seam_planes(window: SlidingWindow) -> list[list[int]]:
    """Per axis, the planes midway through each overlap: voxel q is the first one past the seam."""
    planes = []
    for starts, p in zip(window.grid.starts, window.grid.patch):
        planes.append([int(math.ceil((int(a) + int(b) + p) / 2)) for a, b in zip(starts[:-1], starts[1:])])
    return planes


def seam_crop(window: SlidingWindow, shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple[int, ...], list[bool]]:
    """A crop and a ``chunks`` for which seam_metrics' boundaries (every ``chunks`` voxels of the crop)
    are exactly the window's seams; per axis whether its seams are in (evenly spaced) or left out."""
    crop, chunks, used = [], [], []
    for n, q in zip(shape, seam_planes(window)):
        gaps = {b - a for a, b in zip(q[:-1], q[1:])}
        if not q:
            crop.append(slice(0, n)), chunks.append(n), used.append(True)
            continue
        gap = gaps.pop() if len(gaps) == 1 else (min(q[0], n - q[0]) if len(q) == 1 else None)
        if gap is None or q[0] - gap < 0:
            crop.append(slice(0, n)), chunks.append(n), used.append(False)  # no boundary on this axis
            continue
        lo, hi = q[0] - gap, min(n, q[-1] + gap)
        crop.append(slice(lo, hi)), chunks.append(gap), used.append(True)
    return tuple(crop), tuple(chunks), used


def windows(args: argparse.Namespace, shape: tuple[int, int, int], m: int) -> list[tuple[str, dict]]:
    """(label, predict_volume options) for a frame of ``shape``; y/x patches at least 2 per axis."""
    out = []
    for pz in args.old_z:
        out.append((f"old: ({pz}, 64, 64), 0.25, gaussian", dict(patch=(pz, 64, 64), overlap=0.25, blend="gaussian", align=False)))
    ny = min(shape[1:])
    for o in args.overlaps:
        p = args.patch_yx
        if p - o < m:  # too little step: the smallest patch with a step of max(m, 32) (and <= the frame)
            p = o + max(m, 32)
        if p >= ny:  # small frames: a step of 32, or the largest patch that still gives two patches per axis
            p = min(o + 32, (ny - 1) // m * m)
        if p <= o:
            print(f"  (overlap {o}: frame {shape} too small for two patches per axis; skipped)")
            continue
        z = shape[0]
        out.append((f"band: ({z}, {p}, {p}), overlap {o}, align", dict(patch=(z, p, p), overlap=(0, o, o), blend="band", align=True)))
    return out


def evaluate(model, volume: np.ndarray, whole: np.ndarray, label: str, options: dict, args: argparse.Namespace, m: int) -> dict:
    shape = volume.shape[1:]
    window = SlidingWindow(shape, options["patch"], options["overlap"], m, options["blend"], align=options["align"])
    pred = predict_volume(model, volume, multiple=m, batch_size=args.batch, **options)
    crop, chunks, used = seam_crop(window, shape)
    sm = seam_metrics(pred[(slice(None), *crop)], chunks, reference=whole[(slice(None), *crop)], period=m)
    std = float(whole.std())
    diff = np.abs(pred - whole)
    g, d = args.margin, args.deep
    row = {
        "label": label,
        "patch": window.patch_shape,
        "overlap": window.overlap_voxels,
        "patches": window.grid.n_patches,
        "seams": seam_planes(window),
        "seam_axes_used": used,
        **sm,
        "relative_error_full": float(np.linalg.norm(pred - whole) / np.linalg.norm(whole - whole.mean())),
        "max_all": float(diff.max() / std),
        "max_interior": float(diff[..., g:-g, g:-g].max() / std),
        "max_deep": float(diff[..., d:-d, d:-d].max() / std) if min(shape[1:]) > 2 * d else float("nan"),
        "mean_interior": float(diff[..., g:-g, g:-g].mean() / std),
        "recompute": window.grid.recompute_factor,
    }
    _, _, iy, ix = np.unravel_index(int(diff.argmax()), diff.shape)
    row["max_at_edge_distance"] = int(min(iy, ix, shape[1] - 1 - iy, shape[2] - 1 - ix))
    print(
        f"  {label:<40} patches {row['patches']:3d}  seams {'/'.join('-' if not q else ('*' if not u else str(len(q))) for q, u in zip(row['seams'], used))}  "
        f"step {sm['step_ratio']:.3f} rel_step {sm['relative_step_ratio']:.3f} err_ratio {sm['error_ratio']:.2f} rel_err {sm['relative_error']:.2e}  "
        f"max/std all {row['max_all']:.2e} (at {row['max_at_edge_distance']} from edge) int{g} {row['max_interior']:.2e} deep{d} {row['max_deep']:.2e}  recompute {row['recompute']:.2f}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--overlaps", nargs="+", type=int, default=(32, 48, 64, 80, 96))
    parser.add_argument("--old-z", nargs="+", type=int, default=(32, 16), help="z sizes of the old default's patch")
    parser.add_argument("--patch-yx", type=int, default=128, help="y/x patch of the band windows (shrunk on small frames)")
    parser.add_argument("--synth", nargs=3, type=int, help="also a synthetic frame of this z y x (model voxels), e.g. 32 352 352")
    parser.add_argument("--no-test", action="store_true", help="only the synthetic frame")
    parser.add_argument("--margin", type=int, default=16, help="interior: more than this many voxels from the frame's y/x edges")
    parser.add_argument("--deep", type=int, default=48, help="deep interior: past the reach of the frame's border")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--fit", action="store_true", help="also each band window on the frame cut to end on its grid")
    parser.add_argument("--json", help="write every row here")
    W.add_data_args(parser)
    args = parser.parse_args(argv)

    torch.set_num_threads(M.cores())
    structure, model, card, stats, test_pairs = W.load_run(args.run)
    model = model.eval()
    m = model.multiple
    print(f"{structure} model (depth {card.architecture.depth}, width {card.architecture.width}, multiple {m}), voxel {card.voxel_size}")
    pairs = [] if args.no_test else test_pairs
    if args.synth:
        image = W.bench_input(args.data, 1, tuple(args.synth))
        pairs.append(Pair(path=image, series=None, t=0, input_channel="brightfield", target_channel="dna", split=None))
    rows = []
    for pair in pairs:
        x, _ = PairReader(describe_pair(pair, stats), card.voxel_size).whole()
        crop = tuple(slice(0, n - n % m) for n in x.shape)  # the single pass needs sizes divisible by 2**depth
        volume = np.ascontiguousarray(x[crop])[None]
        with torch.inference_mode():
            whole = model(torch.from_numpy(volume[None]))[0].numpy()
        print(f"{pair.name}: frame {volume.shape[1:]} (cropped from {x.shape}), output std {whole.std():.4g}", flush=True)
        for label, options in windows(args, volume.shape[1:], m):
            row = evaluate(model, volume, whole, label, options, args, m)
            row["image"], row["frame"] = pair.name, volume.shape[1:]
            rows.append(row)
            if args.fit and options["align"]:
                # the frame cut in y/x so that the aligned grid ends exactly at its edge: no patch reads past
                # the frame, so every difference from the whole pass (on that cut) comes from the seams
                w = SlidingWindow(volume.shape[1:], options["patch"], options["overlap"], m, options["blend"], align=True)
                fit = tuple(int(s[-1]) + p if int(s[-1]) + p <= n else int(s[-2]) + p for s, p, n in zip(w.grid.starts, w.grid.patch, volume.shape[1:]))
                if fit[1:] != volume.shape[2:] and min(fit[1:]) > options["patch"][1]:
                    cut = np.ascontiguousarray(volume[:, : fit[0], : fit[1], : fit[2]])
                    with torch.inference_mode():
                        whole_cut = model(torch.from_numpy(cut[None]))[0].numpy()
                    row = evaluate(model, cut, whole_cut, label + f", cut {fit[1]}", options, args, m)
                    row["image"], row["frame"] = pair.name, cut.shape[1:]
                    rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    if not args.no_save:
        shown = [{k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in r.items()} for r in rows]
        R.save(R.make(SUITE, "seams", TITLE, table="runs", rows=shown, params={k: v for k, v in vars(args).items() if k != "json"},
                      figures={"worst_max_interior": max((r["max_interior"] for r in rows), default=float("nan"))}))
    # worst over the images, per group of frame size and window
    print("\nworst over images (per frame shape):")
    keys = ["relative_step_ratio", "step_ratio", "error_ratio", "relative_error", "max_all", "max_interior", "max_deep", "recompute"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((tuple(r["frame"]), r["label"]), []).append(r)
    for (frame, label), rs in groups.items():
        worst = {k: max(r[k] for r in rs) for k in keys}
        print(f"  {frame} x{len(rs)}  {label:<40} " + "  ".join(f"{k} {v:.3g}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
