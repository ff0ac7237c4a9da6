"""Skipping empty background (issue 28 item 4): a plate of mostly empty fields, predicted with and without --skip-empty.

    python benchmarks/run.py throughput skip-empty [--fields 10] [--empty 7] [--shape 32 256 256] [--reps 2] [--scores] [--no-save]

A plate of ``--fields`` fields (one well each) of the synthetic phantom at 0.29 µm, the models' grid: ``--empty`` of
them empty medium (the phantom's camera on a field without cells: shot and read noise on 4,000 photons), the others
cell colonies (``chunked_fnet.synth``, a seed each). ``predict_plate`` at the product's defaults (auto patch and
overlap, 2-worker LocalCluster, 1 thread each) of the paper's U-Net (seeded random weights, or ``--checkpoints``),
fp32, with ``skip_empty`` off, auto, and auto again with the workers keeping the background response of the run
before (``cached``: a long-lived cluster), interleaved after an untimed round of each (models loaded in every worker),
each round into a fresh output; ``auto`` computes the background response anew (one patch's forward pass in each
worker that meets a background patch), as a run on a fresh cluster does. Reports the wall time of each and the ratios;
the patches skipped and the block tasks that ran no model; the largest difference between the two outputs where no
skipped patch has weight (the non-empty regions: must be <= 1e-5) and where one has (the background: the models'
response to flat medium there instead of to the noise), also as a fraction of the output's std over the cell fields.

``--scores``: the rule's measurement instead. The white-noise score (``chunked_fnet.predict.background``) of every
patch (16x32x32, 32x64x64, 32x128x128; step half a patch) of the plate's fields, by kind: empty fields; patches of cell
fields with fluorescent structure in their box (any structure channel above its background by 10x its noise); patches
of cell fields without any (the medium between and beside the cells).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "throughput"

SEEDS = (2, 6, 3, 11, 0, 4, 1, 5, 7, 8)  # colonies with gaps first (benchmark exploration), then full ones


def make_plate(path: Path, fields: int, empty: int, shape: tuple[int, int, int]) -> list[tuple[str, bool]]:
    """The plate (generated once per configuration): each field's well and whether it holds cells."""
    from chunked_fnet.io.plate import Plate, create_plate, join
    from chunked_fnet.io.writer import create_image, write_region
    from chunked_fnet.synth.dataset import SynthConfig, camera_counts, generate

    cells = set(np.linspace(0, fields - 1, fields - empty).round().astype(int).tolist()) if fields > empty else set()
    wells = [(f"A/{i + 1}", i in cells) for i in range(fields)]
    marker = path.with_name(path.name + ".config.json")
    wanted = json.dumps({"fields": fields, "empty": empty, "shape": list(shape), "seeds": SEEDS})
    if path.exists() and marker.exists() and marker.read_text() == wanted:
        return wells
    print(f"generating {path}: {fields} fields of {shape}, {empty} empty ...", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    meta = {"name": "skip_empty benchmark", "rows": [{"name": "A"}], "columns": [{"name": str(i + 1)} for i in range(fields)],
            "wells": [{"path": w, "rowIndex": 0, "columnIndex": i} for i, (w, _) in enumerate(wells)], "field_count": 1}
    plate = Plate(str(path), "0.5", meta, {w: {"images": [{"path": "0"}]} for w, _ in wells}, tuple((w, "0") for w, _ in wells))
    create_plate(str(path), plate, plate.fields, "0.5")
    for i, (well, has_cells) in enumerate(wells):
        config = SynthConfig(size_z=shape[0], size_y=shape[1], size_x=shape[2], voxel_size=(0.29,) * 3,
                             chunks=(shape[0], min(256, shape[1]), min(256, shape[2])), seed=SEEDS[i % len(SEEDS)])
        where = join(str(path), well, "0")
        if has_cells:
            generate(config, where, progress=False)
            continue
        group = create_image(where, shape=config.image_shape, chunks=(1, 1, *config.chunks), dtype="uint16",
                             scale={"t": config.time_interval, **dict(zip("zyx", config.voxel_size))}, channel_names=config.channel_names,
                             name=f"empty medium {well}")
        for c, name in enumerate(config.channel_names):  # the phantom's camera without a sample: medium, or autofluorescence
            photons = config.photons.brightfield if c == 0 else config.photons.background
            counts = camera_counts(np.full(shape, photons, dtype=np.float32), config, (i, 0, c), 0, 0, 0)
            write_region(group, (slice(0, 1), slice(c, c + 1), slice(None), slice(None), slice(None)), counts[None, None])
    marker.write_text(wanted)
    return wells


def scores(plate: Path, wells: list[tuple[str, bool]]) -> None:
    from chunked_fnet.io.reader import open_image
    from chunked_fnet.predict.background import white_noise_score

    for patch in ((16, 32, 32), (32, 64, 64), (32, 128, 128)):
        kinds: dict[str, list[float]] = {"empty field": [], "cell field, structure in the patch": [], "cell field, medium only": []}
        for well, has_cells in wells:
            image = open_image(str(plate / well / "0")).isel(t=0).values.astype(np.float64)
            bright, structure = image[0], image[1:]
            background = np.median(structure, axis=(1, 2, 3), keepdims=True)
            marked = ((structure - background) > 10 * np.sqrt(background)).any(axis=0)  # 10x the autofluorescence's shot noise
            step = [max(1, p // 2) for p in patch]
            for z in range(0, max(1, bright.shape[0] - patch[0] + 1), step[0]):
                for y in range(0, bright.shape[1] - patch[1] + 1, step[1]):
                    for x in range(0, bright.shape[2] - patch[2] + 1, step[2]):
                        box = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                        kind = "empty field" if not has_cells else "cell field, " + ("structure in the patch" if marked[box].any() else "medium only")
                        kinds[kind].append(white_noise_score(bright[box]))
        print(f"patch {patch}: white-noise score, n / min / median / 99th percentile / max")
        for kind, values in kinds.items():
            if values:
                q = np.quantile(values, [0, 0.5, 0.99, 1])
                print(f"  {kind:36s} {len(values):5d} / {q[0]:8.2f} / {q[1]:8.2f} / {q[2]:8.2f} / {q[3]:8.2f}")
        medium = sorted(kinds["cell field, medium only"])
        if medium:
            print(f"  medium-only patches at or below 4: {sum(v <= 4 for v in medium)} of {len(medium)}; their lowest scores: "
                  + ", ".join(f"{v:.1f}" for v in medium[:12]))


def _skipped_mask(field: str, models: list[str], options, summary) -> np.ndarray:  # noqa: ANN001
    """Voxels (model grid) where a patch that the rule calls background has blending weight."""
    from chunked_fnet.predict import plan
    from chunked_fnet.predict.background import background_patches
    from chunked_fnet.predict.job import model_grid_frame

    window, level = summary.policy.window, summary.policy.skip_empty
    corners = list(window.grid.corners())
    frame = model_grid_frame(plan(field, models, "unused", options), 0)
    mask = np.zeros(window.frame_shape, dtype=bool)
    for corner, background in zip(corners, background_patches(frame, window, corners, level), strict=True):
        if background:
            box = window.grid.patch_box(corner)
            inside = tuple(slice(a, min(b, n)) for a, b, n in zip(box.start, box.stop, window.frame_shape, strict=True))
            mask[inside] |= window.weights_for(corner)[tuple(slice(0, s.stop - s.start) for s in inside)] > 0
    return mask


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=10)
    parser.add_argument("--empty", type=int, default=7, help="fields of empty medium among them")
    parser.add_argument("--shape", nargs=3, type=int, default=(32, 256, 256), help="z y x of a field")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of each first")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--checkpoints", nargs="+", help="trained models at 0.29 µm instead of the paper U-Net's random weights")
    parser.add_argument("--scores", action="store_true", help="measure the rule's white-noise scores instead")
    W.add_data_args(parser)
    args = parser.parse_args(argv)

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.io.reader import open_image
    from chunked_fnet.predict import PredictOptions, predict_plate
    from chunked_fnet.predict.background import forget_background_responses

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    plate = data / f"skip_plate_{args.fields}x{'x'.join(map(str, shape))}_{args.empty}empty.zarr"
    wells = make_plate(plate, args.fields, args.empty, shape)  # type: ignore[arg-type]
    if args.scores:
        scores(plate, wells)
        return
    models = args.checkpoints or W.make_checkpoints(data / "models", "default", 1)
    off, auto = PredictOptions(precision="fp32", device="cpu"), PredictOptions(precision="fp32", device="cpu", skip_empty="auto")
    modes = {"off": off, "auto": auto, "cached": auto}  # cached: the workers kept the background response of the previous run
    times: dict[str, list[float]] = {m: [] for m in modes}
    summaries = {}
    with local_client(ClusterSpec(n_workers=args.workers, threads_per_worker=1)) as client:
        for rep in range(-args.warmup, args.reps):
            for mode, options in modes.items():
                out = data / f"skip_pred_{mode}.zarr"
                if mode != "cached":  # a run on a fresh cluster computes the response in each worker that meets background
                    client.run(forget_background_responses)
                start = time.perf_counter()
                summaries[mode] = predict_plate(plate, models, out, options=options, client=client, progress=False, overwrite=True)
                seconds = time.perf_counter() - start
                if rep >= 0:
                    times[mode].append(seconds)
                print(f"{'warm-up' if rep < 0 else 'rep'} {rep + 1}: skip_empty {mode} {seconds:.1f} s", flush=True)
    print(summaries["auto"])
    kept, background, spread = 0.0, 0.0, []
    for (well, has_cells), run in zip(wells, summaries["auto"].runs, strict=True):
        full = open_image(str(data / "skip_pred_off.zarr" / well / "0")).values[0]
        skip = open_image(str(data / "skip_pred_auto.zarr" / well / "0")).values[0]
        mask = _skipped_mask(str(plate / well / "0"), models, modes["auto"], run)
        diff = np.abs(full - skip)
        kept = max(kept, float(diff[:, ~mask].max(initial=0.0)))
        background = max(background, float(diff[:, mask].max(initial=0.0)))
        if has_cells:
            spread.append(full)
        print(f"  {well} {'cells' if has_cells else 'empty'}: {run.background_patches} of {run.background_patches + run.patch_evaluations} "
              f"patches skipped; max |diff| where none skipped has weight {diff[:, ~mask].max(initial=0.0):.2e}, "
              f"where one has {diff[:, mask].max(initial=0.0):.3g}")
    std = float(np.std(np.stack(spread))) if spread else float("nan")
    skipped = sum(r.background_patches for r in summaries["auto"].runs)
    total = skipped + sum(r.patch_evaluations for r in summaries["auto"].runs)
    blocks = sum(r.background_blocks for r in summaries["auto"].runs)
    ratio = T.median(times["off"]) / T.median(times["auto"])
    cached = T.median(times["off"]) / T.median(times["cached"])
    window = summaries["auto"].runs[0].policy.window
    print(f"off {T.median(times['off']):.1f} s, auto {T.median(times['auto']):.1f} s (response cached {T.median(times['cached']):.1f} s): "
          f"speed-up {ratio:.2f} ({cached:.2f}); {skipped} of {total} patches "
          f"skipped, {blocks} block tasks without a model call; max |diff| unchanged regions {kept:.2e}, background {background:.3g} "
          f"({background / std:.2f} x the cell fields' output std {std:.3g})")
    if not args.no_save:
        print(R.save_row(
            SUITE, "Skipping empty background (issue 28 item 4)",
            ["date", "plate, model, window", "off s", "auto s (response cached)", "speed-up (response cached)",
             "patches skipped (block tasks without a model call)",
             "max diff, non-empty regions", "max diff, background (x output std)", "noise", "command", "machine"],
            [R.today(), f"{args.fields} fields of {shape}, {args.empty} empty; {'given checkpoints' if args.checkpoints else 'paper U-Net, random weights'}; "
             f"patch {list(window.patch_shape)}, fp32", f"{T.median(times['off']):.1f}",
             f"{T.median(times['auto']):.1f} ({T.median(times['cached']):.1f})", f"{ratio:.2f} ({cached:.2f})",
             f"{skipped} of {total} ({blocks})", f"{kept:.1e}", f"{background:.3g} ({background / std:.2f})",
             f"median of {args.reps} interleaved rounds after {args.warmup} untimed; spread "
             + ", ".join(f"{m} {T.fmt_spread(v)}" for m, v in times.items()) + f"; {M.load_note()}", R.command_line(), M.machine()],
            figures={"speedup": ratio, "speedup_response_cached": cached, "off_s": T.median(times["off"]), "auto_s": T.median(times["auto"]),
                     "cached_s": T.median(times["cached"]), "patches_skipped": skipped, "patches": total, "blocks_without_model": blocks,
                     "max_diff_non_empty": kept, "max_diff_background": background, "max_diff_background_over_std": background / std},
            params={"fields": args.fields, "empty": args.empty, "shape": list(shape), "reps": args.reps, "warmup": args.warmup,
                    "workers": args.workers, "checkpoints": bool(args.checkpoints)},
        ))


if __name__ == "__main__":
    main()
