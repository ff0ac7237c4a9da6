"""Training speed: chunked_fnet's trainer against pytorch_fnet's training loop, bf16 against fp32, and
several structures in one run against one run each.

    python benchmarks/train_speed.py speed              # paper settings, 3 measured iterations, 2 rounds
    python benchmarks/train_speed.py curve              # fp32 vs bf16 loss curves, CPU-example settings
    python benchmarks/train_speed.py multi              # 3 structures in one run vs 3 runs
    python benchmarks/train_speed.py speed --device cuda --iterations 30   # on a GPU

``speed``: the paper's settings (paper U-Net, batch 24, 32x64x64 patches, Adam lr 1e-3, MSE) on
paired synthetic images, three ways, each a fresh subprocess, rounds interleaved (A B C A B C):

* ``pytorch_fnet``: its training loop rebuilt faithfully here (its recursive U-Net with BN and ReLU
  modules, its N(0, 0.02) initialisation, ``Model.train_on_batch``: ``net.train()``, ``zero_grad``,
  forward, MSE, backward, ``Adam.step``, ``loss.item()``; float32, default memory layout, torch's
  default Adam implementation) fed by a ``BufferedPatchDataset``-like buffer: whole z-scored
  images in memory, random patches sliced and stacked in the main process between steps;
* ``chunked_fnet fp32`` and ``chunked_fnet bf16``: :func:`chunked_fnet.train.trainer.train` itself
  (loader workers reading patches from the OME-Zarr store while the step runs), precision pinned.

An iteration's time is the median over the iterations after the first (which builds kernels).
Projected hours = 50,000 x that. Appends a row to BENCHMARKS.md.

``curve``: the CPU example's settings (configs/train_cpu_example.yaml: depth 3, width 16, batch 8,
16x64x64, 450 iterations) trained in fp32 and in bf16 from the same seed on the same data; reports
the final validation loss of each (and their ratio) and the test split's Pearson r and normalised
error, and plots both curves (benchmarks/results/train_bf16_curve.png). ``--last K`` makes the final
validation loss the mean of the last K validations (with a constant learning rate the last iterate
swings). A run already in ``--workdir`` is resumed up to ``--iterations`` (resume is exact), so a longer
curve continues the shorter one instead of training it again.

``heldout`` (after ``curve``): each final model of the curve's runs (``--seeds``) scored on ``--patches``
held-out patches (the test split's images; the first 16 are the runs' own validation patches), in fp32
and in bf16 autocast whatever it trained in, so that both precisions' models get the same measurement:
a run's own validation loss (16 patches, in its own precision) swings by more than the 5 % asked for.

``multi``: dna, nuclear_envelope and membrane (CPU-example model) trained in one run
(``train_many``) against three separate runs of the same settings: wall time and patches read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
from harness.peers import PAPER_TRAINING

SECTION = "Training speed (issue 17)"
COLUMNS = [
    "date", "settings", "device", "pytorch_fnet loop s/it", "chunked_fnet fp32 s/it", "chunked_fnet bf16 s/it",
    "bf16 / pytorch_fnet speed-up", "bf16 / fp32 speed-up", "data wait (bf16)", "projected h for 50,000 it (pytorch_fnet, fp32, bf16)",
    "noise", "command", "machine",
]
CURVE_SECTION = "Training in bf16 against fp32: loss curves (issue 17)"
CURVE_COLUMNS = [
    "date", "settings", "fp32 final val loss", "bf16 final val loss", "bf16 / fp32", "test r fp32, bf16", "test norm. error fp32, bf16",
    "wall fp32, bf16", "command", "machine",
]
HELDOUT_SECTION = "Training in bf16 against fp32: the final models on held-out patches (issue 17)"
HELDOUT_COLUMNS = [
    "date", "settings", "per seed: fp32-trained, bf16-trained (fp32 evaluation)", "bf16 / fp32 per seed", "bf16 / fp32 of the means",
    "fp32 between seeds max/min", "evaluated in bf16 instead: bf16 / fp32 of the means", "command", "machine",
]
MULTI_SECTION = "Several structures in one training run (issue 17)"
MULTI_COLUMNS = ["date", "settings", "structures", "one run: wall, patches read", "separate runs: wall, patches read", "one run / separate (wall)", "command", "machine"]
METHODS = ("pytorch_fnet", "chunked_fnet_fp32", "chunked_fnet_bf16")
COMPILED = "chunked_fnet_bf16_compiled"  # --compile: also torch.compile'd (its first iteration compiles)
PAPER = PAPER_TRAINING  # the paper's settings: harness/peers.py


# ------------------------------------------------------------------------ pytorch_fnet, rebuilt
# pytorch_fnet's network and training loop live with the other peers (benchmarks/harness/peers.py);
# the names stay here for gpu_acceptance.py, which calls them through this module.
from harness.peers import pytorch_fnet_net as _pytorch_fnet_net  # noqa: E402, F401
from harness.peers import run_pytorch_fnet_training as _run_pytorch_fnet  # noqa: E402


def _run_chunked_fnet(
    data: Path, iterations: int, device: str, precision: str, out: Path, compile: bool = False, threads: int | None = None,
    settings: dict | None = None,
) -> dict:
    from chunked_fnet.train.trainer import TrainConfig, train

    config = TrainConfig(
        manifest=str(data / "manifest.yaml"), output=str(out), structure="dna", iterations=iterations, precision=precision,
        device=device, validation_patches=0, checkpoint_every=10**6, compile=compile, threads=threads, **(settings or PAPER),
    )
    train(config, progress=False)
    record = json.loads((out / "throughput.json").read_text())
    return {"iteration_s": record["median_iteration_s"], "data_wait": record["data_wait_fraction"], "record": record}


def _one(args: argparse.Namespace) -> None:
    """Child process: one method, one measurement, a JSON line on stdout."""
    data = Path(args.data)
    if args.method == "pytorch_fnet":
        result = _run_pytorch_fnet(data, args.iterations, args.device, args.threads)
    else:
        precision = args.method.split("_")[2]
        with tempfile.TemporaryDirectory() as tmp:
            result = _run_chunked_fnet(
                data, args.iterations, args.device, precision, Path(tmp) / "run", compile=args.method == COMPILED, threads=args.threads
            )
    print("RESULT " + json.dumps(result))


def _paired_data(folder: Path, fovs: int, shape: tuple[int, int, int], structures: tuple[str, ...] = ("dna",)) -> Path:
    import yaml

    from chunked_fnet.synth.dataset import SynthConfig, generate

    if not (folder / "synth.zarr").exists():
        generate(SynthConfig(size_t=1, size_z=shape[0], size_y=shape[1], size_x=shape[2], fovs=fovs), folder / "synth.zarr", progress=False)
    images = [{"path": f"synth.zarr/{i}", "input_channel": "brightfield", **({"target_channel": "dna"} if structures == ("dna",) else {})} for i in range(fovs)]
    (folder / "manifest.yaml").write_text(yaml.safe_dump({"images": images}))
    return folder


# ------------------------------------------------------------------------------------ sections
def speed(args: argparse.Namespace) -> None:
    data = _paired_data(Path(args.workdir) / "speed", fovs=4, shape=(40, 256, 256))
    methods = METHODS + ((COMPILED,) if args.compile else ())
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(args.rounds):
        for method in methods:
            cmd = [sys.executable, __file__, "_one", "--method", method, "--data", str(data), "--iterations", str(args.iterations), "--device", args.device]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{method} failed:\n{proc.stderr[-3000:]}")
            results[method].append(json.loads(line[0][7:]))
            print(f"round {r + 1} {method}: {results[method][-1]['iteration_s']:.3f} s/it ({C.load_note()})", flush=True)
    s = {m: C.median([x["iteration_s"] for x in results[m]]) for m in METHODS}
    pf, f32, b16 = s["pytorch_fnet"], s["chunked_fnet_fp32"], s["chunked_fnet_bf16"]
    wait = C.median([x["data_wait"] for x in results["chunked_fnet_bf16"]])
    noise = ", ".join(f"{m} ±{C.spread([x['iteration_s'] for x in results[m]]):.0%}" for m in METHODS) + f"; {C.load_note()}"
    hours = ", ".join(f"{50_000 * v / 3600:.1f}" for v in (pf, f32, b16))
    settings = f"paper U-Net, batch 24, 32x64x64, {args.iterations} it ({args.iterations - 1} timed) x {args.rounds} rounds"
    settings += f", torch threads {args.threads}" if args.threads else ", torch threads: all cores"
    if args.compile:
        compiled = C.median([x["iteration_s"] for x in results[COMPILED]])
        first = C.median([x["record"]["first_iteration_s"] for x in results[COMPILED]])
        noise += f"; torch.compile: {compiled:.2f} s/it ({b16 / compiled:.2f}x eager bf16), first iteration (compiling) {first:.0f} s"
    row = C.append_row(SECTION, COLUMNS, [
        C.today(), settings, args.device, f"{pf:.2f}", f"{f32:.2f}", f"{b16:.2f}", f"**{pf / b16:.2f}x**", f"{f32 / b16:.2f}x",
        f"{wait:.1%}", hours, noise, C.command_line(), C.machine(),
    ])
    print(row)
    _save(args, "train_speed", {"seconds_per_iteration": s, "rounds": results})


def curve(args: argparse.Namespace) -> None:
    """fp32 and bf16 from the same seed, for each of ``--seeds``: a single pair differs by as much as two
    fp32 runs of different seeds do (at a few hundred iterations the last validation point still
    swings), so the comparison is made over seeds, beside fp32's own spread between seeds."""
    import yaml

    from chunked_fnet.config import load_yaml_config
    from chunked_fnet.evaluate.report import evaluate_run, summarize
    from chunked_fnet.predict import PredictOptions
    from chunked_fnet.train.trainer import TrainConfig, train

    data = _paired_data(Path(args.workdir) / "curve", fovs=12, shape=(32, 256, 256))
    runs: dict[tuple[str, int], Path] = {}
    walls: dict[tuple[str, int], float] = {}
    summaries: dict[tuple[str, int], dict] = {}
    for seed in args.seeds:
        for precision in ("fp32", "bf16"):
            name = f"run_{precision}" + (f"_seed{seed}" if seed else "") + (f"_val{args.validation_patches}" if args.validation_patches else "")
            run = Path(args.workdir) / "curve" / name
            overrides = {"manifest": str(data / "manifest.yaml"), "output": str(run), "structure": "dna", "precision": precision, "seed": seed}
            overrides |= {"iterations": args.iterations} if args.iterations else {}
            overrides |= {"validation_patches": args.validation_patches} if args.validation_patches else {}
            if args.threads:
                overrides["threads"] = args.threads
            config = load_yaml_config(TrainConfig, C.ROOT / "configs" / "train_cpu_example.yaml", overrides)
            start = time.perf_counter()
            train(config, resume=(run / "config.yaml").exists(), progress=False)
            key = (precision, seed)
            walls[key], runs[key] = time.perf_counter() - start, run
            # fp32 whatever the model trained in (precision auto would be bf16 on a CPU with native bf16); the run policy's window
            summaries[key] = summarize(evaluate_run(run, options=PredictOptions(precision="fp32"), progress=False))[("dna", "test")]
            print(f"seed {seed} {precision}: {walls[key] / 60:.1f} min, final val {_final_val(run, args.last):.4f}, "
                  f"test r {summaries[key]['pearson_r']:.3f} ({C.load_note()})", flush=True)
    val = {k: _final_val(r, args.last) for k, r in runs.items()}
    mean = {p: statistics.fmean(val[(p, s)] for s in args.seeds) for p in ("fp32", "bf16")}
    ratios = [val[("bf16", s)] / val[("fp32", s)] for s in args.seeds]
    fp32_spread = max(val[("fp32", s)] for s in args.seeds) / min(val[("fp32", s)] for s in args.seeds)
    first = args.seeds[0]
    _plot_curves({p: runs[(p, first)] for p in ("fp32", "bf16")}, C.ROOT / "benchmarks" / "results" / "train_bf16_curve.png")
    iterations = yaml.safe_load((runs[("fp32", first)] / "config.yaml").read_text())["iterations"]
    patches = yaml.safe_load((runs[("fp32", first)] / "config.yaml").read_text())["validation_patches"]
    settings = (f"CPU example (depth 3, width 16, batch 8, 16x64x64, {iterations} it, {patches} validation patches), synthetic DNA, "
                f"seeds {', '.join(map(str, args.seeds))}" + (f"; final val loss = mean of the last {args.last} validations" if args.last > 1 else ""))
    if len(args.seeds) > 1:
        settings += (f" (val loss columns: mean over seeds); per seed bf16/fp32 {', '.join(f'{r:.3f}' for r in ratios)}; fp32 between seeds max/min {fp32_spread:.3f}")
    fmt = lambda p, k: ", ".join(f"{summaries[(p, s)][k]:.3f}" for s in args.seeds)  # noqa: E731
    row = C.append_row(CURVE_SECTION, CURVE_COLUMNS, [
        C.today(), settings, f"{mean['fp32']:.4g}", f"{mean['bf16']:.4g}", f"**{mean['bf16'] / mean['fp32']:.3f}**",
        f"{fmt('fp32', 'pearson_r')}; {fmt('bf16', 'pearson_r')}", f"{fmt('fp32', 'normalized_error')}; {fmt('bf16', 'normalized_error')}",
        f"{sum(walls[(p, s)] for p, s in walls if p == 'fp32') / 60:.1f} min, {sum(walls[(p, s)] for p, s in walls if p == 'bf16') / 60:.1f} min",
        C.command_line(), C.machine() + f" ({C.load_note()})",
    ])
    print(row)
    _save(args, "train_bf16_curve", {
        "final_val_loss": {f"{p} seed {s}": v for (p, s), v in val.items()},
        "last": args.last,
        "val_curves": {f"{p} seed {s}": _val_curve(r) for (p, s), r in runs.items()},
        "test": {f"{p} seed {s}": v for (p, s), v in summaries.items()},
        "wall_s": {f"{p} seed {s}": v for (p, s), v in walls.items()},
    })


