"""Bad OME-Zarr input gives one clear :class:`OmeZarrError` naming the file and what was expected;
reading never modifies the input; creating never clobbers what is already there."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from chunked_fnet.errors import OmeZarrError, OutputExistsError
from chunked_fnet.io.reader import open_image, read_metadata, select_channels
from chunked_fnet.io.writer import build_pyramid, create_image, write_region

VERSIONS = ("0.4", "0.5")
CHANNELS = ["DNA", "membrane"]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file's bytes and mtime, and every directory's mtime, under ``root`` (or that it is absent)."""
    root = Path(root)
    if not root.exists():
        return {}
    if root.is_file():
        st = root.stat()
        return {".": ("file", root.read_bytes(), st.st_mtime_ns)}
    out: dict[str, tuple] = {".": ("dir", root.stat().st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root))] = ("dir", p.stat().st_mtime_ns)
        for f in filenames:
            p = Path(dirpath, f)
            out[str(p.relative_to(root))] = ("file", p.read_bytes(), p.stat().st_mtime_ns)
    return out


def expect_one_clear_error(root: Path, call, *fragments: str, where: str | None = None) -> str:
    """``call()`` raises exactly an OmeZarrError (a ValueError) with a one-line message naming ``where``
    (default: ``root``) and containing every fragment; nothing under ``root`` changes."""
    before = snapshot(root)
    with pytest.raises(OmeZarrError) as info:
        call()
    after = snapshot(root)
    assert after == before, "a failed read modified (or created) files under its input"
    err = info.value
    assert type(err) is OmeZarrError and isinstance(err, ValueError)
    msg = str(err)
    assert "\n" not in msg, msg
    assert str(where if where is not None else root) in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


def write_small_image(path, version, dims=("c", "z", "y", "x"), levels=2):
    shape = {"c": 2, "z": 3, "y": 9, "x": 10}
    shape = tuple(shape[d] for d in dims)
    data = np.arange(np.prod(shape), dtype="float32").reshape(shape)
    group = create_image(
        path,
        shape=shape,
        dims=dims,
        chunks=tuple(min(s, 4) for s in shape),
        levels=levels,
        version=version,
        channel_names=CHANNELS if "c" in dims else None,
    )
    write_region(group, tuple(slice(None) for _ in dims), data)
    build_pyramid(group, progress=False)
    return data


def edit_attrs(path: Path, version: str, edit) -> None:
    """Rewrite an image's NGFF metadata file in place (``edit`` mutates the multiscales / ome dicts)."""
    meta_file = path / ("zarr.json" if version == "0.5" else ".zattrs")
    doc = json.loads(meta_file.read_text())
    attrs = doc["attributes"] if version == "0.5" else doc
    ome = attrs["ome"] if version == "0.5" else attrs
    edit(ome)
    meta_file.write_text(json.dumps(doc))


# --- not an OME-Zarr image at all ----------------------------------------------------------------


@pytest.mark.parametrize("form", ["path", "str", "file-url"])
def test_missing_path(tmp_path, form):
    missing = tmp_path / "nope" / "missing.zarr"
    arg = {"path": missing, "str": str(missing), "file-url": missing.as_uri()}[form]
    expect_one_clear_error(
        tmp_path, lambda: open_image(arg), "no such file or directory", "expected an OME-Zarr image", where=str(arg)
    )
    assert not missing.exists() and not missing.parent.exists()
    expect_one_clear_error(tmp_path, lambda: read_metadata(arg), "OME-Zarr", where=str(arg))


def test_missing_memory_url():
    url = f"memory://missing-{uuid.uuid4().hex}.zarr"
    with pytest.raises(OmeZarrError) as info:
        open_image(url)
    assert type(info.value) is OmeZarrError
    assert url in str(info.value) and "expected an OME-Zarr image" in str(info.value)


@pytest.mark.parametrize("contents", ["empty", "with-files"])
def test_plain_directory(tmp_path, contents):
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    if contents == "with-files":
        (plain / "notes.txt").write_text("not zarr")
        (plain / "sub").mkdir()
    expect_one_clear_error(plain, lambda: open_image(plain), "not a zarr store", "expected an OME-Zarr image")


@pytest.mark.parametrize("name", ["image.zarr", "image.tif"])
def test_file_not_zarr(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"II*\x00" + bytes(64))
    expect_one_clear_error(path, lambda: open_image(path), "is a file", "OME-Zarr")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_without_multiscales(tmp_path, zarr_format):
    path = tmp_path / "group.zarr"
    zarr.create_group(str(path), zarr_format=zarr_format, attributes={"foo": 1})
    expect_one_clear_error(path, lambda: open_image(path), "not an OME-Zarr image", "'multiscales'", "expected NGFF")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_bare_zarr_array(tmp_path, zarr_format):
    path = tmp_path / "array.zarr"
    arr = zarr.create_array(str(path), shape=(4, 5), chunks=(4, 5), dtype="float32", zarr_format=zarr_format)
    arr[...] = 1
    expect_one_clear_error(path, lambda: open_image(path), "bare zarr array", "OME-Zarr image")


# --- malformed OME-Zarr metadata -----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_axis_name(tmp_path, version):
    path = tmp_path / "img.zarr"
    write_small_image(path, version)

    def rename_z_to_q(ome):
        ome["multiscales"][0]["axes"][1]["name"] = "q"

    edit_attrs(path, version, rename_z_to_q)
    msg = expect_one_clear_error(path, lambda: open_image(path), "['q']", "expected a subset of")
    assert all(d in msg for d in "tczyx")


