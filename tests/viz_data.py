"""One small, real prediction shared by the figure, viewer and napari tests (built once per session).

A synthetic 3-frame time-lapse written as NGFF 0.4 (zarr v2) and moved off the origin (so positions
are checked, not assumed), two tiny models trained for a few iterations (dna, er; their cards carry
the structures' colours), their evaluation on train and test pairs, and a chunked ensemble prediction
written as NGFF 0.5 (zarr v3, sharded) on the models' coarser grid by ``chunked_fnet.predict.predict`` on a
one-worker local cluster. So the viewer sees both NGFF versions and two different voxel grids.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

#: Physical origin (µm) given to the input; the prediction inherits it.
ORIGIN = {"z": 1.2, "y": 2.5, "x": -3.0}
STRUCTURES = ("dna", "er")
#: The prediction is sharded (zarr v3 sharding, 4 chunks a shard), so every viewer test reads shards.
PREDICTION_SHARDS = (12, 32, 32)


@dataclass(frozen=True)
class VizData:
    root: Path

    @property
    def input(self) -> Path:
        return self.root / "input.zarr"

    @property
    def prediction(self) -> Path:
        return self.root / "prediction.zarr"

    @property
    def metrics(self) -> Path:
        return self.root / "eval" / "metrics.csv"

    def run(self, structure: str) -> Path:
        return self.root / f"run_{structure}"


def _move_origin(image: Path) -> None:
    """Give an NGFF 0.4 image a translation (the synthetic writer puts images at 0)."""
    attrs_path = image / ".zattrs"
    attrs = json.loads(attrs_path.read_text())
    ms = attrs["multiscales"][0]
    dims = [a["name"] for a in ms["axes"]]
    for ds in ms["datasets"]:
        ds["coordinateTransformations"] = [
            t for t in ds["coordinateTransformations"] if t["type"] != "translation"
        ] + [{"type": "translation", "translation": [ORIGIN.get(d, 0.0) for d in dims]}]
    attrs_path.write_text(json.dumps(attrs, indent=2))


def _build(root: Path) -> None:
    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.evaluate.report import evaluate_run, write_report
    from chunked_fnet.predict import PredictOptions, predict
    from chunked_fnet.synth.dataset import CHANNEL_COLORS, SynthConfig, generate
    from chunked_fnet.train.trainer import TrainConfig, train

    config = SynthConfig(
        size_t=3, size_z=12, size_y=64, size_x=64, voxel_size=(0.4, 0.2, 0.2), chunks=(12, 32, 32), version="0.4", seed=3
    )
    generate(config, root / "input.zarr", progress=False)
    _move_origin(root / "input.zarr")
    images = [{"path": "input.zarr", "input_channel": "brightfield", "target_channel": None}]
    models, rows = [], []
    for structure in STRUCTURES:
        images[0]["target_channel"] = structure
        (root / f"manifest_{structure}.yaml").write_text(yaml.safe_dump({"images": images}))
        settings = TrainConfig(
            manifest=str(root / f"manifest_{structure}.yaml"), output=str(root / f"run_{structure}"), structure=structure,
            color=CHANNEL_COLORS[structure], model={"depth": 1, "width": 4}, voxel_size=(0.4, 0.4, 0.4),
            patch_shape=(8, 16, 16), batch_size=2, iterations=8, n_train=2, checkpoint_every=8, validate_every=8,
            validation_patches=0, workers=0,
        )
        models.append(train(settings, progress=False))
        rows += evaluate_run(root / f"run_{structure}", progress=False)
    write_report(rows, root / "eval")
    with local_client(ClusterSpec(n_workers=1)) as client:
        predict(
            root / "input.zarr", models, root / "prediction.zarr",
            options=PredictOptions(patch_shape=(8, 16, 16), overlap=0.25, chunks=(12, 16, 16), shards=PREDICTION_SHARDS),
            client=client, progress=False,
        )


def shared_prediction(tmp_path_factory: pytest.TempPathFactory) -> VizData:
    """Build the data on first use in this test session; later callers get the same folder."""
    root = tmp_path_factory.getbasetemp() / "viz_shared"
    done = root / "done"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)  # a build that failed half way
        root.mkdir()
        start = time.perf_counter()
        _build(root)
        done.write_text(f"{time.perf_counter() - start:.1f} s\n")
    return VizData(root)
