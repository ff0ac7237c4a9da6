"""How far inward from a patch's border does the U-Net's output differ from the whole-frame output?

    python benchmarks/run.py seams border-effect [--arch default] [--checkpoint dna.ckpt] [--frame 32 192 192] [--patch 96]

A fully convolutional U-Net gives the same output for a voxel whatever patch it is computed in,
except near the patch's border, where its zero padding (and, at each down-sampling level, the
coarser grid's padding) reaches inward. This script runs the model once over a whole frame
(z-scored synthetic bright-field on the model grid) and once over a crop (``--patch`` wide in y/x,
inside the frame, so every crop border is an inner border; and a half-depth crop in z), and
reports the largest and the mean difference, in units of the whole-frame output's standard
deviation, as a function of the distance from the nearest crop border. The distance at which the
difference falls below 1e-3 (and 1e-2) of the output's std is the overlap the sliding window needs:
chunked_fnet's default overlap (in model voxels) is derived from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, workloads as W

SUITE = "seams"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)


def _by_distance(diff: np.ndarray, distance: np.ndarray, scale: float) -> list[tuple[int, float, float]]:
    rows = []
    for d in range(int(distance.max()) + 1):
        sel = distance == d
        if sel.any():
            rows.append((d, float(diff[sel].max() / scale), float(diff[sel].mean() / scale)))
    return rows


def _first_below(rows: list[tuple[int, float, float]], threshold: float) -> int | None:
    """The smallest distance from which on every larger distance stays below ``threshold``."""
    for i, (d, worst, _) in enumerate(rows):
        if all(r[1] < threshold for r in rows[i:]):
            return d
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(W.ARCHS), default="default")
    parser.add_argument("--checkpoint", help="a trained checkpoint instead of a random initialisation of --arch")
    parser.add_argument("--frame", nargs=3, type=int, default=(32, 192, 192))
    parser.add_argument("--patch", type=int, default=96, help="y/x size of the crop")
    W.add_data_args(parser)
    args = parser.parse_args(argv)

    import torch

    from chunked_fnet.io.reader import open_image, select_channels
    from chunked_fnet.model import FnetUNet, UNetConfig, load_checkpoint

    torch.set_num_threads(M.cores())
    if args.checkpoint:
        model, card = load_checkpoint(args.checkpoint)
        what = f"{Path(args.checkpoint).name} (trained, depth {card.architecture.depth}, width {card.architecture.width})"
    else:
        torch.manual_seed(0)
        model = FnetUNet(UNetConfig(**W.ARCHS[args.arch]))
        what = f"random init, arch {args.arch} (depth {model.config.depth}, width {model.config.width})"
    model = model.eval()
    image = W.bench_input(args.data, 1, tuple(args.frame))
    bf = select_channels(open_image(image), "brightfield").isel(t=0).values.astype(np.float32)
    x = (bf - bf.mean()) / bf.std()
    z, y, w = x.shape
    p, m = args.patch, model.multiple
    assert z % m == 0 and y % m == 0 and w % m == 0 and p % m == 0 and p < min(y, w), "sizes must be multiples of the network's factor"
    with torch.inference_mode():
        whole = model(torch.from_numpy(x)[None, None])[0, 0].numpy()
        y0, x0 = (y - p) // 2 // m * m, (w - p) // 2 // m * m  # a crop on the network's grid, away from the frame's border
        crop = model(torch.from_numpy(np.ascontiguousarray(x[:, y0 : y0 + p, x0 : x0 + p]))[None, None])[0, 0].numpy()
        half = z // 2 // m * m
        top = model(torch.from_numpy(np.ascontiguousarray(x[:half]))[None, None])[0, 0].numpy()
    scale = float(whole.std())
    lateral = np.abs(crop - whole[:, y0 : y0 + p, x0 : x0 + p])
    iy, ix = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    dist_yx = np.broadcast_to(np.minimum(np.minimum(iy, p - 1 - iy), np.minimum(ix, p - 1 - ix)), lateral.shape)
    rows_yx = _by_distance(lateral, dist_yx, scale)
    axial = np.abs(top - whole[:half])
    dist_z = np.broadcast_to((half - 1 - np.arange(half))[:, None, None], axial.shape)  # from the crop's inner z border
    rows_z = _by_distance(axial, dist_z, scale)
    print(f"{what}; frame {tuple(args.frame)}; y/x crop {p}; output std {scale:.4g}")
    print("distance  max|diff|/std (y/x)  mean  |  max|diff|/std (z)  mean")
    for i in range(max(len(rows_yx), len(rows_z))):
        a = rows_yx[i] if i < len(rows_yx) else None
        b = rows_z[i] if i < len(rows_z) else None
        left = f"{a[1]:.2e}  {a[2]:.2e}" if a else " " * 18
        right = f"{b[1]:.2e}  {b[2]:.2e}" if b else ""
        if i < 40 or i % 8 == 0:
            print(f"{i:8d}  {left}  |  {right}")
    result = {t: (_first_below(rows_yx, t), _first_below(rows_z, t)) for t in (1e-2, 1e-3)}
    for t, (dyx, dz) in result.items():
        print(f"difference below {t:g} x std from {dyx} voxels (y/x) and {dz} voxels (z) of the border inward")
    if not args.no_save:
        R.save_row(SUITE, 
            "Patch-border effect (how far zero padding reaches inward)",
            ["date", "machine", "command", "model", "y/x: < 1e-2 std from", "y/x: < 1e-3 std from", "z: < 1e-2 std from", "z: < 1e-3 std from"],
            [R.today(), M.machine(), R.command_line(), what, result[1e-2][0], result[1e-3][0], result[1e-2][1], result[1e-3][1]],
        )


if __name__ == "__main__":
    main()
