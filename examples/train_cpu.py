"""Train DNA and mitochondria models on synthetic data on a CPU, then evaluate them (issue: the
nuclear target learns well, thin tubules poorly, as in the paper).

    python examples/train_cpu.py [OUT_DIR] [--structures dna mitochondria]

Writes OUT_DIR/synth.zarr (12 fields of view), one run folder per structure (OUT_DIR/run_<structure>,
with losses.csv/png and <structure>.ckpt; all structures train in one loop that reads each patch
once) and OUT_DIR/eval/metrics.{csv,png}; prints the table and the training wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from chunked_fnet.config import load_yaml_config
from chunked_fnet.evaluate.report import evaluate_run, summarize, write_report
from chunked_fnet.synth.dataset import CHANNEL_COLORS, SynthConfig, generate
from chunked_fnet.train.trainer import TrainConfig, train_many

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="example_cpu")
    parser.add_argument("--structures", nargs="+", default=["dna", "mitochondria"])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "synth.zarr"
    if not data.exists():
        start = time.perf_counter()
        generate(SynthConfig(size_t=1, size_z=32, size_y=256, size_x=256, fovs=12), data)
        print(f"synthetic data: {data} ({time.perf_counter() - start:.0f} s)")
    manifest = out / "manifest.yaml"  # no target_channel: each structure learns the channel of its name
    manifest.write_text(yaml.safe_dump({"images": [{"path": f"synth.zarr/{i}", "input_channel": "brightfield"} for i in range(12)]}))
    configs = [
        load_yaml_config(
            TrainConfig,
            ROOT / "configs" / "train_cpu_example.yaml",
            {"manifest": str(manifest), "output": str(out / f"run_{s}"), "structure": s, "target_channel": s, "color": CHANNEL_COLORS[s]},
        )
        for s in args.structures
    ]
    start = time.perf_counter()  # one run for all structures: every patch is read once and feeds each model
    train_many(configs, resume=all((Path(c.output) / "config.yaml").exists() for c in configs))
    print(f"{', '.join(args.structures)}: trained {configs[0].iterations} iterations in {(time.perf_counter() - start) / 60:.1f} min")
    rows = [row for c in configs for row in evaluate_run(c.output)]
    table, figure = write_report(rows, out / "eval")
    for (structure, split), m in sorted(summarize(rows).items()):
        print(f"{structure:<14}{split:<6} n={int(m['n'])}  normalised error {m['normalized_error']:.3f}  Pearson r {m['pearson_r']:.3f}")
    print(f"{table}\n{figure}")


if __name__ == "__main__":
    main()
