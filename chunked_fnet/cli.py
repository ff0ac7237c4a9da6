"""The ``chunked-fnet`` command line: one subcommand per job, errors as one readable line."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from chunked_fnet.memory import bound_heap_growth
from chunked_fnet.config import explain
from chunked_fnet.errors import ChunkedFnetError, InputError, one_line
from chunked_fnet.io.store import redact
from chunked_fnet.train.augment import AUGMENTATIONS

if TYPE_CHECKING:
    from chunked_fnet.predict.options import PredictOptions

DEMO_DIR = Path("chunked_fnet_demo")


def _synth_config(args: argparse.Namespace) -> Any:
    from chunked_fnet.config import build, load_yaml_config
    from chunked_fnet.synth.dataset import SynthConfig

    flags: dict[str, Any] = {}
    if args.size is not None:
        flags.update(zip(("size_t", "size_z", "size_y", "size_x"), args.size, strict=True))
    for key in ("fovs", "seed", "time_interval", "levels", "version"):
        flags[key] = getattr(args, key)
    flags["voxel_size"] = tuple(args.voxel_size) if args.voxel_size is not None else None
    flags["chunks"] = tuple(args.chunks) if args.chunks is not None else None
    if args.config:
        return load_yaml_config(SynthConfig, args.config, flags)
    return build(SynthConfig, {k: v for k, v in flags.items() if v is not None}, "synth settings")


def cmd_synth(args: argparse.Namespace) -> int:
    from chunked_fnet.synth.dataset import generate, summary

    config = _synth_config(args)
    bound_heap_growth()  # this process only: large arrays back to the system when freed
    start = time.perf_counter()
    paths = generate(config, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    print(summary(paths, config, time.perf_counter() - start))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from chunked_fnet.io.convert import convert_tiff
    from chunked_fnet.io.reader import open_image
    from chunked_fnet.io.vendor import convert_vendor, is_tiff

    options = dict(
        voxel_size=args.voxel_size,
        time_interval=args.time_interval,
        channel_names=args.channel_names,
        chunks=args.chunks,
        version=args.version or "0.5",
        levels=args.levels or 1,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    reader = args.reader if args.reader != "auto" else ("tiff" if is_tiff(args.source) else "bioio")
    if reader == "tiff":
        out = convert_tiff(args.source, args.out, axes=args.axes, **options)
        print(describe_image(open_image(out)))
        return 0
    if args.axes is not None:
        raise InputError("--axes relabels a TIFF's dimensions; bioio reads the axes of this file from its metadata")
    import zarr

    out = convert_vendor(args.source, args.out, **options)
    n_series = len([k for k in zarr.open_group(str(out), mode="r").group_keys() if k.isdigit()])
    if n_series == 0:  # one scene: a plain image
        print(describe_image(open_image(out)))
        return 0
    print(f"{out}: a collection of {n_series} series, one per scene")
    for key in range(n_series):
        print(describe_image(open_image(out, series=key)))
    return 0


def describe_image(image: Any) -> str:
    """One block of text about an opened image: what a user checks first."""
    chunks = tuple(c[0] for c in image.data.chunks)
    lines = [
        f"{image.attrs['source']}  (OME-NGFF {image.attrs['ngff_version']}, level {image.attrs['level']} of {image.attrs['n_levels']})",
        f"  dims {', '.join(image.dims)}  shape {tuple(image.shape)}  chunks {chunks}  {image.dtype}",
        "  scale " + ", ".join(f"{d}={s:g} {image.attrs['units'].get(d) or ''}".rstrip() for d, s in image.attrs["scale"].items()),
    ]
    if "c" in image.dims:
        lines.append(f"  channels: {', '.join(str(c) for c in image['c'].values)}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from chunked_fnet.train.trainer import load_train_configs, train_many

    overrides = {
        "iterations": args.iterations, "output": args.output, "workers": args.workers, "device": args.device, "precision": args.precision,
        "augment": args.augment,
    }
    configs = load_train_configs(args.config, overrides, structures=args.structures)
    checkpoints = train_many(configs, resume=args.resume, progress=not args.no_progress)
    for config, checkpoint in zip(configs, checkpoints, strict=True):
        throughput = json.loads((Path(config.output) / "throughput.json").read_text())
        print(f"{config.structure}: model {checkpoint}; losses {Path(config.output) / 'losses.csv'} ({Path(config.output) / 'losses.png'})")
    if throughput.get("iterations"):
        print(
            f"{throughput['iterations_per_s']:.3g} iterations/s in {throughput['precision']} "
            f"({len(configs)} structure(s) per iteration; {100 * throughput['data_wait_fraction']:.0f} % of the time waiting for data)"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from chunked_fnet.evaluate.report import evaluate_run, summarize, write_report
    from chunked_fnet.predict import PredictOptions

    options = PredictOptions(precision=args.precision)
    rows = [row for run in args.runs for row in evaluate_run(run, options=options, progress=not args.no_progress)]
    table, figure = write_report(rows, args.out)
    columns = (("normalized_error", "norm. error"), ("pearson_r", "Pearson r"), ("ssim", "SSIM"), ("psnr_db", "PSNR dB"),
               ("fsc_resolution_um", "FSC µm"))
    print(f"{'structure':<18}{'split':<11}{'n':>3}" + "".join(f"  {label:>15}" for _, label in columns))
    for (structure, split), m in sorted(summarize(rows).items()):
        print(f"{structure:<18}{split:<11}{int(m['n']):>3}" + "".join(f"  {m[k]:>7.3f} ± {m[k + '_std']:<5.3f}" for k, _ in columns))
    print(f"per image: {table}\nfigure: {figure}")
    return 0


def cmd_import_fnet(args: argparse.Namespace) -> int:
    """Import a pytorch_fnet checkpoint; ask for the metadata the file does not hold when run interactively."""
    from chunked_fnet.model import MissingMetadataError, import_pytorch_fnet, save_checkpoint

    given: dict[str, Any] = {"structure": args.structure, "voxel_size": tuple(args.voxel_size) if args.voxel_size else None}
    while True:
        try:
            model, card = import_pytorch_fnet(args.source, input_channel=args.input_channel, color=args.color, **given)
            break
        except MissingMetadataError as exc:
            if not sys.stdin.isatty():
                raise
            print(exc, file=sys.stderr)
            for name in exc.missing:
                if name == "structure":
                    given["structure"] = input("target structure name (e.g. dna): ").strip()
                else:
                    values = input("voxel size the model was trained at, z y x in µm (e.g. 0.29 0.29 0.29): ").split()
                    given["voxel_size"] = tuple(float(v) for v in values)
    out = save_checkpoint(args.out, model, card, overwrite=args.overwrite)
    print(f"{out}: {card.structure}, {card.architecture.dims}D U-Net depth {card.architecture.depth} width {card.architecture.width}, voxel {card.voxel_size} µm")
    return 0


def cmd_export_bioimageio(args: argparse.Namespace) -> int:
    from chunked_fnet.model.bioimageio_export import export_bioimageio

    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise InputError("export-bioimageio needs bioimageio.core: pip install 'chunked_fnet[bioimageio]'") from None
    out = export_bioimageio(
        args.checkpoint, args.out, sample=args.sample, authors=args.author or (), license=args.license, halo=args.halo, overwrite=args.overwrite,
    )
    print(f"{out}: bioimage.io model package; check it with: bioimageio test {out}")
    return 0


#: PredictOptions fields whose flags are not (only) ``--field-name``: the spellings scripts already use.
PREDICT_FLAGS = {
    "input_channel": ("--input-channel", "--channel"),
    "patch_shape": ("--patch-shape", "--patch"),
    "tta_flips": ("--tta-flips", "--tta"),
    "version": ("--ngff-version",),  # not --version, which reads as the program's version
}
ZYX = ("Z", "Y", "X")
PREDICT_METAVARS = {"time": ("START", "STOP"), "patch_shape": ZYX, "chunks": ZYX, "shards": ZYX}


def predict_options(args: argparse.Namespace) -> PredictOptions:
    """The run's PredictOptions: the ``--config`` YAML (if any), then the flags given on top of it."""
    from chunked_fnet.config import build, load_yaml_config
    from chunked_fnet.flags import model_overrides
    from chunked_fnet.predict.options import PredictOptions

    overrides = model_overrides(args, PredictOptions)
    if args.config:
        return load_yaml_config(PredictOptions, args.config, overrides)
    return build(PredictOptions, overrides, "predict options")


