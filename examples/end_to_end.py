"""End to end on a laptop CPU: synthetic data -> a small ensemble -> evaluation -> a time-lapse
predicted on a local dask cluster -> the paper's figures -> a neuroglancer view.

    python examples/end_to_end.py [OUT_DIR] [--structures dna membrane mitochondria] [--iterations 300]
                                  [--screenshot] [--view]

Writes, in OUT_DIR (default ``example_end_to_end``):

    train.zarr/0..3          4 synthetic fields of view (bright-field + 6 fluorescence channels)
    timelapse.zarr           a held-out field of view, 6 frames 5 min apart
    run_<structure>/         one small U-Net per structure (<structure>.ckpt, losses.csv/png)
    eval/metrics.csv         normalised error, Pearson r, SSIM, PSNR, NRMSE, FSC per image, train and test
    prediction.zarr          the ensemble's prediction of the time-lapse (NGFF 0.5, a coloured channel each)
    figures/fig3_slices.png  input / target / prediction z-slices           (paper Figure 3)
    figures/fig4b_metrics.png  per-structure metrics, train and test        (Figure 4b)
    figures/fig5_overlay.png   merged multi-structure overlay, xy and xz    (Figure 5)
    figures/fig6_timelapse.png + fig6_timelapse.gif  merged prediction over time  (Figure 6)
    figures/neuroglancer.png   with --screenshot: the neuroglancer view in headless Chromium

and prints each step with its wall time, then the metrics table. Output of a run with the defaults
(the pictures in the README come from it; on this project's shared 2-core machine under heavy load it
took 49 minutes, training at about 2-3 s per iteration; use --iterations 100 for a quicker look):

    synthetic data: OUT_DIR/train.zarr (4 fields of view), OUT_DIR/timelapse.zarr (6 frames) in 106 s
    trained dna (300 iterations) in 695 s
    trained membrane (300 iterations) in 1043 s
    trained mitochondria (300 iterations) in 980 s
    structure     split   n  normalised error  Pearson r
    dna           test    1             0.282      0.915
    dna           train   3             0.183      0.916
    membrane      test    1             0.614      0.635
    membrane      train   3             0.415      0.774
    mitochondria  test    1             0.980      0.156    (thin tubules learn slowly, as in the paper)
    mitochondria  train   3             0.902      0.320
    predicted OUT_DIR/timelapse.zarr -> wrote OUT_DIR/prediction.zarr: 6 chunk tasks on 2 worker(s) in 44.3 s, ...
    OUT_DIR/figures/fig3_slices.png
    ...
    OUT_DIR/figures/fig6_timelapse.gif
    OUT_DIR/figures/neuroglancer.png                                    (with --screenshot)
    view it:  chunked-fnet view OUT_DIR/prediction.zarr --input OUT_DIR/timelapse.zarr

The metrics vary a little with the machine's torch build.
With --view, the last step serves both stores on 127.0.0.1 and opens neuroglancer until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

STRUCTURES = ("dna", "membrane", "mitochondria")


def _step(text: str, start: float) -> None:
    print(f"{text} in {time.perf_counter() - start:.0f} s", flush=True)


def make_data(out: Path) -> tuple[list[str], str]:
    from chunked_fnet.synth.dataset import SynthConfig, generate

    start = time.perf_counter()
    grid = {"size_z": 32, "size_y": 192, "size_x": 192, "voxel_size": (0.29, 0.145, 0.145), "chunks": (32, 192, 192)}
    train = generate(SynthConfig(fovs=4, seed=0, **grid), out / "train.zarr", progress=False)
    timelapse = generate(SynthConfig(size_t=6, seed=11, **grid), out / "timelapse.zarr", progress=False)[0]
    _step(f"synthetic data: {out / 'train.zarr'} ({len(train)} fields of view), {timelapse} (6 frames)", start)
    return train, timelapse


def train_ensemble(out: Path, structures: list[str], iterations: int) -> list[Path]:
    from chunked_fnet.synth.dataset import CHANNEL_COLORS
    from chunked_fnet.train.trainer import TrainConfig, train

    models = []
    for structure in structures:
        images = [{"path": f"train.zarr/{i}", "input_channel": "brightfield", "target_channel": structure} for i in range(4)]
        (out / f"manifest_{structure}.yaml").write_text(yaml.safe_dump({"images": images}))
        config = TrainConfig(
            manifest=str(out / f"manifest_{structure}.yaml"), output=str(out / f"run_{structure}"), structure=structure,
            color=CHANNEL_COLORS[structure], model={"depth": 3, "width": 8}, voxel_size=(0.29, 0.29, 0.29),
            patch_shape=(16, 32, 32), batch_size=4, iterations=iterations, n_train=3, checkpoint_every=iterations,
            validate_every=iterations, validation_patches=0, workers=0,
        )
        start = time.perf_counter()
        models.append(train(config, progress=False))
        _step(f"trained {structure} ({iterations} iterations)", start)
    return models


def evaluate(out: Path, structures: list[str]) -> Path:
    from chunked_fnet.evaluate.report import evaluate_run, summarize, write_report

    rows = [row for s in structures for row in evaluate_run(out / f"run_{s}", progress=False)]
    table, _ = write_report(rows, out / "eval")
    print(f"{'structure':<14}{'split':<7}{'n':>2}  {'normalised error':>16}  {'Pearson r':>9}")
    for (structure, split), m in sorted(summarize(rows).items()):
        print(f"{structure:<14}{split:<7}{int(m['n']):>2}  {m['normalized_error']:>16.3f}  {m['pearson_r']:>9.3f}")
    return table


def predict_timelapse(timelapse: str, models: list[Path], out: Path) -> Path:
    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import PredictOptions, predict

    with local_client(ClusterSpec(n_workers=2)) as client:
        _, summary = predict(
            timelapse, models, out / "prediction.zarr",
            options=PredictOptions(chunks=(32, 96, 96)), client=client, progress=False,  # patch auto: the 32x96x96 frame in one patch
        )
    print(f"predicted {timelapse} -> {summary}")
    return out / "prediction.zarr"


def figures(out: Path, prediction: Path, timelapse: str, metrics: Path) -> list[Path]:
    from chunked_fnet import open_image
    from chunked_fnet.viz import figures as fig

    pred, image = open_image(prediction), open_image(timelapse)
    folder = out / "figures"
    written = [
        fig.save_figure(fig.slices_figure(image, pred), folder / "fig3_slices.png", overwrite=True),
        fig.save_figure(fig.metrics_figure(fig.read_metrics(metrics), fig.channel_colors(pred)), folder / "fig4b_metrics.png", overwrite=True),
        fig.save_figure(fig.overlay_figure(pred, image), folder / "fig5_overlay.png", overwrite=True),
        fig.save_figure(fig.timelapse_figure(pred, image), folder / "fig6_timelapse.png", overwrite=True),
        fig.timelapse_gif(pred, folder / "fig6_timelapse.gif", overwrite=True),
    ]
    print("\n".join(str(p) for p in written))
    return written


def screenshot_tool() -> Callable[..., Any]:
    """The headless-Chromium screenshot is test tooling (tests/browser.py), not part of the package:
    found in this source checkout, checked before the long run starts."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        from browser import screenshot_neuroglancer
    except ImportError as exc:
        raise SystemExit(f"--screenshot needs tests/browser.py of a chunked_fnet source checkout and websocket-client ({exc})") from None
    return screenshot_neuroglancer


