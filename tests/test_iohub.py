"""Our outputs open in iohub, the I/O library of VisCy/Cytoland: a predicted image (NGFF 0.4) as a
``Position`` and a predicted plate (NGFF 0.4) as a ``Plate`` whose positions are every field, with our
channel names, scales and values.

iohub 0.2 (the release that installs on Python 3.11) needs zarr 2, so it lives in its own virtual
environment, ``.venv-iohub`` (``.ci/run`` makes it); the test runs a small script there and compares what
iohub printed with what we wrote. No iohub release on the registry for Python 3.11 reads NGFF 0.5, so
only 0.4 is checked. Without that environment the tests skip, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet import open_image
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.predict import PredictOptions, predict, predict_plate
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint, write_plate

ROOT = Path(__file__).resolve().parents[1]
#: The iohub environment's interpreter (override with CHUNKED_FNET_IOHUB_PYTHON).
IOHUB_PYTHON = Path(os.environ.get("CHUNKED_FNET_IOHUB_PYTHON", ROOT / ".venv-iohub" / "bin" / "python"))
OPTIONS = dict(patch_shape=(8, 16, 16), overlap=0.25, chunks=(8, 16, 16), precision="fp32", version="0.4")
WELLS = ("A/1", "B/2")

#: Run with the iohub environment's python: open argv[1] with layout argv[2] and print, per position,
#: its channel names, scale, shape and the sha256 of its full-resolution array as little-endian float32.
SCRIPT = """
import hashlib, json, sys
import numpy as np
from iohub import open_ome_zarr

with open_ome_zarr(sys.argv[1], mode="r", layout=sys.argv[2]) as node:
    items = list(node.positions()) if hasattr(node, "positions") else [("", node)]
    out = {"type": type(node).__name__, "positions": {}}
    for name, pos in items:
        values = np.asarray(pos["0"][:]).astype("<f4")
        out["positions"][name] = {"channels": list(pos.channel_names), "scale": [float(s) for s in pos.scale],
                                  "shape": list(values.shape), "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
                                  "first": float(values.ravel()[0]), "sum": float(values.astype("f8").sum())}
print(json.dumps(out))
"""


def _iohub(path: Path, layout: str) -> dict:
    """What iohub (in its own environment) reads at ``path`` with ``layout``."""
    if not IOHUB_PYTHON.exists():
        pytest.skip(f"no iohub environment at {IOHUB_PYTHON} (python -m venv .venv-iohub && .venv-iohub/bin/pip install 'iohub==0.2.*'; .ci/run makes it)")
    done = subprocess.run([str(IOHUB_PYTHON), "-c", SCRIPT, str(path), layout], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"iohub could not open {path} (layout {layout}):\n{done.stderr[-3000:]}"
    assert "does not have valid metadata" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _expected(path: Path) -> dict:
    """What we wrote at ``path``, in the form the script prints."""
    image = open_image(path)
    values = np.asarray(image.values).astype("<f4")
    scale = [float(image.attrs["scale"].get(d, 1.0)) for d in image.dims]
    return {"channels": [str(c) for c in image["c"].values], "scale": scale, "shape": list(values.shape),
            "sha256": hashlib.sha256(values.tobytes()).hexdigest(), "first": float(values.ravel()[0]), "sum": float(values.astype("f8").sum())}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A predicted image and a predicted plate, both NGFF 0.4, from a real (tiny) prediction."""
    if not IOHUB_PYTHON.exists():
        pytest.skip(f"no iohub environment at {IOHUB_PYTHON} (python -m venv .venv-iohub && .venv-iohub/bin/pip install 'iohub==0.2.*'; .ci/run makes it)")
    from ome_zarr.format import FormatV04

    root = tmp_path_factory.mktemp("iohub")
    generate(SynthConfig(size_t=1, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), root / "in.zarr", progress=False)
    models = [tiny_checkpoint(root / "dna.ckpt", color="0000FF")]
    write_plate(root / "plate.zarr", FormatV04(), wells=WELLS, fields=("0", "1"), shape=(8, 24, 20))
    with local_client(ClusterSpec(n_workers=1)) as client:
        predict(root / "in.zarr", models, root / "pred.zarr", options=PredictOptions(**OPTIONS), client=client, progress=False)
        predict_plate(root / "plate.zarr", models, root / "pred_plate.zarr", options=PredictOptions(**OPTIONS), client=client, progress=False)
    return root


@pytest.mark.parametrize("layout", ["auto", "fov"])
def test_iohub_opens_a_predicted_image_as_a_position(outputs: Path, layout: str) -> None:
    read = _iohub(outputs / "pred.zarr", layout)
    expected = _expected(outputs / "pred.zarr")
    assert read["type"] == "Position"
    assert read["positions"][""] == expected
    assert expected["channels"] == ["dna"] and expected["scale"][2:] == pytest.approx([0.4, 0.4, 0.4]) and expected["sum"] != 0


@pytest.mark.parametrize("layout", ["auto", "hcs"])
def test_iohub_opens_a_predicted_plate_with_every_field(outputs: Path, layout: str) -> None:
    read = _iohub(outputs / "pred_plate.zarr", layout)
    assert read["type"] == "Plate"
    fields = [f"{w}/{f}" for w in WELLS for f in ("0", "1")]
    assert sorted(read["positions"]) == fields
    for name in fields:
        assert read["positions"][name] == _expected(outputs / "pred_plate.zarr" / name), name