def _final_val(run: Path, last: int = 1) -> float:
    """The mean of the run's last ``last`` validation losses (1: the final one)."""
    return statistics.fmean(list(_val_curve(run).values())[-last:])


def _held_out_loss(run: Path, patches: int, precision: str) -> float:
    """The MSE of ``run``'s final model over ``patches`` held-out patches of its test split (the draw of its
    validation patches, continued), computed in ``precision``."""
    import torch
    import yaml

    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.train.data import PatchDataset, describe_pair, load_stats
    from chunked_fnet.train.manifest import Pair

    config = yaml.safe_load((run / "config.yaml").read_text())
    stats = load_stats(run / "stats.json")
    test = [describe_pair(Pair(**p), stats) for p in json.loads((run / "split.json").read_text())["test"]]
    patches_ = PatchDataset([(spec,) for spec in test], tuple(config["voxel_size"]), tuple(config["patch_shape"]), config["seed"] + 1, patches, 0)
    model = load_checkpoint(run / f"{config['structure']}.ckpt")[0].eval()
    total, count = 0.0, 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(0, patches, 8):
            items = [patches_[j] for j in range(i, min(patches, i + 8))]
            x, y = torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])
            total += float(torch.nn.functional.mse_loss(model(x).float(), y, reduction="sum"))
            count += y.numel()
    return total / count