@pytest.mark.parametrize("version", VERSIONS)
def test_duplicate_axis_name(tmp_path, version):
    path = tmp_path / "img.zarr"
    write_small_image(path, version)

    def rename_z_to_y(ome):
        ome["multiscales"][0]["axes"][1]["name"] = "y"

    edit_attrs(path, version, rename_z_to_y)
    expect_one_clear_error(path, lambda: open_image(path), "duplicate axis", "['y']", "['c', 'y', 'y', 'x']")


@pytest.mark.parametrize(
    ("version", "bad"),
    [("0.4", "0.3"), ("0.4", None), ("0.5", "0.6"), ("0.5", None)],
)
def test_unsupported_ngff_version(tmp_path, version, bad):
    path = tmp_path / "img.zarr"
    write_small_image(path, version)

    def set_version(ome):
        holder = ome if version == "0.5" else ome["multiscales"][0]
        if bad is None:
            del holder["version"]
        else:
            holder["version"] = bad

    edit_attrs(path, version, set_version)
    expect_one_clear_error(
        path, lambda: open_image(path), "version", repr(bad) if bad else "(missing)", "'0.4'", "'0.5'"
    )


# --- asking for something the image does not have -------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_channel(tmp_path, version):
    path = tmp_path / "img.zarr"
    write_small_image(path, version)
    img = open_image(path)
    listed = str(CHANNELS)
    expect_one_clear_error(path, lambda: select_channels(img, "GFP"), "'GFP'", listed)
    expect_one_clear_error(path, lambda: select_channels(img, ["DNA", "GFP"]), "'GFP'", listed)
    expect_one_clear_error(path, lambda: select_channels(img, 2), "index 2", "2 channels", listed)
    expect_one_clear_error(path, lambda: select_channels(img, -3), "index -3", listed)
    # The valid selections still work.
    assert select_channels(img, "membrane").equals(img.isel(c=1))
    assert select_channels(img, [1, "DNA"])["c"].values.tolist() == ["membrane", "DNA"]


@pytest.mark.parametrize("level", [2, 7, -1])
@pytest.mark.parametrize("version", VERSIONS)
def test_missing_pyramid_level(tmp_path, version, level):
    path = tmp_path / "img.zarr"
    write_small_image(path, version, levels=2)
    expect_one_clear_error(path, lambda: open_image(path, level=level), f"level {level}", "2 level(s)")


# --- reading never writes; creating never clobbers -------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_reader_never_writes(tmp_path, version):
    path = tmp_path / "img.zarr"
    data = write_small_image(path, version)
    before = snapshot(path)
    assert len([k for k, v in before.items() if v[0] == "file"]) > 4

    for level in range(2):
        img = open_image(path, level=level)
        computed = img.compute()
        if level == 0:
            np.testing.assert_array_equal(computed.values, data)
    select_channels(open_image(path), "DNA").compute()
    read_metadata(path)
    open_image(path.as_uri()).compute()
    for failing in (
        lambda: open_image(path, level=5),
        lambda: open_image(path, series=3),
        lambda: select_channels(open_image(path), "GFP"),
        lambda: select_channels(open_image(path), 9),
    ):
        with pytest.raises(OmeZarrError):
            failing()
    assert snapshot(path) == before


@pytest.mark.parametrize("form", ["path", "str", "file-url"])
@pytest.mark.parametrize("existing", ["ome-zarr", "plain-dir", "file"])
def test_create_image_refuses_existing_without_overwrite(tmp_path, form, existing):
    path = tmp_path / "out.zarr"
    if existing == "ome-zarr":
        write_small_image(path, "0.5")
    elif existing == "plain-dir":
        path.mkdir()
        (path / "precious.txt").write_text("keep me")
    else:
        path.write_text("keep me")
    arg = {"path": path, "str": str(path), "file-url": path.as_uri()}[form]
    before = snapshot(path)
    with pytest.raises(OutputExistsError) as info:
        create_image(arg, shape=(4, 4), dims=("y", "x"), version="0.4")
    assert str(arg) in str(info.value) and "overwrite" in str(info.value)
    assert snapshot(path) == before


@pytest.mark.parametrize("form", ["path", "file-url"])
@pytest.mark.parametrize("existing", ["plain-dir", "file"])
def test_create_image_overwrite_refuses_to_delete_non_zarr(tmp_path, form, existing):
    path = tmp_path / "out.zarr"
    if existing == "plain-dir":
        path.mkdir()
        (path / "precious.txt").write_text("keep me")
        (path / "sub").mkdir()
        (path / "sub" / "more.txt").write_text("and me")
    else:
        path.write_text("keep me")
    arg = {"path": path, "file-url": path.as_uri()}[form]
    before = snapshot(path)
    with pytest.raises(OutputExistsError) as info:
        create_image(arg, shape=(4, 4), dims=("y", "x"), overwrite=True)
    assert str(arg) in str(info.value) and "not a zarr store" in str(info.value)
    assert snapshot(path) == before


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_create_image_overwrite_replaces_existing_zarr(tmp_path, form):
    path = tmp_path / "out.zarr"
    write_small_image(path, "0.4")
    arg = {"path": path, "file-url": path.as_uri()}[form]
    create_image(arg, shape=(4, 4), dims=("y", "x"), overwrite=True, fill_value=3)
    img = open_image(path)
    assert img.dims == ("y", "x") and img.attrs["ngff_version"] == "0.5"
    np.testing.assert_array_equal(img.values, np.full((4, 4), 3, dtype="float32"))
    assert not (path / ".zattrs").exists()
