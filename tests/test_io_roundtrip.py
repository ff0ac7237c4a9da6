"""OME-Zarr write -> read round trips (NGFF 0.4 / zarr v2 and 0.5 / zarr v3), checked against other readers.

Values, dims, physical coordinates (scale and translation, at full resolution and at pyramid levels)
and channel names must survive a round trip through :mod:`chunked_fnet.io`; ome-zarr-py, zarr-python,
tensorstore, the NGFF JSON schemas and ome-zarr-models must all agree with what we wrote.
"""

from __future__ import annotations

import itertools
import uuid

import dask.array as da
import fsspec
import ngff_zarr
import numpy as np
import pytest
import tensorstore as ts
import xarray as xr
import zarr

from chunked_fnet.errors import OmeZarrError, OutputExistsError
from chunked_fnet.io import store as store_mod
from chunked_fnet.io.reader import open_image
from chunked_fnet.io.writer import build_pyramid, create_image, write_region

VERSIONS = ("0.4", "0.5")
#: Every axis subset the reader supports: subsets of t, c, z, y, x that contain y and x, in NGFF order.
AXIS_SUBSETS = [
    tuple(d for d in "tczyx" if d in extra or d in "yx")
    for n in range(4)
    for extra in itertools.combinations("tcz", n)
]
assert len(AXIS_SUBSETS) == 8 and len(set(AXIS_SUBSETS)) == 8

# Deliberately non-divisible y/x sizes (37 x 41) and different y/x scales (so a swap would show).
SIZES = {"t": 2, "c": 2, "z": 3, "y": 37, "x": 41}
CHUNKS = {"t": 1, "c": 1, "z": 2, "y": 16, "x": 16}
SCALE = {"t": 0.5, "z": 0.5, "y": 0.25, "x": 0.3}
TRANSLATION = {"t": 10.0, "z": -1.0, "y": 3.0, "x": 5.5}
CHANNELS = ("DNA", "membrane")
LEVELS = 3
# Expected cumulative down-sampling factors, worked out by hand from the writer's documented rule
# (y and x halve every level; z halves once it is finer than y would become): with z=0.5 and
# y=0.25 µm, z stays at level 1 (0.5 is not < 0.5) and halves at level 2 (0.5 < 1.0).
FACTORS = [
    {"t": 1, "c": 1, "z": 1, "y": 1, "x": 1},
    {"t": 1, "c": 1, "z": 1, "y": 2, "x": 2},
    {"t": 1, "c": 1, "z": 2, "y": 4, "x": 4},
]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def reference_pyramid(data: np.ndarray, dims: tuple[str, ...], levels: int) -> list[np.ndarray]:
    """Block means computed independently of the writer: each level from the previous one, per axis,
    a partial block at the end averaging what is there; integers rounded (half to even) and clipped."""
    out = [data]
    for level in range(1, levels):
        cur = out[-1].astype(np.float64)
        for axis, d in enumerate(dims):
            f = FACTORS[level][d] // FACTORS[level - 1][d]
            if f == 1:
                continue
            n = cur.shape[axis]
            starts = np.arange(0, n, f)
            counts = np.minimum(starts + f, n) - starts
            sums = np.add.reduceat(cur, starts, axis=axis)
            shape = [1] * cur.ndim
            shape[axis] = len(counts)
            cur = sums / counts.reshape(shape)
        if np.issubdtype(data.dtype, np.integer):
            info = np.iinfo(data.dtype)
            cur = np.clip(np.rint(cur), info.min, info.max)
        out.append(cur.astype(data.dtype))
    return out


def chunk_aligned_regions(dims: tuple[str, ...]) -> list[tuple[slice, ...]]:
    """Several chunk-aligned regions tiling the image: one or two chunks wide, the last ones partial."""
    per_axis = []
    for d in dims:
        n, c = SIZES[d], CHUNKS[d]
        step = 2 * c if d == "x" else c  # x regions span two chunks at once
        per_axis.append([slice(s, min(s + step, n)) for s in range(0, n, step)])
    return list(itertools.product(*per_axis))