def cmd_predict(args: argparse.Namespace) -> int:
    from chunked_fnet.cluster import ClusterSpec, load_cluster_spec
    from chunked_fnet.predict import predict

    options = predict_options(args)
    # a lost scheduler ends in our one-line error with the --resume hint; distributed's own client-side
    # lines about it ("Failed to reconnect", "Batched Comm Closed" with its traceback) would only repeat it
    for name in ("distributed.client", "distributed.batched"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.scheduler:
        spec = ClusterSpec(kind="scheduler", address=args.scheduler)
    elif args.cluster:
        spec = load_cluster_spec(args.cluster)
    else:
        spec = ClusterSpec(**({"n_workers": args.workers} if args.workers else {}))
    from chunked_fnet.io.plate import is_plate

    if is_plate(args.input):
        if args.follow:
            raise InputError(f"{args.input} is a plate; --follow follows one growing time-lapse image")
        return _predict_plate(args, options, spec)
    if args.follow:
        return _follow(args, options, spec)
    if args.idle_timeout is not None or args.poll is not None:
        raise InputError("--idle-timeout and --poll are for --follow, which this command does not pass")
    if args.wells:
        raise InputError(f"{args.input} is not an OME-Zarr plate; --wells selects wells of a plate")
    output, summary = predict(
        args.input, args.models, args.out, options=options, client=spec, series=args.series,
        overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
    )
    print(summary)
    print(describe_image(output))
    print(f"view it: napari {args.out}  (napari-ome-zarr), or serve it and open it in neuroglancer")
    return 0


def _follow(args: argparse.Namespace, options: Any, spec: Any) -> int:
    """Predict a time-lapse while it is written (predict/follow.py)."""
    from chunked_fnet.io.reader import open_image
    from chunked_fnet.predict.follow import follow

    summary = follow(
        args.input, args.models, args.out, options=options, client=spec, series=args.series, overwrite=args.overwrite,
        resume=args.resume, idle_timeout=args.idle_timeout, poll=args.poll, progress=not args.no_progress,
    )
    print(summary)
    print(describe_image(open_image(args.out)))
    return 0


def _predict_plate(args: argparse.Namespace, options: Any, spec: Any) -> int:
    """Every field of a plate (or of ``--wells``) into an output plate; exit status 2 when a field was refused."""
    from chunked_fnet.predict import predict_plate

    if args.series is not None:
        raise InputError(f"{args.input} is a plate; choose wells with --wells, not --series")
    summary = predict_plate(
        args.input, args.models, args.out, options=options, wells=args.wells, client=spec,
        overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
    )
    print(summary)
    print(f"view it: napari {args.out}  (napari-ome-zarr)")
    if summary.refused:
        print(f"chunked-fnet predict: error: {len(summary.refused)} field(s) of {args.input} refused, the others were predicted: "
              + "; ".join(f"{k}: {v}" for k, v in summary.refused.items()), file=sys.stderr)
        return 2
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from chunked_fnet.io.reader import image_attributes, open_image

    print(describe_image(open_image(args.path, level=args.level, series=args.series)))
    made = image_attributes(args.path, series=args.series).get("chunked_fnet")
    if isinstance(made, dict):
        print("\n".join(describe_provenance(made)))
    return 0


def describe_provenance(made: dict[str, Any]) -> list[str]:
    """What made a predicted image, from its ``chunked_fnet`` attribute (predict/prepare.py:provenance)."""
    lines = [f"  made by chunked_fnet {made.get('version', '?')} ({made.get('method', 'chunked_fnet.predict')})"]
    source = made.get("input") or {}
    if source:
        times = source.get("time_points")
        lines.append(
            f"  from {source.get('path')} (level {source.get('level')}, channel {source.get('channel')}, z/y/x offset "
            f"{source.get('offset_zyx')}, shape {source.get('shape_zyx')}" + (f", t {times[0]}..{times[1]})" if times else ")")
        )
    for card in (made.get("models") or {}).get("cards", []):
        training = card.get("training") or {}
        trained = f"; trained {training.get('iterations')} iterations on {training.get('dataset')}" if training else ""
        lines.append(f"  model {card.get('structure', '?')}: {card.get('file')} ({card.get('format')}), sha256 {str(card.get('sha256'))[:12]}{trained}")
    window = made.get("window") or {}
    if window:
        lines.append(
            f"  window: patch {'x'.join(map(str, window.get('patch', [])))}, overlap {window.get('overlap')}, blend {window.get('blend')}, "
            f"each voxel evaluated {window.get('recompute')}x; TTA flips {'on' if made.get('tta_flips') else 'off'}"
        )
    precision = made.get("precision") or {}
    if precision:
        lines.append(f"  precision: {precision.get('chosen')} ({precision.get('why')})")
        check = precision.get("check")
        if isinstance(check, dict):  # predict/precision_check.py; outputs made before it have none
            bound = check.get("bound") or {}
            lines.append(
                f"  precision check against fp32 on a {'x'.join(map(str, check.get('patch', [])))} patch on {check.get('device')}: "
                f"r {check.get('r')}, max |diff| {check.get('max_over_std')} x std ({check.get('worst')}); bound r >= "
                f"{bound.get('min_r')}, max <= {bound.get('max_over_std')} x std; {check.get('seconds')} s"
                + (f", kept by its worker from a check on {check.get('measured_on')}" if check.get("reused") else "")
            )
    return lines


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default job, end to end on this machine: synthetic time-lapse -> train small
    models -> chunked ensemble prediction on a local dask cluster of worker processes."""
    import yaml

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import PredictOptions, predict
    from chunked_fnet.synth.dataset import CHANNEL_COLORS, SynthConfig, generate, summary
    from chunked_fnet.train.trainer import TrainConfig, train

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"{out} already exists and is not empty; pass --overwrite or choose another --out")
    if out.exists() and args.overwrite:
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    bound_heap_growth()
    progress = not args.no_progress
    config = SynthConfig(size_t=3, size_z=32, size_y=160, size_x=160, fovs=4, voxel_size=(0.29, 0.29, 0.29), chunks=(32, 160, 160))
    start = time.perf_counter()
    paths = generate(config, out / "synthetic.zarr", progress=progress)
    print(summary(paths, config, time.perf_counter() - start))
    models = []
    for structure in args.structures:
        images = [{"path": f"synthetic.zarr/{i}", "input_channel": "brightfield", "target_channel": structure, "time_points": [0]} for i in range(3)]
        (out / f"manifest_{structure}.yaml").write_text(yaml.safe_dump({"images": images}))
        settings = TrainConfig(
            manifest=str(out / f"manifest_{structure}.yaml"), output=str(out / f"run_{structure}"), structure=structure,
            color=CHANNEL_COLORS[structure], model={"depth": 2, "width": 8}, patch_shape=(16, 32, 32), batch_size=4,
            iterations=args.iterations, n_train=3, checkpoint_every=args.iterations, validate_every=args.iterations,
            validation_patches=0, workers=0,
        )
        start = time.perf_counter()
        models.append(train(settings, progress=progress))
        print(f"trained {structure} ({args.iterations} iterations, {time.perf_counter() - start:.0f} s): {models[-1]}")
    with local_client(ClusterSpec(n_workers=2)) as client:
        output, run = predict(
            paths[-1], models, out / "prediction.zarr", options=PredictOptions(chunks=(32, 96, 96)),
            client=client, progress=progress,
        )
    print(run)
    print(describe_image(output))
    print(
        f"\nthe held-out field of view {paths[-1]} (3 time points) was predicted into {out / 'prediction.zarr'}\n"
        f"open it in Python:  chunked_fnet.open_image('{out / 'prediction.zarr'}')\n"
        f"view it:  napari {out / 'prediction.zarr'}   (with napari-ome-zarr)"
    )
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """Serve the stores on 127.0.0.1 and show them in neuroglancer until interrupted (Ctrl-C)."""
    import webbrowser

    from chunked_fnet.viz.neuroglancer import layer_summary, open_view

    # This command runs until stopped, so it must stop on Ctrl-C and on SIGTERM even when started in
    # the background by a shell or a test runner, which start their children with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    with open_view(
        args.prediction, args.input, input_channel=args.channel, input_series=args.series, layout=args.layout,
        contrast=args.contrast, port=args.port, proxy=args.proxy,
    ) as session:
        for layer in layer_summary(session.state):
            print(f"layer {layer['name']!r}: {layer['source']}" + (f" channel {layer['channel'][0]:g}" if layer["channel"] else ""))
        if session.server is not None:
            print(f"serving the stores at {session.server.url} (127.0.0.1 only, CORS, range requests)")
        print(f"neuroglancer viewer: {session.viewer_url}")
        print(f"neuroglancer state URL (any neuroglancer client, while this runs): {session.state_url(args.client)}")
        print("press Ctrl-C to stop", flush=True)
        if not args.no_browser:
            webbrowser.open(session.viewer_url)
        try:
            if args.seconds is not None:
                time.sleep(args.seconds)
            else:
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    """Draw one of the paper's figures from a prediction (or an evaluation's metrics) into a PNG."""
    from chunked_fnet.io.reader import open_image
    from chunked_fnet.viz import figures

    if args.kind == "metrics":
        colors = figures.channel_colors(open_image(args.colors_from)) if args.colors_from else None
        fig = figures.metrics_figure(figures.read_metrics(args.source), colors)
        print(f"figure: {figures.save_figure(fig, args.out, overwrite=args.overwrite)}")
        return 0
    prediction = open_image(args.source)
    image = open_image(args.input) if args.input else None
    common = {"structures": args.structures, "input_channel": args.channel}
    if args.kind == "slices":
        if image is None:
            raise InputError("figure slices needs --input: the image that was predicted (its transmitted light and targets)")
        fig = figures.slices_figure(image, prediction, t=args.time, z=args.z, **common)
    elif args.kind == "overlay":
        fig = figures.overlay_figure(prediction, image, t=args.time, z=args.z, y=args.y, **common)
    else:
        if args.gif:  # checked before the PNG is written, so a refusal leaves nothing half done
            figures.check_output(args.gif, (".gif",), args.overwrite)
        fig = figures.timelapse_figure(prediction, image, z=args.z, times=args.times, max_frames=args.frames, **common)
    print(f"figure: {figures.save_figure(fig, args.out, overwrite=args.overwrite)}")
    if args.kind == "timelapse" and args.gif:
        gif = figures.timelapse_gif(prediction, args.gif, structures=args.structures, z=args.z, overwrite=args.overwrite)
        print(f"video: {gif}")
    return 0


class _DeferredParser(argparse.ArgumentParser):
    """A subcommand's parser that adds some arguments only when that subcommand is used (parsed or
    helped): the predict flags come from PredictOptions, whose import (chunked_fnet.predict, torch)
    the other commands need not pay for."""

    def __init__(self, *args: Any, add_later: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_later = add_later

    def _complete(self) -> None:
        add, self._add_later = self._add_later, None
        if add is not None:
            add(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()


def _predict_option_flags(p: argparse.ArgumentParser) -> None:
    """A flag per PredictOptions field, generated from the model: same names, types, choices and help."""
    from chunked_fnet.flags import add_model_flags
    from chunked_fnet.predict.options import PredictOptions

    group = p.add_argument_group("prediction options", "each is also a key of the --config YAML (chunked_fnet.predict.PredictOptions)")
    add_model_flags(group, PredictOptions, PREDICT_FLAGS, PREDICT_METAVARS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chunked-fnet",
        description="Label-free prediction of 3D fluorescence from transmitted light, on chunked OME-Zarr.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_DeferredParser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--overwrite", action="store_true", help="replace an existing output (never the default)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("synth", help="generate a synthetic paired dataset (bright-field + fluorescence) as OME-Zarr")
    p.add_argument("out", help="output OME-Zarr path or URL")
    p.add_argument("--config", help="YAML file of SynthConfig settings (flags override it)")
    p.add_argument("--size", nargs=4, type=int, metavar=("T", "Z", "Y", "X"), help="time points and stack size in voxels")
    p.add_argument("--fovs", type=int, help="number of fields of view (>1 writes a collection: OUT/0, OUT/1, ...)")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), help="µm (default 0.29 0.108 0.108; the paper's time-lapse used 0.065 lateral)")
    p.add_argument("--time-interval", type=float, help="seconds between frames")
    p.add_argument("--seed", type=int)
    p.add_argument("--chunks", nargs=3, type=int, metavar=("Z", "Y", "X"))
    p.add_argument("--levels", type=int, help="pyramid levels")
    p.add_argument("--ngff-version", dest="version", choices=("0.4", "0.5"))
    common(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("convert", help="convert a TIFF / OME-TIFF stack or a vendor file (CZI, ND2, LIF, ... via bioio) to OME-Zarr")
    p.add_argument("source", help="TIFF or OME-TIFF file; or any file bioio reads (CZI, ND2, LIF, ...: pip install 'chunked_fnet[vendor]')")
    p.add_argument("out", help="output OME-Zarr path")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), help="µm; overrides the file's pixel sizes")
    p.add_argument("--time-interval", type=float, help="seconds per frame; overrides the file")
    p.add_argument("--channel-names", nargs="+", help="one name per channel; overrides the file")
    p.add_argument("--axes", help="axes of the TIFF series, e.g. TZCYX, when the file's guess is wrong")
    p.add_argument(
        "--reader",
        choices=("auto", "tiff", "bioio"),
        default="auto",
        help="auto (default): tifffile for .tif/.tiff (first series), bioio for anything else (every scene; "
        "several scenes make a collection OUT/0, OUT/1, ...); bioio also reads a multi-scene OME-TIFF",
    )
    p.add_argument("--chunks", nargs=5, type=int, metavar=("T", "C", "Z", "Y", "X"))
    p.add_argument("--levels", type=int, help="pyramid levels")
    p.add_argument("--ngff-version", dest="version", choices=("0.4", "0.5"))
    common(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("train", help="train one U-Net per structure (see configs/train_*.yaml)")
    p.add_argument("--config", required=True, help="YAML TrainConfig (with a 'structures:' list: one run per structure, sharing the reading)")
    p.add_argument(
        "--structures", nargs="+", metavar="NAME",
        help="train these structures in one run, each on the image channel of its name, into OUTPUT/NAME",
    )
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="override the config's precision (auto: bf16 where native)")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's output directory exactly")
    p.add_argument(
        "--augment", choices=AUGMENTATIONS,
        help="override the config's augmentation: training patches flipped in y, x (flips) or also turned by 90 degrees "
        "(dihedral); for bright-field and phase, never DIC (none: the paper's)",
    )
    p.add_argument("--iterations", type=int, help="override the config's iterations")
    p.add_argument("--output", help="override the config's run directory")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="normalised error, Pearson r, SSIM, PSNR, NRMSE and FSC resolution of trained runs on their train/test splits"
    )
    p.add_argument("runs", nargs="+", help="training run directories")
    p.add_argument("--out", required=True, help="folder for metrics.csv and metrics.png")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="what the models compute in (auto: as predict chooses it; the window is predict's too)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="chunked ensemble prediction of an OME-Zarr image on a dask cluster", add_later=_predict_option_flags)
    p.add_argument("input", help="input OME-Zarr image or HCS plate (path or URL)")
    p.add_argument("--models", nargs="+", required=True, help="one checkpoint or bioimage.io package (.zip) per structure (e.g. dna.ckpt er_bioimageio.zip)")
    p.add_argument("--out", required=True, help="output OME-Zarr (never overwritten without --overwrite)")
    p.add_argument("--config", help="YAML PredictOptions (flags override it)")
    p.add_argument("--series", help="image of a bioformats2raw collection")
    p.add_argument("--wells", nargs="+", metavar="WELL", help="of an HCS plate input: predict only these wells (e.g. A/1 B/3; default: every well)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run into --out: compute only the chunks not yet recorded as done")
    p.add_argument("--follow", action="store_true",
                   help="follow a time-lapse being written: predict every complete frame, then each new one as it completes, appending it "
                   "to --out; ends when the writer sets the image attribute acquisition_complete: true, after --idle-timeout, or on Ctrl-C/SIGTERM")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="with --follow: stop after S seconds without a new frame (default: never)")
    p.add_argument("--poll", type=float, metavar="S", help="with --follow: seconds between looks at the input (default 0.5)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://127.0.0.1:8786")
    where.add_argument("--cluster", help="cluster spec YAML (cluster/*.yaml)")
    where.add_argument("--workers", type=int, help="local worker processes (default: 1, on every usable core)")
    common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("import-fnet", help="import a pytorch_fnet checkpoint (loaded with weights_only) as a safetensors checkpoint")
    p.add_argument("source", help="pytorch_fnet model.p file or model directory")
    p.add_argument("out", help="output checkpoint folder, e.g. dna.ckpt")
    p.add_argument("--structure", help="target structure name (asked for when missing and interactive)")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), help="µm the model was trained at")
    p.add_argument("--input-channel", default="brightfield", help="transmitted-light channel name or index")
    p.add_argument("--color", default="FFFFFF", help="hex colour for viewers")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_import_fnet)

    p = sub.add_parser("export-bioimageio", help="write a checkpoint as a bioimage.io model package (.zip, model spec 0.5)")
    p.add_argument("checkpoint", help="checkpoint folder, e.g. dna.ckpt")
    p.add_argument("out", help="output package, e.g. dna_bioimageio.zip (never overwritten without --overwrite)")
    p.add_argument("--sample", help="OME-Zarr image whose first frame's centre becomes the test input, mirrored where thinner than the network takes (default: a seeded random volume)")
    p.add_argument("--author", action="append", metavar="NAME", help="an author's name (repeat for several; default: the current user)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX license id of the weights (default CC-BY-4.0)")
    p.add_argument("--halo", type=int, help="model voxels a tile's output is cropped by where tiles meet; 2 * halo a multiple of 2**depth, and the minimum input grows to fit it (default: none, so the minimum is the U-Net's multiple and thin stacks are not padded)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.set_defaults(func=cmd_export_bioimageio)

    p = sub.add_parser("info", help="describe an OME-Zarr image")
    p.add_argument("path")
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--series", help="image of a bioformats2raw collection")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="the embedded default job: synthetic time-lapse, train small models, chunked prediction on a local cluster")
    p.add_argument("--out", default=str(DEMO_DIR), help=f"working directory (default {DEMO_DIR})")
    p.add_argument("--structures", nargs="+", default=["dna", "nuclear_envelope"], help="structures to train and predict")
    p.add_argument("--iterations", type=int, default=150, help="training iterations per structure")
    common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("view", help="show a prediction (and its input) in neuroglancer, served from this machine on 127.0.0.1")
    p.add_argument("prediction", help="predicted OME-Zarr (NGFF 0.4 or 0.5), local path or http(s)/gs/s3 URL")
    p.add_argument("--input", help="the transmitted-light OME-Zarr it was predicted from (shown as a grey layer)")
    p.add_argument("--series", help="image of a bioformats2raw collection given as --input")
    p.add_argument("--channel", default="brightfield", help="transmitted-light channel of --input, name or index")
    p.add_argument("--layout", default="4panel", choices=("4panel", "xy", "xz", "yz", "3d", "xy-3d"), help="neuroglancer layout")
    p.add_argument("--contrast", choices=("data", "file"), default="data",
                   help="display ranges from the data (default) or the ones stored in the files (omero window)")
    p.add_argument("--port", type=int, default=0, help="port of the store server (default: any free one)")
    p.add_argument(
        "--proxy", action="store_true",
        help="serve s3:// (or other remote) stores through 127.0.0.1 with this machine's credentials: private buckets",
    )
    p.add_argument("--client", help="neuroglancer client for the printed state URL (default: the public demo client)")
    p.add_argument("--no-browser", action="store_true", help="print the URLs only; do not open a browser")
    p.add_argument("--seconds", type=float, help="stop after this many seconds instead of waiting for Ctrl-C")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("figure", help="draw the paper's figures (PNG) from a prediction or an evaluation")
    kinds = p.add_subparsers(dest="kind", required=True)
    for kind, text in (
        ("slices", "z-slices of input / target / prediction side by side (Figure 3)"),
        ("overlay", "merged multi-structure colour overlay of an ensemble prediction, xy and xz (Figure 5)"),
        ("timelapse", "montage of merged predictions over time, optionally an animated GIF (Figure 6)"),
    ):
        k = kinds.add_parser(kind, help=text)
        k.add_argument("source", metavar="PRED.zarr", help="predicted OME-Zarr")
        k.add_argument("--input", required=kind == "slices", help="the OME-Zarr that was predicted (transmitted light, targets)")
        k.add_argument("--out", required=True, help="PNG file to write (never overwritten without --overwrite)")
        k.add_argument("--structures", nargs="+", help="predicted channels to show (default: all)")
        k.add_argument("--channel", default="brightfield", help="transmitted-light channel of --input, name or index")
        k.add_argument("--z", type=float, help="z of the xy plane in µm (default: the prediction's middle plane)")
        if kind == "timelapse":
            k.add_argument("--times", nargs="+", type=int, help="time indices of the prediction to show (default: evenly spaced)")
            k.add_argument("--frames", type=int, default=6, help="at most this many time points (default 6)")
            k.add_argument("--gif", help="also write an animated GIF of every time point")
        else:
            k.add_argument("--time", type=int, default=0, help="time index of the prediction (default 0)")
        if kind == "overlay":
            k.add_argument("--y", type=float, help="y of the xz plane in µm (default: the middle)")
        k.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        k.set_defaults(func=cmd_figure)
    k = kinds.add_parser("metrics", help="per-structure metrics of chunked-fnet evaluate, train and test (Figure 4b)")
    k.add_argument("source", metavar="METRICS.csv", help="metrics.csv from chunked-fnet evaluate (or its folder)")
    k.add_argument("--out", required=True, help="PNG file to write (never overwritten without --overwrite)")
    k.add_argument("--colors-from", help="an OME-Zarr prediction whose channel colours (model cards) to use")
    k.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    k.set_defaults(func=cmd_figure)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (how SLURM, Kubernetes and a shell stop a job), raised like Ctrl-C so that the same cleanup runs."""


