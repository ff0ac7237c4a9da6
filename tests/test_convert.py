"""TIFF / OME-TIFF / ImageJ hyperstack -> OME-Zarr conversion (chunked_fnet.io.convert)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import tifffile

from chunked_fnet.errors import InputError, OutputExistsError
from chunked_fnet.io import convert as convert_mod
from chunked_fnet.io.convert import block_shape, convert_tiff, length_to_um, time_to_seconds
from chunked_fnet.io.reader import open_image

SMALL_CHUNKS = (1, 1, 2, 16, 16)


def _rng_u16(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 60000, size=shape, dtype=np.uint16)


def _ome_tiff(path, data, **meta):
    metadata = {
        "axes": "TCZYX",
        "PhysicalSizeX": 0.108,
        "PhysicalSizeY": 0.108,
        "PhysicalSizeZ": 0.29,
        "Channel": {"Name": ["bf", "dna", "membrane"]},
        "TimeIncrement": 2.5,
    }
    metadata.update(meta)
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ome_tiff_round_trip(tmp_path):
    data = _rng_u16((2, 3, 5, 40, 50))
    src = _ome_tiff(tmp_path / "cells.ome.tif", data)
    out = convert_tiff(src, tmp_path / "cells.zarr", chunks=SMALL_CHUNKS, progress=False)
    assert out == tmp_path / "cells.zarr"
    img = open_image(out)
    assert img.dims == ("t", "c", "z", "y", "x")
    assert img.shape == data.shape
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img.values, data)
    assert img.attrs["scale"] == pytest.approx({"t": 2.5, "z": 0.29, "y": 0.108, "x": 0.108})
    assert img.attrs["units"] == {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    assert list(img["c"].values) == ["bf", "dna", "membrane"]
    assert img.name == "cells"
    assert img.data.chunksize == SMALL_CHUNKS
    # display windows span the data, not the default 0..1
    ome = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]
    windows = [ch["window"] for ch in ome["omero"]["channels"]]
    assert windows[1]["start"] == data[:, 1].min() and windows[1]["end"] == data[:, 1].max()
    assert windows[1]["max"] == 65535


def test_ome_units_are_converted_to_micrometers_and_seconds(tmp_path):
    data = _rng_u16((1, 1, 3, 20, 24))
    src = _ome_tiff(
        tmp_path / "units.ome.tif",
        data,
        PhysicalSizeX=108,
        PhysicalSizeXUnit="nm",
        PhysicalSizeY=0.000108,
        PhysicalSizeYUnit="mm",
        PhysicalSizeZ=0.29,
        PhysicalSizeZUnit="µm",
        TimeIncrement=1500,
        TimeIncrementUnit="ms",
        Channel={"Name": ["only"]},
    )
    img = open_image(convert_tiff(src, tmp_path / "units.zarr", progress=False))
    assert img.attrs["scale"] == pytest.approx({"t": 1.5, "z": 0.29, "y": 0.108, "x": 0.108})


def test_arguments_override_file_metadata(tmp_path):
    data = _rng_u16((2, 3, 4, 20, 24))
    src = _ome_tiff(tmp_path / "o.ome.tif", data)
    img = open_image(
        convert_tiff(
            src,
            tmp_path / "o.zarr",
            voxel_size=(1.0, 0.5, 0.25),
            time_interval=60,
            channel_names=["a", "b", "c"],
            chunks=SMALL_CHUNKS,
            progress=False,
        )
    )
    assert img.attrs["scale"] == pytest.approx({"t": 60.0, "z": 1.0, "y": 0.5, "x": 0.25})
    assert list(img["c"].values) == ["a", "b", "c"]


def test_pyramid_and_ngff_04(tmp_path):
    data = _rng_u16((1, 2, 4, 40, 48))
    src = _ome_tiff(tmp_path / "p.ome.tif", data, Channel={"Name": ["x", "y"]})
    out = convert_tiff(src, tmp_path / "p.zarr", chunks=SMALL_CHUNKS, levels=2, version="0.4", progress=False)
    assert (out / ".zattrs").exists()
    full, half = open_image(out, level=0), open_image(out, level=1)
    assert full.attrs["n_levels"] == 2 and full.attrs["ngff_version"] == "0.4"
    np.testing.assert_array_equal(full.values, data)
    assert half.shape == (1, 2, 4, 20, 24)
    assert half.attrs["scale"]["x"] == pytest.approx(2 * 0.108)


def test_imagej_hyperstack_voxel_size(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, size=(3, 5, 2, 40, 50), dtype=np.uint8)  # TZCYX
    src = tmp_path / "hyper.tif"
    tifffile.imwrite(
        src,
        data,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.25),
        metadata={"axes": "TZCYX", "spacing": 0.5, "unit": "\\u00B5m", "finterval": 3.0},
    )
    img = open_image(convert_tiff(src, tmp_path / "hyper.zarr", chunks=SMALL_CHUNKS, progress=False))
    assert img.shape == (3, 2, 5, 40, 50)
    np.testing.assert_array_equal(img.values, data.transpose(0, 2, 1, 3, 4))
    assert img.attrs["scale"] == pytest.approx({"t": 3.0, "z": 0.5, "y": 0.25, "x": 0.2})
    assert list(img["c"].values) == ["c0", "c1"]


def test_imagej_units_in_nanometers(tmp_path):
    data = np.zeros((4, 20, 24), dtype=np.uint16)
    src = tmp_path / "nm.tif"
    tifffile.imwrite(
        src, data, imagej=True, resolution=(1 / 100, 1 / 100), metadata={"axes": "ZYX", "spacing": 300, "unit": "nm"}
    )
    img = open_image(convert_tiff(src, tmp_path / "nm.zarr", progress=False))
    assert img.attrs["scale"] == pytest.approx({"t": 1.0, "z": 0.3, "y": 0.1, "x": 0.1})


def test_plain_zyx_without_pixel_size_needs_voxel_size(tmp_path):
    data = _rng_u16((6, 40, 50))
    src = tmp_path / "plain.tif"
    tifffile.imwrite(src, data, photometric="minisblack")
    with pytest.raises(InputError) as err:
        convert_tiff(src, tmp_path / "plain.zarr", progress=False)
    msg = str(err.value)
    assert "plain.tif" in msg and "--voxel-size Z Y X" in msg and "voxel_size" in msg
    assert not (tmp_path / "plain.zarr").exists()

    img = open_image(
        convert_tiff(src, tmp_path / "plain.zarr", voxel_size=(0.29, 0.108, 0.108), chunks=SMALL_CHUNKS, progress=False)
    )
    assert img.shape == (1, 1, 6, 40, 50)  # tifffile's 'Q' sequence axis became z
    np.testing.assert_array_equal(img.values[0, 0], data)
    assert img.attrs["scale"] == pytest.approx({"t": 1.0, "z": 0.29, "y": 0.108, "x": 0.108})


def test_cyx_2d_uint16_ome(tmp_path):
    data = _rng_u16((2, 40, 50))
    src = tmp_path / "two.ome.tif"
    tifffile.imwrite(
        src,
        data,
        ome=True,
        metadata={"axes": "CYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "Channel": {"Name": ["bf", "gfp"]}},
    )
    img = open_image(convert_tiff(src, tmp_path / "two.zarr", chunks=SMALL_CHUNKS, progress=False))
    assert img.shape == (1, 2, 1, 40, 50)
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img.values[0, :, 0], data)
    assert list(img["c"].values) == ["bf", "gfp"]
    assert img.attrs["scale"]["y"] == pytest.approx(0.2)


def test_cyx_plain_tiff_with_axes_override(tmp_path):
    data = _rng_u16((2, 40, 50))
    src = tmp_path / "cyx.tif"
    tifffile.imwrite(src, data, photometric="minisblack")
    img = open_image(
        convert_tiff(
            src,
            tmp_path / "cyx.zarr",
            axes="CYX",
            voxel_size=(1, 0.5, 0.5),
            channel_names=["bf", "dna"],
            chunks=SMALL_CHUNKS,
            progress=False,
        )
    )
    assert img.shape == (1, 2, 1, 40, 50)
    np.testing.assert_array_equal(img.values[0, :, 0], data)
    assert list(img["c"].values) == ["bf", "dna"]


def test_rgb_samples_become_channels(tmp_path):
    data = np.random.default_rng(2).integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, data, photometric="rgb")
    img = open_image(convert_tiff(src, tmp_path / "rgb.zarr", voxel_size=(1, 1, 1), chunks=SMALL_CHUNKS, progress=False))
    assert img.shape == (1, 3, 1, 40, 50)
    np.testing.assert_array_equal(img.values[0, :, 0], data.transpose(2, 0, 1))


def test_ambiguous_axes_raise_and_can_be_overridden(tmp_path):
    data = _rng_u16((3, 4, 20, 24))
    src = tmp_path / "amb.tif"
    tifffile.imwrite(src, data, photometric="minisblack")
    with pytest.raises(InputError) as err:
        convert_tiff(src, tmp_path / "amb.zarr", voxel_size=(1, 1, 1), progress=False)
    msg = str(err.value)
    assert "amb.tif" in msg and "QQYX" in msg and "axes=" in msg
    img = open_image(convert_tiff(src, tmp_path / "amb.zarr", axes="CZYX", voxel_size=(1, 1, 1), progress=False))
    assert img.shape == (1, 3, 4, 20, 24)
    np.testing.assert_array_equal(img.values[0], data)
    with pytest.raises(InputError, match="5 axis letters for 4 dimensions"):
        convert_tiff(src, tmp_path / "bad.zarr", axes="CZYXT", voxel_size=(1, 1, 1), progress=False)


def test_channel_name_count_must_match(tmp_path):
    src = _ome_tiff(tmp_path / "c.ome.tif", _rng_u16((1, 3, 2, 20, 24)))
    with pytest.raises(InputError, match="2 channel names"):
        convert_tiff(src, tmp_path / "c.zarr", channel_names=["a", "b"], progress=False)
    assert not (tmp_path / "c.zarr").exists()


def test_bad_voxel_size_and_chunks(tmp_path):
    src = _ome_tiff(tmp_path / "v.ome.tif", _rng_u16((1, 3, 2, 20, 24)))
    with pytest.raises(InputError, match="voxel_size"):
        convert_tiff(src, tmp_path / "v.zarr", voxel_size=(0.1, 0.1), progress=False)
    with pytest.raises(InputError, match="chunks"):
        convert_tiff(src, tmp_path / "v.zarr", chunks=(1, 1, 16, 16), progress=False)


def test_input_file_is_not_modified(tmp_path):
    src = _ome_tiff(tmp_path / "keep.ome.tif", _rng_u16((2, 3, 3, 20, 24)))
    before, mtime = _sha(src), os.stat(src).st_mtime_ns
    convert_tiff(src, tmp_path / "keep.zarr", chunks=SMALL_CHUNKS, levels=2, progress=False)
    assert _sha(src) == before
    assert os.stat(src).st_mtime_ns == mtime


def test_existing_output_needs_overwrite(tmp_path):
    data = _rng_u16((1, 3, 2, 20, 24))
    src = _ome_tiff(tmp_path / "e.ome.tif", data)
    out = convert_tiff(src, tmp_path / "e.zarr", progress=False)
    with pytest.raises(OutputExistsError):
        convert_tiff(src, out, progress=False)
    convert_tiff(src, out, overwrite=True, channel_names=["p", "q", "r"], progress=False)
    assert list(open_image(out)["c"].values) == ["p", "q", "r"]


def test_missing_or_non_tiff_input(tmp_path):
    with pytest.raises(InputError, match="missing.tif"):
        convert_tiff(tmp_path / "missing.tif", tmp_path / "m.zarr", progress=False)
    fake = tmp_path / "notes.tif"
    fake.write_text("not an image")
    with pytest.raises(InputError, match="notes.tif.*not a readable TIFF"):
        convert_tiff(fake, tmp_path / "m.zarr", progress=False)
    with pytest.raises(InputError, match="directory"):
        convert_tiff(tmp_path, tmp_path / "m.zarr", progress=False)
    assert not (tmp_path / "m.zarr").exists()


def test_small_block_budget_and_tiled_input(tmp_path, monkeypatch):
    """Blocks smaller than a plane (budget forces splitting y/x) and a tiled TIFF both stay exact."""
    monkeypatch.setattr(convert_mod, "BLOCK_BYTES", 2 * 16 * 16 * 2)
    data = _rng_u16((5, 64, 80))
    src = tmp_path / "tiled.tif"
    tifffile.imwrite(src, data, tile=(32, 32), photometric="minisblack")
    img = open_image(convert_tiff(src, tmp_path / "tiled.zarr", voxel_size=(1, 1, 1), chunks=SMALL_CHUNKS, progress=True))
    np.testing.assert_array_equal(img.values[0, 0], data)


def test_big_endian_input_is_stored_native(tmp_path):
    data = np.arange(3 * 20 * 24, dtype=">u2").reshape(3, 20, 24)
    src = tmp_path / "be.tif"
    tifffile.imwrite(src, data, byteorder=">", photometric="minisblack")
    img = open_image(convert_tiff(src, tmp_path / "be.zarr", voxel_size=(1, 1, 1), chunks=SMALL_CHUNKS, progress=False))
    assert img.dtype == np.dtype("uint16")
    np.testing.assert_array_equal(img.values[0, 0], data)


def test_block_shape_aligned_and_bounded():
    # whole-plane TIFF pages, 32-plane z chunks: y is split to stay under the budget, in whole chunks
    block = block_shape((1, 1, 64, 1024, 1024), (1, 1, 32, 256, 256), (1, 1, 1, 1024, 1024), 2, 16 * 2**20)
    assert block[:3] == [1, 1, 32]
    assert all(b % c == 0 for b, c in zip(block[3:], (256, 256)))
    assert np.prod(block) * 2 <= 16 * 2**20
    # native strips smaller than the output chunk: blocks are just the output chunks
    assert block_shape((1, 1, 8, 100, 100), (1, 1, 4, 32, 32), (1, 1, 1, 8, 100), 2, 2**30) == [1, 1, 4, 32, 100]


@pytest.mark.parametrize(
    ("value", "unit", "um"),
    [
        (290, "nm", 0.29),
        (0.29, "µm", 0.29),
        (0.29, "\\u00B5m", 0.29),
        (0.29, "micron", 0.29),
        (1, "mm", 1000.0),
        (1, "Mm", 1e12),
        (2900, "Å", 0.29),
        (1, "pixel", None),
        (0, "µm", None),
    ],
)
def test_length_units(value, unit, um):
    got = length_to_um(value, unit)
    assert got == (pytest.approx(um) if um is not None else None)


def test_time_units():
    assert time_to_seconds(1500, "ms") == pytest.approx(1.5)
    assert time_to_seconds(2, "min") == pytest.approx(120)
    assert time_to_seconds(1, "Ms") == pytest.approx(1e6)
    assert time_to_seconds(-1, "s") is None


def test_one_unit_table_knows_every_ngff_unit():
    """The converter and the neuroglancer view read the same table, which knows every OME-NGFF unit."""
    from chunked_fnet.io.units import metres, seconds

    lengths = {"angstrom": 1e-10, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3, "centimeter": 1e-2,
               "meter": 1.0, "kilometer": 1e3, "inch": 0.0254, "foot": 0.3048, "yard": 0.9144, "mile": 1609.344,
               "picometer": 1e-12, "femtometer": 1e-15, "decimeter": 0.1, "hectometer": 100.0}
    times = {"nanosecond": 1e-9, "microsecond": 1e-6, "millisecond": 1e-3, "centisecond": 1e-2, "decisecond": 0.1,
             "second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "kilosecond": 1e3}
    for unit, m in lengths.items():
        assert metres(unit) == pytest.approx(m) and length_to_um(1, unit) == pytest.approx(m * 1e6), unit
    for unit, s in times.items():
        assert seconds(unit) == pytest.approx(s) and time_to_seconds(1, unit) == pytest.approx(s), unit
    assert metres(None) == 1e-6 and seconds(None) == 1.0  # NGFF axes without a unit: µm, seconds


def test_ome_time_step_from_plane_delta_t(tmp_path):
    data = _rng_u16((3, 2, 20, 24))
    src = tmp_path / "dt.ome.tif"
    tifffile.imwrite(
        src,
        data,
        metadata={
            "axes": "TCYX",
            "PhysicalSizeX": 0.1,
            "PhysicalSizeY": 0.1,
            "Plane": {"DeltaT": [0, 0, 4000, 4000, 8000, 8000], "DeltaTUnit": ["ms"] * 6},
        },
    )
    img = open_image(convert_tiff(src, tmp_path / "dt.zarr", progress=False))
    assert img.shape == (3, 2, 1, 20, 24)
    assert img.attrs["scale"]["t"] == pytest.approx(4.0)
    np.testing.assert_array_equal(img.values[:, :, 0], data)


def test_imagej_labels_name_channels(tmp_path):
    data = np.random.default_rng(3).integers(0, 255, size=(2, 20, 24), dtype=np.uint8)
    src = tmp_path / "labels.tif"
    tifffile.imwrite(
        src,
        data,
        imagej=True,
        resolution=(10, 10),
        metadata={"axes": "CYX", "unit": "um", "Labels": ["bf", "dna"]},
    )
    img = open_image(convert_tiff(src, tmp_path / "labels.zarr", progress=False))
    assert list(img["c"].values) == ["bf", "dna"]
    assert img.attrs["scale"]["x"] == pytest.approx(0.1)
    np.testing.assert_array_equal(img.values[0, :, 0], data)