def view(prediction: Path, timelapse: str, screenshot: Path | None, stay: bool, take: Callable[..., Any] | None = None) -> None:
    from chunked_fnet.viz.neuroglancer import open_view

    with open_view(prediction, timelapse, layout="xy") as session:
        if screenshot is not None and take is not None:
            take(session.viewer_url, screenshot, width=1000, height=760, overwrite=True)
            print(screenshot)
        if stay:
            print(f"neuroglancer: {session.viewer_url}  (Ctrl-C to stop)", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    print(f"view it:  chunked-fnet view {prediction} --input {timelapse}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="example_end_to_end")
    parser.add_argument("--structures", nargs="+", default=list(STRUCTURES))
    parser.add_argument("--iterations", type=int, default=300, help="training iterations per structure")
    parser.add_argument("--screenshot", action="store_true", help="save the neuroglancer view as figures/neuroglancer.png (needs chromium)")
    parser.add_argument("--view", action="store_true", help="serve the result and keep neuroglancer open until Ctrl-C")
    args = parser.parse_args()
    take = screenshot_tool() if args.screenshot else None
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} already exists and is not empty; choose another OUT_DIR (nothing is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    from chunked_fnet.memory import bound_heap_growth

    bound_heap_growth()
    _, timelapse = make_data(out)
    models = train_ensemble(out, args.structures, args.iterations)
    metrics = evaluate(out, args.structures)
    prediction = predict_timelapse(timelapse, models, out)
    figures(out, prediction, timelapse, metrics)
    view(prediction, timelapse, out / "figures" / "neuroglancer.png" if args.screenshot else None, args.view, take)


if __name__ == "__main__":
    main()