def heldout(args: argparse.Namespace) -> None:
    """The curve's final models (fp32- and bf16-trained, per seed) on the same held-out patches."""
    import yaml

    runs = {(p, s): Path(args.workdir) / "curve" / (f"run_{p}" + (f"_seed{s}" if s else "")) for p in ("fp32", "bf16") for s in args.seeds}
    missing = [str(r) for r in runs.values() if not (r / "losses.csv").exists()]
    if missing:
        raise SystemExit(f"no curve runs at {missing}: run `train_speed.py curve --seeds {' '.join(map(str, args.seeds))}` first")
    loss = {(p, s, e): _held_out_loss(r, args.patches, e) for (p, s), r in runs.items() for e in ("fp32", "bf16")}
    for (p, s, e), v in sorted(loss.items()):
        print(f"seed {s}, trained {p}, evaluated {e}: {v:.4f}", flush=True)
    mean = lambda p, e: statistics.fmean(loss[(p, s, e)] for s in args.seeds)  # noqa: E731
    ratios = [loss[("bf16", s, "fp32")] / loss[("fp32", s, "fp32")] for s in args.seeds]
    fp32 = [loss[("fp32", s, "fp32")] for s in args.seeds]
    iterations = {yaml.safe_load((r / "config.yaml").read_text())["iterations"] for r in runs.values()}
    row = C.append_row(HELDOUT_SECTION, HELDOUT_COLUMNS, [
        C.today(),
        f"CPU example (depth 3, width 16, batch 8, 16x64x64, {'/'.join(map(str, sorted(iterations)))} it), synthetic DNA, seeds "
        f"{', '.join(map(str, args.seeds))}; {args.patches} held-out patches of the test split",
        "; ".join(f"{loss[('fp32', s, 'fp32')]:.4f}, {loss[('bf16', s, 'fp32')]:.4f}" for s in args.seeds),
        ", ".join(f"{r:.3f}" for r in ratios), f"**{mean('bf16', 'fp32') / mean('fp32', 'fp32'):.3f}**",
        f"{max(fp32) / min(fp32):.3f}", f"{mean('bf16', 'bf16') / mean('fp32', 'bf16'):.3f}",
        C.command_line(), C.machine(),
    ])
    print(row)
    _save(args, "train_bf16_heldout", {"patches": args.patches, "loss": {f"trained {p}, seed {s}, evaluated {e}": v for (p, s, e), v in loss.items()}})