def sample_data(dims: tuple[str, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = tuple(SIZES[d] for d in dims)
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    # Dyadic values: every block mean is exact in float32, so levels can be compared bit for bit.
    return (rng.integers(0, 4096, size=shape) / 8).astype(dtype)


def write_image(path, dims, version, dtype="float32", levels=LEVELS, storage_options=None, seed=0):
    """Create an image, fill it from several chunk-aligned regions (in scrambled order), build the pyramid."""
    data = sample_data(dims, dtype, seed)
    group = create_image(
        path,
        shape=data.shape,
        dims=dims,
        chunks=tuple(CHUNKS[d] for d in dims),
        dtype=dtype,
        scale={d: SCALE[d] for d in dims if d != "c"},
        translation={d: TRANSLATION[d] for d in dims if d != "c"},
        channel_names=CHANNELS if "c" in dims else None,
        levels=levels,
        version=version,
        name="sample",
        storage_options=storage_options,
    )
    regions = chunk_aligned_regions(dims)
    assert len(regions) > 1
    for region in regions[::-1][::2] + regions[::-1][1::2]:
        write_region(group, region, data[region])
    build_pyramid(group, progress=False)
    return data


def expected_shape(dims, level):
    return tuple(_ceil_div(SIZES[d], FACTORS[level][d]) for d in dims)


def check_image(img: xr.DataArray, expected: np.ndarray, dims: tuple[str, ...], level: int, version: str) -> None:
    assert isinstance(img, xr.DataArray)
    assert img.dims == dims
    assert img.shape == expected_shape(dims, level) == expected.shape
    assert img.dtype == expected.dtype
    assert img.name == "sample"
    np.testing.assert_array_equal(img.values, expected)
    assert img.attrs["ngff_version"] == version
    assert img.attrs["level"] == level
    assert img.attrs["n_levels"] == LEVELS
    for d in dims:
        if d == "c":
            assert list(img["c"].values) == list(CHANNELS)
            continue
        f = FACTORS[level][d]
        scale = SCALE[d] * f
        # A block mean of f samples sits at the centre of the block: shift (f - 1) / 2 * scale0.
        translation = TRANSLATION[d] + (f - 1) / 2 * SCALE[d]
        assert img.attrs["scale"][d] == pytest.approx(scale)
        assert img.attrs["translation"][d] == pytest.approx(translation)
        assert img.attrs["translation"][d] - TRANSLATION[d] == pytest.approx((f - 1) / 2 * SCALE[d])
        np.testing.assert_allclose(img[d].values, translation + scale * np.arange(img.sizes[d]), rtol=0, atol=1e-12)
    assert "c" in dims or "channel_colors" not in img.attrs


def zarr_path(tmp_path, version):
    return tmp_path / f"img_v{version}.zarr"


@pytest.fixture(scope="module")
def written_images(tmp_path_factory):
    """Write each (version, dims) image once per module; the read-only tests below share them."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("written")

    def get(version: str, dims: tuple[str, ...]):
        key = (version, dims)
        if key not in cache:
            path = root / f"img_v{version}_{''.join(dims)}.zarr"
            data = write_image(path, dims, version)
            cache[key] = (path, data)
        return cache[key]

    return get


@pytest.mark.parametrize("dims", AXIS_SUBSETS, ids="".join)
@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_values_dims_coords_channels(written_images, version, dims):
    path, data = written_images(version, dims)
    expected = reference_pyramid(data, dims, LEVELS)
    for level in range(LEVELS):
        check_image(open_image(path, level=level), expected[level], dims, level, version)
    # The on-disk format matches the NGFF version.
    root = zarr.open_group(path, mode="r")
    assert root.metadata.zarr_format == (3 if version == "0.5" else 2)


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_uint16_pyramid(tmp_path, version):
    dims = ("t", "c", "z", "y", "x")
    path = zarr_path(tmp_path, version)
    data = write_image(path, dims, version, dtype="uint16")
    assert data.max() > 60000  # exercises values near the top of the range
    expected = reference_pyramid(data, dims, LEVELS)
    for level in range(LEVELS):
        img = open_image(path, level=level)
        assert img.dtype == np.uint16
        check_image(img, expected[level], dims, level, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_partial_region_writes_leave_rest_at_fill_value(tmp_path, version):
    dims = ("y", "x")
    path = zarr_path(tmp_path, version)
    group = create_image(path, shape=(37, 41), dims=dims, chunks=(16, 16), version=version, fill_value=7)
    data = sample_data(dims, "float32")
    written = [(slice(16, 32), slice(0, 16)), (slice(32, 37), slice(32, 41)), (slice(0, 16), slice(16, 41))]
    for region in written:
        write_region(group, region, data[region])
    expected = np.full((37, 41), 7, dtype="float32")
    for region in written:
        expected[region] = data[region]
    np.testing.assert_array_equal(open_image(path).values, expected)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_chunk_written_all_fill_value_is_stored(tmp_path, version):
    """write_region stores every chunk it is given (zarr's default would leave an all-fill one out, after a
    comparison pass over every chunk that cost 60 % of its I/O thread): the chunk count equals the writes."""
    path = zarr_path(tmp_path, version)
    group = create_image(path, shape=(32, 32), dims=("y", "x"), chunks=(16, 16), version=version, fill_value=0)
    write_region(group, (slice(0, 16), slice(0, 16)), np.zeros((16, 16), np.float32))  # all fill value
    write_region(group, (slice(16, 32), slice(0, 16)), np.ones((16, 16), np.float32))
    assert zarr.open_group(path, mode="r")["0"].nchunks_initialized == 2
    expected = np.zeros((32, 32), np.float32)
    expected[16:, :16] = 1
    np.testing.assert_array_equal(open_image(path).values, expected)


@pytest.mark.parametrize(
    "region",
    [
        (slice(0, 10), slice(0, 16)),  # ends inside a chunk (and not at the array's end)
        (slice(8, 16), slice(0, 16)),  # starts inside a chunk
        (slice(0, 16), slice(16, 40)),  # ends one short of the array's end
        (slice(0, 32, 2), slice(0, 16)),  # strided
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_write_region_refuses_unaligned_region(tmp_path, version, region):
    path = zarr_path(tmp_path, version)
    group = create_image(path, shape=(37, 41), dims=("y", "x"), chunks=(16, 16), version=version)
    block = np.ones(tuple(len(range(*sl.indices(n))) for sl, n in zip(region, (37, 41))), dtype="float32")
    with pytest.raises(OmeZarrError) as info:
        write_region(group, region, block)
    msg = str(info.value)
    assert str(path) in msg
    assert "aligned" in msg and "chunks of size 16" in msg
    # Nothing was written.
    np.testing.assert_array_equal(open_image(path).values, np.zeros((37, 41), dtype="float32"))


# --- other readers agree, metadata validates ------------------------------------------------------


@pytest.mark.parametrize("dims", AXIS_SUBSETS, ids="".join)
@pytest.mark.parametrize("version", VERSIONS)
def test_other_readers_agree(written_images, version, dims):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path, data = written_images(version, dims)
    expected = reference_pyramid(data, dims, LEVELS)

    # ome-zarr-py
    location = parse_url(str(path))
    assert location is not None
    nodes = list(Reader(location)())
    assert nodes, "ome-zarr-py found no image"
    node = nodes[0]
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    assert len(node.data) == LEVELS
    for level in range(LEVELS):
        np.testing.assert_array_equal(np.asarray(node.data[level]), expected[level])

    for level in range(LEVELS):
        # plain zarr-python
        arr = zarr.open_array(path / str(level), mode="r")
        assert arr.shape == expected[level].shape
        np.testing.assert_array_equal(arr[...], expected[level])
        # tensorstore
        spec = {
            "driver": "zarr3" if version == "0.5" else "zarr",
            "kvstore": {"driver": "file", "path": str(path / str(level))},
        }
        t = ts.open(spec, read=True).result()
        np.testing.assert_array_equal(t.read().result(), expected[level])


@pytest.mark.parametrize("dims", AXIS_SUBSETS, ids="".join)
@pytest.mark.parametrize("version", VERSIONS)
def test_metadata_validates(written_images, version, dims):
    import ome_zarr_models.v04
    import ome_zarr_models.v05

    path, _ = written_images(version, dims)
    group = zarr.open_group(path, mode="r")
    attrs = group.attrs.asdict()
    ngff_zarr.validate(attrs, version=version, model="image", strict=False)
    ngff_zarr.validate(attrs, version=version, model="image", strict=True)
    models = ome_zarr_models.v05 if version == "0.5" else ome_zarr_models.v04
    image = models.Image.from_zarr(group)
    multiscales = (image.ome_attributes if version == "0.5" else image.attributes).multiscales
    assert [ds.path for ds in multiscales[0].datasets] == [str(i) for i in range(LEVELS)]
    # The validated document says what we wrote.
    ome = attrs["ome"] if version == "0.5" else attrs
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == list(dims)
    assert [ds["path"] for ds in ms["datasets"]] == [str(i) for i in range(LEVELS)]
    if "c" in dims:
        assert [ch["label"] for ch in ome["omero"]["channels"]] == list(CHANNELS)
        # iohub (VisCy) refuses an image whose rdefs lack the plane to open on: the first frame, the middle z plane
        assert ome["omero"]["rdefs"] == {"defaultT": 0, "defaultZ": SIZES["z"] // 2 if "z" in dims else 0, "model": "color"}


@pytest.mark.parametrize("version", VERSIONS)
def test_metadata_validates_with_defaults(tmp_path, version):
    """Without a name, channels or a pyramid the document is still schema-valid (strict too)."""
    path = tmp_path / "defaults.zarr"
    create_image(path, shape=(5, 6), dims=("y", "x"), version=version)
    attrs = zarr.open_group(path, mode="r").attrs.asdict()
    ngff_zarr.validate(attrs, version=version, model="image", strict=False)
    ngff_zarr.validate(attrs, version=version, model="image", strict=True)
    assert open_image(path).name == "defaults.zarr"


# --- laziness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_open_image_is_lazy(tmp_path, version, monkeypatch):
    dims = ("c", "z", "y", "x")
    path = zarr_path(tmp_path, version)
    data = write_image(path, dims, version, levels=1)

    read_keys: list[str] = []
    original_get = zarr.storage.LocalStore.get

    async def spying_get(self, key, *args, **kwargs):
        read_keys.append(key)
        return await original_get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", spying_get)
    img = open_image(path)
    assert isinstance(img.data, da.Array)
    # One dask block per zarr chunk (the last one partial).
    assert img.chunks == tuple(
        (CHUNKS[d],) * (SIZES[d] // CHUNKS[d]) + ((SIZES[d] % CHUNKS[d],) if SIZES[d] % CHUNKS[d] else ()) for d in dims
    )
    metadata_files = {"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"}
    chunk_reads = [k for k in read_keys if k.rsplit("/", 1)[-1] not in metadata_files]
    assert chunk_reads == [], f"open_image read pixel data: {chunk_reads}"

    # Selecting and slicing stays lazy too.
    sub = img.isel(z=1)
    assert isinstance(sub.data, da.Array)
    assert [k for k in read_keys if k.rsplit("/", 1)[-1] not in metadata_files] == []

    # Data written after opening is what a later compute sees: nothing was cached at open time.
    zarr.open_array(path / "0", mode="r+")[...] = data + 1
    np.testing.assert_array_equal(img.compute().values, data + 1)
    assert any(k.rsplit("/", 1)[-1] not in metadata_files for k in read_keys)


# --- fsspec URLs -----------------------------------------------------------------------------------


@pytest.fixture
def memory_url():
    name = f"chunked-fnet-test-{uuid.uuid4().hex}.zarr"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_memory_url_round_trip(memory_url, version):
    dims = ("c", "z", "y", "x")
    data = write_image(memory_url, dims, version)
    expected = reference_pyramid(data, dims, LEVELS)
    for level in range(LEVELS):
        img = open_image(memory_url, level=level)
        assert isinstance(img.data, da.Array)
        check_image(img, expected[level], dims, level, version)
    # An existing URL is not silently replaced either.
    with pytest.raises(OutputExistsError):
        create_image(memory_url, shape=(4, 4), dims=("y", "x"), version=version)
    np.testing.assert_array_equal(open_image(memory_url).values, data)


@pytest.mark.parametrize("version", VERSIONS)
def test_file_url_round_trip(tmp_path, version):
    dims = ("t", "y", "x")
    path = zarr_path(tmp_path, version)
    url = path.as_uri()
    assert url.startswith("file://")
    data = write_image(url, dims, version)
    assert (path / ("zarr.json" if version == "0.5" else ".zattrs")).exists()
    expected = reference_pyramid(data, dims, LEVELS)
    for level in range(LEVELS):
        check_image(open_image(url, level=level), expected[level], dims, level, version)
        check_image(open_image(path, level=level), expected[level], dims, level, version)


# --- bioformats2raw collections ------------------------------------------------------------------


def make_bf2raw_collection(root, version):
    zarr_format = 3 if version == "0.5" else 2
    layout = {"bioformats2raw.layout": 3}
    attrs = {"ome": {"version": "0.5", **layout}} if version == "0.5" else layout
    zarr.create_group(str(root), zarr_format=zarr_format, attributes=attrs)
    images = []
    for series in range(2):
        data = write_image(root / str(series), ("c", "y", "x"), version, levels=2, seed=series + 1)
        images.append(data)
    assert not np.array_equal(images[0], images[1])
    return images


@pytest.mark.parametrize("version", VERSIONS)
def test_bioformats2raw_series(tmp_path, version):
    root = tmp_path / f"collection_v{version}.zarr"
    images = make_bf2raw_collection(root, version)

    for series in (1, "1", 0):
        img = open_image(root, series=series)
        np.testing.assert_array_equal(img.values, images[int(series)])
        assert list(img["c"].values) == list(CHANNELS)
        assert img.attrs["ngff_version"] == version
    level1 = open_image(root, series=1, level=1)
    assert level1.shape == (2, 19, 21)
    assert level1.attrs["scale"]["x"] == pytest.approx(2 * SCALE["x"])

    with pytest.raises(OmeZarrError) as info:
        open_image(root)
    msg = str(info.value)
    assert str(root) in msg and "series" in msg and "'0'" in msg and "'1'" in msg

    with pytest.raises(OmeZarrError) as info:
        open_image(root, series=5)
    msg = str(info.value)
    assert str(root) in msg and "5" in msg and "'0'" in msg and "'1'" in msg


# --- credential redaction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secrets", "kept"),
    [
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/img.zarr", ["AKIAEXAMPLE", "wJalrXUtnFEMI"], ["s3://", "bucket/img.zarr"]),
        ("https://alice:hunter2@example.org/data/img.zarr", ["alice", "hunter2"], ["https://", "example.org/data/img.zarr"]),
        ("https://token-only@example.org/img.zarr", ["token-only"], ["example.org/img.zarr"]),
        (
            "https://bucket.s3.amazonaws.com/img.zarr?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
            "&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE&X-Amz-Signature=abcdef0123456789",
            ["AKIAEXAMPLE", "FQoGZXIvYXdzEXAMPLE", "abcdef0123456789"],
            ["bucket.s3.amazonaws.com/img.zarr", "X-Amz-Expires=3600"],
        ),
        (
            "https://storage.googleapis.com/bucket/img.zarr?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=svc%40proj.iam.gserviceaccount.com%2F20250101%2Fauto%2Fstorage%2Fgoog4_request"
            "&X-Goog-Date=20250101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host"
            "&X-Goog-Signature=5f2a0c9e7d1b",
            ["svc%40proj.iam.gserviceaccount.com", "5f2a0c9e7d1b"],
            ["storage.googleapis.com/bucket/img.zarr", "X-Goog-Expires=900"],
        ),
        (
            "https://acct.blob.core.windows.net/c/img.zarr?sv=2022-11-02&se=2025-01-01&sp=r&sig=Zm9vYmFyc2VjcmV0",
            ["Zm9vYmFyc2VjcmV0"],
            ["acct.blob.core.windows.net/c/img.zarr", "sv=2022-11-02"],
        ),
        ("https://example.org/img.zarr?token=s3cr3tvalue&x=1", ["s3cr3tvalue"], ["x=1"]),
        (
            "cannot open https://alice:hunter2@example.org/img.zarr: 403 Forbidden",
            ["alice", "hunter2"],
            ["cannot open https://", "example.org/img.zarr: 403 Forbidden"],
        ),
    ],
)
def test_redact_hides_credentials(text, secrets, kept):
    out = store_mod.redact(text)
    for secret in secrets:
        assert secret not in out, out
    for part in kept:
        assert part in out, out
    assert "***" in out
    assert store_mod.describe(text) == out


@pytest.mark.parametrize("text", ["/data/img.zarr", "s3://bucket/a@b/img.zarr", "https://example.org/img.zarr?page=2"])
def test_redact_leaves_plain_locations_alone(text):
    assert store_mod.redact(text) == text


def test_image_header_is_written_after_its_arrays(tmp_path):
    """A reader never sees 'multiscales' naming arrays that do not exist yet."""
    from zarr.storage import LocalStore

    from chunked_fnet.io.writer import create_image

    writes: list[tuple[str, bool]] = []

    class Recording(LocalStore):
        async def set(self, key, value, *args, **kwargs):
            writes.append((key, b"multiscales" in value.to_bytes()))
            return await super().set(key, value, *args, **kwargs)

    for version, header in (("0.5", "zarr.json"), ("0.4", ".zattrs")):
        writes.clear()
        create_image(Recording(tmp_path / f"v{version}.zarr"), shape=(1, 2, 4, 8, 8), chunks=(1, 1, 4, 8, 8), levels=2,
                     channel_names=["a", "b"], version=version)
        header_writes = [i for i, (key, has) in enumerate(writes) if key == header and has]
        array_writes = [i for i, (key, _) in enumerate(writes) if key in ("0/zarr.json", "1/zarr.json", "0/.zarray", "1/.zarray")]
        assert header_writes and len(array_writes) == 2, writes
        assert min(header_writes) > max(array_writes), writes
