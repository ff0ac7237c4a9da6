"""Vendor files -> OME-Zarr through bioio (chunked_fnet.io.vendor, `chunked-fnet convert`).

The CZI is a real one, written by Zeiss' own libCZI through pylibCZIrw: pixel planes with Z/C/T
coordinates in two scenes, then the document metadata (scaling, channel names). Two details of
that library are worth knowing: ``write_metadata`` stores ``scale_*`` verbatim in the CZI's
``Scaling/Distance/Value``, which the format (and ZEN, and bioio-czi) reads as metres, so the test
passes metres; and it does not list the scenes under ``Information/Image/Dimensions/S/Scenes`` as
ZEN does, so the test adds that list with pylibCZIrw's metadata editor.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
import zarr

pytest.importorskip("bioio", reason="bioio is not installed (pip install 'chunked_fnet[vendor]')")
pytest.importorskip("bioio_czi", reason="bioio-czi is not installed (pip install 'chunked_fnet[vendor]')")
pytest.importorskip("bioio_ome_tiff", reason="bioio-ome-tiff is not installed (pip install 'chunked_fnet[vendor]')")
pyczi = pytest.importorskip("pylibCZIrw.czi", reason="pylibCZIrw (writes the test CZI) is not installed")

from chunked_fnet import cli, open_image  # noqa: E402
from chunked_fnet.errors import InputError, OutputExistsError  # noqa: E402
from chunked_fnet.io import vendor  # noqa: E402
from chunked_fnet.io.vendor import convert_vendor  # noqa: E402

SHAPE = (2, 2, 3, 20, 24)  # t, c, z, y, x
VOXEL_UM = (0.29, 0.108, 0.108)  # z, y, x
CHANNELS = ["bright field", "DNA"]
SCENES = ["well A1", "well B2"]


def _scene_data(n_scenes, shape=SHAPE):
    rng = np.random.default_rng(16)
    return [rng.integers(0, 65535, size=shape, dtype=np.uint16) for _ in range(n_scenes)]


def write_czi(path, data, *, voxel_um=VOXEL_UM, channels=CHANNELS, scene_names=SCENES, list_scenes=True):
    """A CZI with one scene per array of ``data`` ((t, c, z, y, x) uint16 each), via pylibCZIrw."""
    with pyczi.create_czi(str(path), exist_ok=False) as w:
        for s, scene in enumerate(data):
            T, C, Z, _, _ = scene.shape
            for t in range(T):
                for c in range(C):
                    for z in range(Z):
                        # scenes side by side on the slide; each plane is one (y, x, 1) tile
                        ok = w.write(scene[t, c, z][..., None], plane={"T": t, "C": c, "Z": z}, scene=s, location=(s * 1000, 0))
                        assert ok
        w.write_metadata(
            document_name=path.stem,
            channel_names=dict(enumerate(channels)),
            scale_x=voxel_um[2] * 1e-6,  # metres, as the CZI format stores them
            scale_y=voxel_um[1] * 1e-6,
            scale_z=voxel_um[0] * 1e-6,
        )
    if list_scenes:
        with pyczi.edit_czi(str(path)) as editor, editor.edit_session() as builder:
            root = ET.fromstring(builder.get_xml())
            dims = root.find("./Metadata/Information/Image/Dimensions")
            scenes = ET.SubElement(ET.SubElement(dims, "S"), "Scenes")
            for i in range(len(data)):
                ET.SubElement(scenes, "Scene", Index=str(i), Name=scene_names[i])
            builder.set_xml(ET.tostring(root, encoding="unicode"))
    return path


def _series(out):
    return sorted((k for k in zarr.open_group(str(out), mode="r").group_keys() if k.isdigit()), key=int)


def _check_image(img, data, name):
    assert img.dims == ("t", "c", "z", "y", "x")
    assert img.shape == data.shape
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img.values, data)
    scale = img.attrs["scale"]
    assert (scale["z"], scale["y"], scale["x"]) == pytest.approx(VOXEL_UM, rel=1e-9)
    assert img.attrs["units"]["x"] == "micrometer" and img.attrs["units"]["z"] == "micrometer"
    assert list(img["c"].values) == CHANNELS
    assert img.name == name


def test_two_scene_czi_via_cli_becomes_two_series(tmp_path, capsys):
    data = _scene_data(2)
    src = write_czi(tmp_path / "plate.czi", data)
    out = tmp_path / "plate.zarr"
    assert cli.main(["convert", str(src), str(out), "--no-progress", "--chunks", "1", "1", "2", "16", "16"]) == 0
    printed = capsys.readouterr().out
    assert "2 series" in printed and "channels: bright field, DNA" in printed
    assert _series(out) == ["0", "1"]  # one series per scene, in file order
    for i, scene in enumerate(data):
        img = open_image(out, series=i)
        _check_image(img, scene, SCENES[i])
        assert img.data.chunksize == (1, 1, 2, 16, 16)
        assert img.attrs["scale"]["t"] == 1.0  # pylibCZIrw records no time stamps: one "second" per frame
    with pytest.raises(Exception, match=r"no series 2; available series are \['0', '1'\]"):
        open_image(out, series=2)


def test_one_scene_czi_is_a_plain_image_with_overrides(tmp_path):
    (data,) = _scene_data(1)
    src = write_czi(tmp_path / "one.czi", [data])
    out = convert_vendor(src, tmp_path / "one.zarr", progress=False, time_interval=30.0, levels=2)
    img = open_image(out)  # no collection: the image itself
    _check_image(img, data, "one")
    assert img.attrs["scale"]["t"] == 30.0
    assert img.attrs["n_levels"] == 2
    out2 = convert_vendor(
        src, tmp_path / "two.zarr", progress=False, voxel_size=(1.0, 0.5, 0.5), channel_names=["a", "b"]
    )
    img2 = open_image(out2)
    assert (img2.attrs["scale"]["z"], img2.attrs["scale"]["y"], img2.attrs["scale"]["x"]) == (1.0, 0.5, 0.5)
    assert list(img2["c"].values) == ["a", "b"]


def test_large_source_chunks_are_read_plane_by_plane(tmp_path, monkeypatch):
    """Over the block budget, the CZI is reopened with (y, x) chunks; the values still come out exact."""
    data = _scene_data(2, shape=(1, 2, 4, 32, 40))
    src = write_czi(tmp_path / "big.czi", data)
    monkeypatch.setattr(vendor, "BLOCK_BYTES", 32 * 40 * 2)  # one plane
    opened = []
    import bioio

    original = bioio.BioImage

    def spy(*args, **kwargs):
        opened.append(kwargs.get("chunk_dims"))
        return original(*args, **kwargs)

    monkeypatch.setattr(bioio, "BioImage", spy)
    out = convert_vendor(src, tmp_path / "big.zarr", chunks=(1, 1, 1, 16, 16), progress=False)
    assert opened[0] is None and opened[-1][:2] == ["Y", "X"]  # bioio-czi's S (samples) dim may follow
    for i, scene in enumerate(data):
        np.testing.assert_array_equal(open_image(out, series=i).values, scene)


def test_czi_without_scene_list_warns_that_scenes_are_dropped(tmp_path):
    data = _scene_data(2)
    src = write_czi(tmp_path / "unlisted.czi", data, list_scenes=False)
    with pytest.warns(UserWarning, match="holds 2 scenes but the metadata lists 1"):
        out = convert_vendor(src, tmp_path / "unlisted.zarr", progress=False)
    np.testing.assert_array_equal(open_image(out).values, data[0])


def test_multi_series_ome_tiff_through_bioio(tmp_path):
    data = _scene_data(2)
    src = tmp_path / "two.ome.tiff"
    with tifffile.TiffWriter(src, ome=True) as tif:
        for scene in data:
            tif.write(
                scene,
                metadata={
                    "axes": "TCZYX",
                    "PhysicalSizeZ": VOXEL_UM[0],
                    "PhysicalSizeY": VOXEL_UM[1],
                    "PhysicalSizeX": VOXEL_UM[2],
                    "Channel": {"Name": CHANNELS},
                    "TimeIncrement": 2.5,
                },
            )
    out = tmp_path / "two.zarr"
    assert cli.main(["convert", str(src), str(out), "--reader", "bioio", "--no-progress"]) == 0
    assert _series(out) == ["0", "1"]
    for i, scene in enumerate(data):
        img = open_image(out, series=i)
        _check_image(img, scene, img.name)
        assert img.attrs["scale"]["t"] == pytest.approx(2.5)
    # by default a .tiff still goes through tifffile: the first series only, as before
    with pytest.warns(UserWarning, match="converting only the first"):
        assert cli.main(["convert", str(src), str(tmp_path / "first.zarr"), "--no-progress"]) == 0
    np.testing.assert_array_equal(open_image(tmp_path / "first.zarr").values, data[0])


def test_errors_are_one_clear_line(tmp_path, monkeypatch, capsys):
    data = _scene_data(2)
    src = write_czi(tmp_path / "e.czi", data)
    out = convert_vendor(src, tmp_path / "e.zarr", progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match="already exists"):
        convert_vendor(src, out, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # refused, not removed
    convert_vendor(src, out, progress=False, overwrite=True, channel_names=["p", "q"])
    assert list(open_image(out, series=1)["c"].values) == ["p", "q"]

    bad = tmp_path / "broken.czi"
    bad.write_bytes(b"ZISRAW" + b"\0" * 10)
    with pytest.raises(InputError, match="broken.czi could not be read by bioio"):
        convert_vendor(bad, tmp_path / "b.zarr", progress=False)
    assert not (tmp_path / "b.zarr").exists()
    with pytest.raises(InputError, match="missing.czi: no such file"):
        convert_vendor(tmp_path / "missing.czi", tmp_path / "m.zarr", progress=False)

    assert cli.main(["convert", str(src), str(tmp_path / "x.zarr"), "--axes", "TCZYX"]) != 0
    assert "--axes relabels a TIFF" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "bioio", None)  # as if the extra were not installed
    assert cli.main(["convert", str(src), str(tmp_path / "n.zarr"), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert "pip install 'chunked_fnet[vendor]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "n.zarr").exists()