def _val_curve(run: Path) -> dict[int, float]:
    """Iteration -> validation loss of ``run`` (losses.csv, in iteration order)."""
    import csv

    with (run / "losses.csv").open() as f:
        return {int(r["iteration"]): float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]}


def _plot_curves(runs: dict[str, Path], png: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for (precision, run), color in zip(runs.items(), ("C0", "C3"), strict=True):
        with (run / "losses.csv").open() as f:
            rows = list(csv.DictReader(f))
        it = [int(r["iteration"]) for r in rows]
        tr = [float(r["train_loss"]) for r in rows]
        w = max(1, len(tr) // 30)
        smooth = [statistics.fmean(tr[max(0, i - w + 1) : i + 1]) for i in range(len(tr))]
        ax.plot(it, smooth, color=color, lw=1.2, label=f"{precision} train (mean of {w})")
        val = [(int(r["iteration"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
        ax.plot(*zip(*val), "o--", color=color, ms=3, lw=0.8, label=f"{precision} validation")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("MSE (z-scored units)")
    ax.set_title("DNA, CPU-example settings: bf16 autocast against fp32")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def multi(args: argparse.Namespace) -> None:
    from chunked_fnet.train import data as train_data
    from chunked_fnet.train.trainer import TrainConfig, train_many

    structures = ("dna", "nuclear_envelope", "membrane")
    data = _paired_data(Path(args.workdir) / "multi", fovs=6, shape=(32, 256, 256), structures=structures)
    reads = {"n": 0}
    original = train_data.PatchDataset.__getitem__

    def counted(self, i):  # noqa: ANN001, ANN202
        reads["n"] += 1
        return original(self, i)

    train_data.PatchDataset.__getitem__ = counted  # workers=0 below, so the count sees every read
    base = dict(
        manifest=str(data / "manifest.yaml"), model={"depth": 3, "width": 16}, patch_shape=(16, 64, 64), batch_size=8,
        iterations=args.iterations or 60, n_train=5, validation_patches=0, checkpoint_every=10**6, workers=0, precision=args.precision,
    )
    walls, counts = {}, {}
    for mode in ("together", "separate"):
        out = Path(args.workdir) / "multi" / mode
        configs = [TrainConfig(**base, output=str(out / s), structure=s, target_channel=s) for s in structures]
        reads["n"] = 0
        start = time.perf_counter()
        if mode == "together":
            train_many(configs, progress=False)
        else:
            for c in configs:
                train_many([c], progress=False)
        walls[mode], counts[mode] = time.perf_counter() - start, reads["n"]
        print(f"{mode}: {walls[mode]:.1f} s, {counts[mode]} patches read", flush=True)
    settings = f"CPU-example model, batch 8, 16x64x64, {base['iterations']} it, {args.precision}, in-process loader"
    row = C.append_row(MULTI_SECTION, MULTI_COLUMNS, [
        C.today(), settings, ", ".join(structures), f"{walls['together']:.0f} s, {counts['together']}",
        f"{walls['separate']:.0f} s, {counts['separate']}", f"**{walls['together'] / walls['separate']:.2f}**", C.command_line(), C.machine(),
    ])
    print(row)
    _save(args, "train_multi", {"wall_s": walls, "patches_read": counts})


def _save(args: argparse.Namespace, name: str, payload: dict) -> None:
    out = C.ROOT / "benchmarks" / "results" / f"{name}_{C.today()}.json"
    out.write_text(json.dumps({"command": C.command_line(), "machine": C.machine(), **payload}, indent=1, default=str))
    print(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="section", required=True)
    for name in ("speed", "curve", "heldout", "multi"):
        p = sub.add_parser(name)
        p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "chunked_fnet_train_speed"))
        p.add_argument("--device", default="cpu")
        p.add_argument("--iterations", type=int, default=4 if name == "speed" else None)
        p.add_argument("--rounds", type=int, default=2)
        p.add_argument("--precision", default="bf16")
        p.add_argument("--compile", action="store_true", help="speed: also time torch.compile (bf16)")
        p.add_argument("--threads", type=int, help="torch threads of every method (default: all cores)")
        if name in ("curve", "heldout"):
            p.add_argument("--seeds", nargs="+", type=int, default=[0], help="train both precisions from each of these seeds")
        if name == "heldout":
            p.add_argument("--patches", type=int, default=256, help="held-out patches each final model is scored on")
        if name == "curve":
            p.add_argument("--validation-patches", type=int, help="held-out patches per validation (default: the config's 16)")
            p.add_argument("--last", type=int, default=1, help="the final validation loss is the mean of the last this many validations")
    one = sub.add_parser("_one")
    one.add_argument("--method", choices=(*METHODS, COMPILED), required=True)
    one.add_argument("--data", required=True)
    one.add_argument("--iterations", type=int, required=True)
    one.add_argument("--device", default="cpu")
    one.add_argument("--threads", type=int)
    args = parser.parse_args()
    {"speed": speed, "curve": curve, "heldout": heldout, "multi": multi, "_one": _one}[args.section](args)


if __name__ == "__main__":
    main()
