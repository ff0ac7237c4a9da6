"""HCS plates: every field of every well (or of --wells) predicted into an output plate with the same
layout, in one run; a field without the input channel refused by name; resume per field."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr

from chunked_fnet import open_image
from chunked_fnet.cli import main
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.errors import InputError, OmeZarrError, OutputExistsError
from chunked_fnet.io.plate import read_plate
from chunked_fnet.predict import PredictOptions, predict, predict_plate
from factories import tiny_checkpoint, write_plate

OPTIONS = dict(patch_shape=(8, 16, 16), overlap=0.25, chunks=(8, 16, 16), precision="fp32", shards="none")
WELLS = ["A/1", "A/2", "B/1"]
REFUSED = "A/2/1"  # written without the brightfield channel
SHAPE = (8, 24, 20)


def _write_plate(path: Path, fmt) -> None:  # noqa: ANN001
    write_plate(path, fmt, wells=WELLS, shape=SHAPE, without={REFUSED: ("brightfield",)})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("plate")
    from ome_zarr.format import FormatV05

    _write_plate(root / "plate.zarr", FormatV05())
    models = [tiny_checkpoint(root / f"{s}.ckpt", s, seed=i) for i, s in enumerate(("dna", "er"))]
    with local_client(ClusterSpec(n_workers=1)) as client:
        summary = predict_plate(root / "plate.zarr", models, root / "pred.zarr", options=PredictOptions(**OPTIONS), client=client, progress=False)
        yield root, models, client, summary


def _attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]


def test_every_field_predicted_into_the_same_layout_and_the_field_without_brightfield_refused(setup) -> None:
    root, models, client, summary = setup
    assert list(summary.refused) == [REFUSED] and "brightfield" in summary.refused[REFUSED]
    assert "A/2/1" in str(summary) and "refused" in str(summary)
    expected = [f"{w}/{f}" for w in WELLS for f in "01" if f"{w}/{f}" != REFUSED]
    assert list(summary.fields) == expected and len(summary.runs) == 5
    plate_in, plate_out = _attrs(root / "plate.zarr")["plate"], _attrs(root / "pred.zarr")["plate"]
    assert plate_out["rows"] == plate_in["rows"] and plate_out["columns"] == plate_in["columns"]
    assert plate_out["wells"] == plate_in["wells"]
    assert _attrs(root / "pred.zarr/A/1")["well"]["images"] == [{"path": "0"}, {"path": "1"}]
    assert _attrs(root / "pred.zarr/A/2")["well"]["images"] == [{"path": "0"}]  # the refused field is left out
    assert not (root / "pred.zarr/A/2/1").exists()
    assert read_plate(str(root / "pred.zarr")).fields == tuple(tuple(f.rsplit("/", 1)) for f in expected)
    for name in expected:  # each field overlays its input
        out, inp = open_image(root / "pred.zarr" / name), open_image(root / "plate.zarr" / name)
        assert out.shape == (1, 2, *SHAPE) and list(out["c"].values) == ["dna", "er"]
        assert {d: out.attrs["scale"][d] for d in "zyx"} == inp.attrs["scale"]
        assert {d: out.attrs["translation"][d] for d in "zyx"} == pytest.approx(inp.attrs["translation"])
        assert np.isfinite(out.values).all() and out.values.std() > 0


def test_each_field_equals_its_single_image_prediction(setup) -> None:
    root, models, client, _ = setup
    for name in ("A/1/0", "B/1/1", "A/2/0"):
        single, _ = predict(root / "plate.zarr" / name, models, root / f"single-{name.replace('/', '_')}.zarr",
                            options=PredictOptions(**OPTIONS), client=client, progress=False)
        np.testing.assert_allclose(open_image(root / "pred.zarr" / name).values, single.values, atol=1e-5, rtol=0)
    # and the fields differ from each other (a run that wrote one field's output everywhere would fail above)
    a, b = (open_image(root / "pred.zarr" / n).values for n in ("A/1/0", "B/1/1"))
    assert np.abs(a - b).max() > 1e-3


def test_resume_recomputes_only_the_chunk_without_its_marker(setup) -> None:
    root, models, client, _ = setup
    field = root / "pred.zarr/B/1/0"
    before = open_image(field).values
    markers = sorted((field / ".chunked_fnet/done").iterdir())
    assert len(markers) == 4  # 1 frame x 2 x 2 chunks of (8, 16, 16)
    markers[1].unlink()
    arr = zarr.open_array(str(field / "0"), mode="r+")
    arr[...] = 0  # every chunk of the field zeroed: only the recomputed chunk comes back
    summary = predict_plate(root / "plate.zarr", models, root / "pred.zarr", options=PredictOptions(**OPTIONS), client=client,
                            progress=False, resume=True)
    assert [r.chunks for r in summary.runs] == [0, 0, 0, 1, 0] and summary.fields[3] == "B/1/0"
    assert markers[1].exists()
    after = open_image(field).values
    changed = np.argwhere(after != 0)
    assert len(changed) and np.abs(after - before)[after != 0].max() <= 1e-6
    assert (after == 0).sum() > 0  # the chunks with markers were not recomputed
    with pytest.raises(OutputExistsError, match="already exists"):  # neither --resume nor --overwrite: refused
        predict_plate(root / "plate.zarr", models, root / "pred.zarr", options=PredictOptions(**OPTIONS), client=client, progress=False)
    with pytest.raises(InputError, match="other fields"):  # a resume must select the same fields
        predict_plate(root / "plate.zarr", models, root / "pred.zarr", options=PredictOptions(**OPTIONS), client=client,
                      progress=False, resume=True, wells=["A/1"])


def test_cli_wells_select_and_a_refused_field_fails_the_command(setup, tmp_path: Path, capsys) -> None:
    root, models, client, _ = setup
    flags = ["--models", *map(str, models), "--patch-shape", "8", "16", "16", "--chunks", "8", "16", "16", "--overlap", "0.25", "--precision", "fp32",
             "--scheduler", client.scheduler.address, "--no-progress"]
    assert main(["predict", str(root / "plate.zarr"), "--out", str(tmp_path / "b.zarr"), "--wells", "B/1", *flags]) == 0
    plate = _attrs(tmp_path / "b.zarr")["plate"]
    assert [w["path"] for w in plate["wells"]] == ["B/1"] and plate["rows"] == [{"name": "A"}, {"name": "B"}]
    assert read_plate(str(tmp_path / "b.zarr")).fields == (("B/1", "0"), ("B/1", "1"))
    np.testing.assert_allclose(open_image(tmp_path / "b.zarr/B/1/1").values, open_image(root / "pred.zarr/B/1/1").values, atol=1e-5, rtol=0)
    capsys.readouterr()
    assert main(["predict", str(root / "plate.zarr"), "--out", str(tmp_path / "a2.zarr"), "--wells", "A/2", *flags]) == 2
    err = capsys.readouterr().err
    assert "A/2/1" in err and "brightfield" in err and "A/2/0" not in err.split("refused", 1)[1]
    assert read_plate(str(tmp_path / "a2.zarr")).fields == (("A/2", "0"),)
    assert main(["predict", str(root / "plate.zarr"), "--out", str(tmp_path / "x.zarr"), "--wells", "C/9", *flags]) == 2
    assert "no well C/9" in capsys.readouterr().err


def test_output_plate_opens_with_ome_zarr_py(setup) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Plate, Reader

    root, *_ = setup
    nodes = list(Reader(parse_url(str(root / "pred.zarr")))())
    plate = next(n for n in nodes if any(isinstance(s, Plate) for s in n.specs))
    spec = next(s for s in plate.specs if isinstance(s, Plate))
    assert sorted(spec.well_paths) == sorted(WELLS)
    assert plate.data[0].shape[-2:] == (2 * SHAPE[1], 2 * SHAPE[2])  # the plate's grid of wells, one field each


def test_ngff_04_plates_are_read_and_written(setup, tmp_path: Path) -> None:
    from ome_zarr.format import FormatV04

    root, models, client, _ = setup
    _write_plate(tmp_path / "p4.zarr", FormatV04())
    plate = read_plate(str(tmp_path / "p4.zarr"))
    assert plate.version == "0.4" and len(plate.fields) == 6 and plate.select(["B/1"]) == [("B/1", "0"), ("B/1", "1")]
    assert open_image(tmp_path / "p4.zarr/A/1/1").attrs["translation"] == pytest.approx({"z": 0.0, "y": 1.2, "x": 2.0})
    summary = predict_plate(tmp_path / "p4.zarr", models, tmp_path / "pred4.zarr", options=PredictOptions(**OPTIONS, version="0.4"),
                            wells=["B/1"], client=client, progress=False)
    assert summary.fields == ("B/1/0", "B/1/1") and not summary.refused
    attrs = json.loads((tmp_path / "pred4.zarr/.zattrs").read_text())
    assert attrs["plate"]["version"] == "0.4" and [w["path"] for w in attrs["plate"]["wells"]] == ["B/1"]
    out = read_plate(str(tmp_path / "pred4.zarr"))
    assert out.version == "0.4" and out.fields == (("B/1", "0"), ("B/1", "1"))
    assert open_image(tmp_path / "pred4.zarr/B/1/1").attrs["ngff_version"] == "0.4"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # npe2's pydantic-v1 style fields
def test_output_plate_opens_in_napari_through_napari_ome_zarr(setup) -> None:
    """The output plate opens in napari (headless ViewerModel, the GUI's reader plugin): the plate's grid
    of wells, one layer per structure, each as large as the wells' grid of fields."""
    pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[test]')")
    pytest.importorskip("napari_ome_zarr", reason="napari-ome-zarr is not installed (pip install -e '.[test]')")
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    root, *_ = setup
    _initialize_plugins()
    # napari reads the plate through dask arrays; the module's cluster client is the default scheduler
    # while the fixture is open, and a client shared with napari's graph-building threads is what made
    # this test fail at random (KeyError inside distributed's client), so read in this thread
    with dask.config.set(scheduler="synchronous"):
        layers = ViewerModel().open(str(root / "pred.zarr"), plugin="napari-ome-zarr")
        assert len(layers) == 2  # dna, er
        for layer in layers:
            assert tuple(layer.data[0].shape[-2:]) == (2 * SHAPE[1], 2 * SHAPE[2])
            assert np.isfinite(np.asarray(layer.data[0][(0,) * (layer.ndim - 2)])).all()


def test_a_plate_is_viewed_one_field_at_a_time_in_neuroglancer(setup) -> None:
    """neuroglancer has no plate layout: ``view`` takes a field of the output plate (with the same field
    of the input plate), and a plate or well path given whole is refused with the path to give."""
    from browser import Chromium, find_chromium, layer_problems, wait_for_neuroglancer

    from chunked_fnet.viz.neuroglancer import describe_source, open_view

    root, *_ = setup
    with pytest.raises(OmeZarrError, match=r"pred.zarr is an HCS plate \(3 wells: A/1, A/2, B/1\), not one image; open one field of it, e.g. .*pred.zarr/A/1/0"):
        open_view(root / "pred.zarr")
    with pytest.raises(OmeZarrError, match=r"pred.zarr/A/1 is a well of an HCS plate \(fields 0, 1\), not one image; open one field, e.g. .*pred.zarr/A/1/0"):
        open_view(root / "pred.zarr/A/1")
    binary = find_chromium()
    if binary is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it where apt-get works")
    field = "B/1/1"
    pred = describe_source(root / "pred.zarr" / field, "")
    with open_view(root / "pred.zarr" / field, root / "plate.zarr" / field) as session, Chromium(binary) as chrome:
        chrome.navigate(session.viewer_url)
        status = wait_for_neuroglancer(chrome, timeout=90)
        assert [layer["name"] for layer in status["layers"]] == ["input: brightfield", "dna", "er"]
        assert layer_problems(status) == []
        for layer in status["layers"]:
            assert [s["state"] for s in layer["sources"]] == ["loaded"] and layer["renderLayers"] >= 1, layer
            source = layer["sources"][0]
            for dim in ("z", "y", "x"):  # the field's own translation, as its metadata says
                i = source["names"].index(dim)
                lo, hi = source["lower"][i] * source["scales"][i], source["upper"][i] * source["scales"][i]
                assert (lo, hi) == pytest.approx(tuple(v * 1e-6 for v in pred.extent(dim)), rel=1e-6, abs=1e-12), (layer["name"], dim)