def _terminate(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup; SIGKILL still ends it
    raise Terminated


#: What a stopped command leaves, and how to go on (every long command leaves nothing that blocks its rerun).
AFTER_A_STOP = {
    "predict": "chunks finished so far are kept: rerun with --resume to compute only the rest",
    "train": "the last checkpoint is kept: rerun with --resume to continue from it",
    "convert": "the half-written output was removed: rerun to convert again",
    "synth": "the half-written output was removed: rerun to generate again",
}


#: A stopped command's exit codes, as a shell reports a process its signal ended: 128 + the signal's number.
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT

AFTER_A_FOLLOW = "the frames predicted so far are kept: rerun with --follow --resume to go on"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    with warnings.catch_warnings():  # the filter a stop sets in _run ends with the command
        code = _run(args, previous)
        if code in (EXIT_TERMINATED, EXIT_INTERRUPTED):
            gc.collect()  # a stopped traceback held in a reference cycle is freed while that filter holds
        return code


def _run(args: argparse.Namespace, previous: Any) -> int:
    try:
        return int(args.func(args))
    except ChunkedFnetError as exc:
        print(f"chunked-fnet {args.command}: error: {one_line(redact(str(exc)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # A stop that lands while zarr hands a coroutine to its I/O thread leaves that coroutine unawaited; Python
        # reports it ("coroutine ... was never awaited") when the traceback is freed. The stop abandoned it on
        # purpose and the message below says what is kept, so the report is noise to the user.
        warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
        how, code = ("stopped by SIGTERM", EXIT_TERMINATED) if isinstance(exc, Terminated) else ("interrupted", EXIT_INTERRUPTED)
        after = AFTER_A_FOLLOW if getattr(args, "follow", False) else AFTER_A_STOP.get(args.command)
        hint = f" ({after})" if after else ""
        print(f"chunked-fnet {args.command}: {how}{hint}", file=sys.stderr)
        return code
    except ValidationError as exc:  # settings built without config.build: still one line
        print(f"chunked-fnet {args.command}: error: {redact(explain(None, exc, 'invalid settings'))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system refused a file (permissions, a full disk, a file where a folder belongs)
        where = f" ({redact(str(exc.filename))})" if exc.filename else ""
        print(one_line(f"chunked-fnet {args.command}: error: {type(exc).__name__}: {redact(exc.strerror or str(exc))}{where}"), file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
