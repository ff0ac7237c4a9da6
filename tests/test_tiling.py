"""The global patch grid, blending, and the whole-volume / per-chunk predictors.

The central property: predicting a volume in one go equals stitching independent per-region
predictions, for any partition of the volume (chunking must not change the result)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chunked_fnet.sliding_window import (
    Box,
    PatchGrid,
    PatchRunner,
    SlidingWindow,
    WeightedSum,
    blend_weights,
    fit_patch,
    padded_reader,
    partition,
    patch_starts,
    predict_volume,
)
from halo_oracle import blend_region, halo_for, patch_evaluations, predict_chunk, stitch_halo_chunks, unbatched

KINDS = ["gaussian", "cosine", "linear", "constant"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The models here are tiny: intra-op threads only add contention (and seconds) on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ tiny models
def _conv_stack(c_in: int = 1, c_out: int = 1, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(c_in, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, c_out, 3, padding=1),
    )


class _TinyUNet(torch.nn.Module):
    """Depth-1 U-Net: conv, 2x down, conv, 2x up, skip concat, conv (needs patches divisible by 2)."""

    def __init__(self, c_in: int = 1, c_out: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.enc = torch.nn.Conv3d(c_in, 4, 3, padding=1)
        self.down = torch.nn.Conv3d(4, 8, 2, stride=2)
        self.mid = torch.nn.Conv3d(8, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.dec = torch.nn.Conv3d(8, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.relu(self.enc(x))
        m = torch.relu(self.mid(self.down(e)))
        return self.dec(torch.cat([e, self.up(m)], dim=1))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _window(shape, patch, overlap=0.25, multiple=16, blend="gaussian", pad_mode="reflect") -> SlidingWindow:
    return SlidingWindow(tuple(shape[-3:]), patch, overlap, multiple, blend, pad_mode=pad_mode)


def _owned_then_finished(model, vol, blocks, regions, **opts) -> tuple[np.ndarray, int]:
    """The two-stage chunked path that predict's tasks take: each block's owned patches evaluated
    once into weighted sums, then each region blended from the pieces that land in it; returns the
    stitched result and how many patches the model evaluated."""
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return model(x)

    window = _window(vol.shape, opts["patch"], opts["overlap"], opts["multiple"], opts.get("blend", "gaussian"))
    runner = PatchRunner(counted, batch_size=opts.get("batch_size", 4))
    read = padded_reader(vol)
    sums = []
    for block in partition(vol.shape[1:], blocks):
        corners, extent = window.owned(block)
        if corners:
            sums.append(runner.weighted_sums(window, read, corners, extent))
    out = np.full((sums[0].values.shape[0],) + vol.shape[1:], np.nan, dtype=np.float32)
    for r in partition(vol.shape[1:], regions):
        pieces = [s.crop(inter) for s in sums if (inter := s.box.intersect(r)) is not None]
        out[(slice(None), *r.slices)] = window.blend_pieces(r, pieces)
    return out, sum(calls)


# ----------------------------------------------------------------------------------------- grid
@pytest.mark.parametrize(
    "size,patch,step",
    [(100, 32, 24), (32, 32, 24), (33, 32, 24), (7, 16, 12), (1, 16, 12), (50, 32, 1), (64, 16, 16), (65, 16, 16)],
)
def test_patch_starts_cover_and_end_at_edge(size: int, patch: int, step: int) -> None:
    starts = patch_starts(size, patch, step)
    padded = max(size, patch)
    assert starts[0] == 0
    assert starts[-1] + patch == padded
    assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= step)
    cover = np.zeros(padded, dtype=int)
    for s in starts:
        cover[s : s + patch] += 1
    assert cover.min() >= 1
    # regular steps except for the last window, which is shifted back (never a duplicate)
    assert np.all(starts[:-1] == np.arange(len(starts) - 1) * step)
    np.testing.assert_array_equal(starts, patch_starts(size, patch, step))


def test_grid_covers_every_voxel_and_is_deterministic() -> None:
    for shape, patch, overlap in [
        ((40, 70, 90), (16, 32, 32), 0.25),
        ((7, 45, 50), (16, 32, 32), 0.5),
        ((17, 33, 100), (16, 32, 32), (0.0, 0.3, 0.75)),
    ]:
        grid = PatchGrid(shape, patch, overlap)
        assert grid.padded_shape == tuple(max(n, p) for n, p in zip(shape, patch))
        cover = np.zeros(grid.padded_shape, dtype=np.int32)
        corners = list(grid.corners())
        assert len(corners) == grid.n_patches == len(set(corners))
        for c in corners:
            cover[tuple(slice(s, s + p) for s, p in zip(c, grid.patch))] += 1
        assert cover.min() >= 1
        for a in range(3):
            assert grid.starts[a][-1] + grid.patch[a] == grid.padded_shape[a]
        assert grid.recompute_factor == pytest.approx(cover.sum() / np.prod(shape))
        again = PatchGrid(shape, patch, overlap)
        assert again == grid
        for a in range(3):
            np.testing.assert_array_equal(again.starts[a], grid.starts[a])


def test_grid_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="overlap"):
        PatchGrid((10, 10, 10), (8, 8, 8), 8)  # voxels: at least the patch
    with pytest.raises(ValueError, match="whole number"):
        PatchGrid((10, 10, 10), (8, 8, 8), 2.5)
    with pytest.raises(ValueError, match="overlap"):
        PatchGrid((10, 10, 10), (8, 8, 8), -0.1)
    with pytest.raises(ValueError, match="overlap"):
        PatchGrid((10, 10, 10), (8, 8, 8), (0.1, 0.2))
    with pytest.raises(ValueError):
        PatchGrid((0, 10, 10), (8, 8, 8), 0.25)
    grid = PatchGrid((10, 10, 10), (8, 8, 8), 0.25)
    with pytest.raises(ValueError, match="outside the volume"):
        grid.patches_touching((slice(0, 11), slice(0, 5), slice(0, 5)))
    with pytest.raises(ValueError, match="empty"):
        grid.patches_touching((slice(3, 3), slice(0, 5), slice(0, 5)))


def test_patches_touching_and_halo_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 60, size=3))
        patch = tuple(int(p) for p in rng.choice([4, 8, 16], size=3))
        overlap = tuple(float(o) for o in rng.choice([0.0, 0.25, 0.5, 0.8], size=3))
        grid = PatchGrid(shape, patch, overlap)
        all_corners = list(grid.corners())
        for _ in range(5):
            lo = [int(rng.integers(0, n)) for n in shape]
            hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape)]
            region = tuple(slice(a, b) for a, b in zip(lo, hi))
            expected = [
                c for c in all_corners
                if all(c[a] < hi[a] and c[a] + patch[a] > lo[a] for a in range(3))
            ]
            got = grid.patches_touching(region)
            assert got == expected  # same set, same canonical order
            halo = halo_for(grid, Box(tuple(lo), tuple(hi)))
            assert got == grid.patches_touching(Box(tuple(lo), tuple(hi)))  # a Box and slices agree
            for a in range(3):
                assert halo.start[a] == min(c[a] for c in expected)
                assert halo.stop[a] == max(c[a] for c in expected) + patch[a]
                assert halo.start[a] <= lo[a] and halo.stop[a] >= hi[a]
                assert 0 <= halo.start[a] and halo.stop[a] <= grid.padded_shape[a]


def test_halo_accepts_open_slices() -> None:
    grid = PatchGrid((30, 40, 50), (8, 16, 16), 0.25)
    whole = Box.from_slices((slice(None), slice(None), slice(None)), grid.shape)
    assert halo_for(grid, whole) == Box.of_shape(grid.padded_shape)
    assert grid.patches_touching((slice(-1, None), slice(0, 1), slice(0, 1))) == [(22, 0, 0)]


def test_partition_covers_every_voxel_once() -> None:
    shape = (10, 13, 7)
    for chunks in [(4, 5, 7), (10, 13, 7), (1, 1, 1), ((3, 7), (13,), (2, 2, 3))]:
        count = np.zeros(shape, dtype=int)
        for r in partition(shape, chunks):
            count[r.slices] += 1
        assert np.all(count == 1)
    with pytest.raises(ValueError):
        partition(shape, ((3, 6), (13,), (7,)))


def test_box_value_type() -> None:
    a, b = Box((0, 2, 4), (5, 6, 9)), Box((3, 0, 8), (10, 4, 12))
    assert a.shape == (5, 4, 5) and a.size == 100 and a.slices == (slice(0, 5), slice(2, 6), slice(4, 9))
    assert a.intersect(b) == Box((3, 2, 8), (5, 4, 9)) and a.intersect(Box((5, 0, 0), (6, 1, 1))) is None
    assert a.intersect(b).within(a) == (slice(3, 5), slice(0, 2), slice(4, 5))
    with pytest.raises(ValueError, match="not inside"):
        b.within(a)
    with pytest.raises(ValueError, match="start < stop"):
        Box((0, 0, 0), (1, 0, 1))
    assert Box.from_slices((slice(-2, None), slice(None, 3), slice(1, -1)), (10, 4, 5)) == Box((8, 0, 1), (10, 3, 4))


# -------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("patch", [(16, 32, 32), (7, 12, 5), (1, 2, 3)])
def test_blend_weights_positive_symmetric_max_one(kind: str, patch: tuple[int, int, int]) -> None:
    w = blend_weights(patch, kind)
    assert w.shape == patch and w.dtype == np.float32
    assert w.max() == 1.0
    assert w.min() > 0 and w.min() >= 1e-3 - 1e-9
    for axis in range(3):
        np.testing.assert_array_equal(w, np.flip(w, axis))
    if kind != "constant" and min(patch) > 4:
        centre = tuple(p // 2 for p in patch)
        assert w[centre] > w[0, 0, 0]  # a bump, not flat


def test_blend_weights_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="blend"):
        blend_weights((8, 8, 8), "hamming")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- blending
@pytest.mark.parametrize("kind", KINDS)
def test_identity_model_returns_input(kind: str) -> None:
    shape = (1, 21, 45, 50)
    # a power-of-two constant is reproduced bit for bit (normalisation by the summed weights is exact)
    for value in (1.0, 0.25, -8.0):
        vol = np.full(shape, value, dtype=np.float32)
        out = predict_volume(_identity, vol, patch=(16, 32, 32), overlap=0.4, blend=kind, batch_size=3)
        np.testing.assert_array_equal(out, vol)
    vol = np.full(shape, 3.7, dtype=np.float32)
    out = predict_volume(_identity, vol, patch=(16, 32, 32), overlap=0.4, blend=kind)
    np.testing.assert_allclose(out, vol, rtol=1e-6)
    vol = _volume(shape)
    out = predict_volume(_identity, vol, patch=(16, 32, 32), overlap=0.25, blend=kind)
    np.testing.assert_allclose(out, vol, rtol=1e-5, atol=1e-6)


def test_blend_region_batches_and_reads_only_touching_patches() -> None:
    window = SlidingWindow((20, 30, 40), (8, 16, 16), 0.5, multiple=8, blend="gaussian")
    grid = window.grid
    region = Box((5, 0, 20), (13, 7, 40))
    calls: list[int] = []
    seen: list[tuple[int, int, int]] = []

    def predict_batch(corners):
        calls.append(len(corners))
        seen.extend(corners)
        # output = z coordinate of each voxel, so the blend of consistent patches is exact-ish
        out = np.empty((len(corners), 1) + grid.patch, dtype=np.float32)
        for i, c in enumerate(corners):
            out[i, 0] = (np.arange(grid.patch[0]) + c[0])[:, None, None]
        return out

    out = blend_region(region, window, predict_batch, batch_size=5)
    assert seen == grid.patches_touching(region)
    assert max(calls) <= 5 and sum(calls) == len(seen)
    assert out.shape == (1, 8, 7, 20)
    np.testing.assert_allclose(out[0], np.broadcast_to(np.arange(5, 13)[:, None, None], (8, 7, 20)), rtol=1e-6)
    # the one-patch adapter gives the same result
    single = unbatched(lambda c: predict_batch([c])[0])
    np.testing.assert_array_equal(blend_region(region, window, single, batch_size=1), out)


def test_blend_region_checks_model_output_shape() -> None:
    window = SlidingWindow((20, 30, 40), (8, 16, 16), 0.25, multiple=8, blend="gaussian")
    with pytest.raises(ValueError, match="predict_batch returned shape"):
        blend_region(Box((0, 0, 0), (4, 4, 4)), window, lambda corners: np.zeros((len(corners), 1, 8, 16, 15)))


# -------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge", "constant"])
@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_padded_reader_matches_numpy_pad(mode: str, n: int) -> None:
    vol = _volume((2, n, 5, 4), seed=n)
    before, after = (9, 2, 0), (11, 3, 5)
    ref = np.pad(vol, [(0, 0)] + list(zip(before, after)), mode=mode)
    read = padded_reader(vol, mode)  # type: ignore[arg-type]
    full = tuple(slice(-b, s + a) for b, s, a in zip(before, vol.shape[1:], after))
    np.testing.assert_array_equal(read(full), ref)
    sub = (slice(n - 1, n + 10), slice(-1, 3), slice(2, 9))
    ref_sub = ref[(slice(None), *(slice(s.start + b, s.stop + b) for s, b in zip(sub, before)))]
    np.testing.assert_array_equal(read(sub), ref_sub)
    # in-range reads are views, no copy
    assert np.shares_memory(read((slice(0, n), slice(1, 4), slice(0, 4))), vol)


# ----------------------------------------------------------------------------- chunk invariance
@pytest.mark.parametrize(
    "model_name,shape,patch,multiple",
    [
        ("conv", (1, 20, 37, 41), (8, 16, 16), 8),
        ("unet", (1, 19, 35, 42), (8, 16, 16), 2),
        ("unet", (1, 6, 30, 33), (8, 16, 16), 8),  # z shorter than a patch: padded
    ],
)
def test_chunked_equals_whole_volume(model_name: str, shape, patch, multiple) -> None:
    model = _conv_stack() if model_name == "conv" else _TinyUNet()
    vol = _volume(shape, seed=3)
    opts = dict(patch=patch, overlap=0.25, blend="gaussian", batch_size=3, multiple=multiple)
    whole = predict_volume(model, vol, **opts)
    assert whole.shape[1:] == shape[1:] and np.isfinite(whole).all()
    z, y, x = shape[1:]
    partitions = [
        (z, y, x),  # one chunk = the volume
        (7, 16, 16),  # regular, ragged edges
        ((1, z - 4, 3), (y - 10, 10), (5, 11, x - 16)),  # uneven, one-voxel slab
        (z, 9, 41),  # slabs along y
    ]
    window = _window(shape, patch, 0.25, multiple)
    runner = PatchRunner(model, batch_size=3)
    for chunks in partitions:
        stitched, _ = _owned_then_finished(model, vol, chunks, chunks, **opts)
        assert not np.isnan(stitched).any()
        np.testing.assert_allclose(stitched, whole, atol=1e-5, rtol=0, err_msg=f"chunks={chunks}")
        # and the halo oracle (every region evaluating all its touching patches) agrees
        halo = stitch_halo_chunks(runner, vol, window, chunks)
        np.testing.assert_allclose(halo, whole, atol=1e-5, rtol=0, err_msg=f"halo chunks={chunks}")
    assert len(partition(shape[1:], partitions[1])) > 1


def test_dask_threads_on_shared_model_match_whole_volume() -> None:
    """The intended chunked pattern: one dask task per output chunk, threads sharing one model (here
    with dropout, left in train mode by its owner: every task must still run it in eval mode)."""
    import dask.array as da

    torch.manual_seed(0)
    model = torch.nn.Sequential(_conv_stack(), torch.nn.Dropout(0.5))
    model.train()
    vol = _volume((1, 20, 37, 41), seed=4)
    opts = dict(patch=(8, 16, 16), overlap=0.25, multiple=8, batch_size=2)
    whole = predict_volume(model, vol, **opts)
    window = _window(vol.shape, opts["patch"], opts["overlap"], opts["multiple"])

    def task(block_info=None):
        loc = block_info[None]["array-location"][1:]
        region = Box(tuple(a for a, _ in loc), tuple(b for _, b in loc))
        return predict_chunk(PatchRunner(model, batch_size=2), vol, window, region)

    lazy = da.map_blocks(task, dtype=np.float32, chunks=((1,), (6, 6, 8), (10, 27), (16, 16, 9)))
    stitched = lazy.compute(scheduler="threads", num_workers=4)
    np.testing.assert_allclose(stitched, whole, atol=1e-5, rtol=0)
    assert model.training


def test_weighted_sums_read_only_the_patches_box_once() -> None:
    vol = _volume((1, 20, 37, 41))
    window = _window(vol.shape, (8, 16, 16), 0.25, 8)
    reads = []
    inner = padded_reader(vol)

    def read(region):
        reads.append(tuple(region))
        return inner(region)

    block = Box((8, 16, 0), (12, 30, 10))
    corners, extent = window.owned(block)
    piece = PatchRunner(_conv_stack()).weighted_sums(window, read, corners, extent)
    assert piece.box == extent and piece.values.shape == (1, *extent.shape)
    assert reads == [window.grid.bounding_box(corners).slices]
    with pytest.raises(ValueError, match="no patches"):
        PatchRunner(_conv_stack()).weighted_sums(window, read, [], extent)


# ------------------------------------------------------------------------------------ odd sizes
@pytest.mark.parametrize("pad_mode", ["reflect", "symmetric", "edge", "constant"])
def test_odd_sizes_keep_shape_without_nan(pad_mode: str) -> None:
    vol = _volume((2, 7, 45, 50))
    model = _TinyUNet(c_in=2, c_out=3)
    out = predict_volume(model, vol, patch=(16, 32, 32), overlap=0.25, pad_mode=pad_mode, multiple=16)
    assert out.shape == (3, 7, 45, 50) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_tiny_volumes() -> None:
    for shape in [(1, 1, 1, 1), (1, 1, 5, 3), (1, 2, 17, 1)]:
        vol = _volume(shape)
        out = predict_volume(_identity, vol, patch=(16, 32, 32), overlap=0.25)
        np.testing.assert_allclose(out, vol, rtol=1e-6)
        assert np.isfinite(predict_volume(_conv_stack(), vol, patch=(16, 32, 32), overlap=0.25)).all()


def test_patch_must_be_divisible_and_fit_patch_shrinks() -> None:
    vol = _volume((1, 8, 8, 8))
    with pytest.raises(ValueError, match="divisible by 16"):
        predict_volume(_identity, vol, patch=(16, 24, 32))
    assert fit_patch((32, 64, 64), (7, 45, 200), 16) == (16, 48, 64)
    assert fit_patch((32, 64, 64), (33, 64, 65), 16) == (32, 64, 64)
    assert fit_patch((32, 64, 64), (1, 1, 1), 16) == (16, 16, 16)
    assert SlidingWindow((1, 7, 45, 200), (32, 64, 64), 0.25, 16, "gaussian").patch_shape == (16, 48, 64)
    assert SlidingWindow((64, 64, 200), (32, 64, 64), 0.25, 16, "gaussian").patch_shape == (32, 64, 64)
    with pytest.raises(ValueError, match="divisible"):
        fit_patch((30, 64, 64), (7, 45, 200), 16)
    with pytest.raises(ValueError, match=r"\(C, Z, Y, X\)"):
        predict_volume(_identity, vol[0], patch=(16, 16, 16))


# ----------------------------------------------------------------------------- model handling
def test_tta_with_flip_equivariant_model_equals_plain() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 1, 3, padding=1, bias=True)
    with torch.no_grad():
        k = conv.weight
        for axis in (2, 3, 4):
            k.copy_((k + torch.flip(k, (axis,))) / 2)  # symmetric kernel => flip-equivariant
    model = torch.nn.Sequential(conv, torch.nn.Tanh())
    vol = _volume((1, 12, 30, 27))
    opts = dict(patch=(8, 16, 16), overlap=0.25, multiple=8)
    plain = predict_volume(model, vol, **opts)
    for tta in (True, "all", [(0, 2), (1,)]):
        np.testing.assert_allclose(predict_volume(model, vol, tta_flips=tta, **opts), plain, atol=1e-5)
    # and TTA does change the result of a model that is not flip-equivariant
    other = _conv_stack(seed=5)
    with_tta = predict_volume(other, vol, tta_flips=True, **opts)
    assert not np.allclose(with_tta, predict_volume(other, vol, **opts), atol=1e-4)


def test_eval_mode_restored_and_ensemble_averages() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 1, 1), torch.nn.Dropout(0.5))
    model.train()
    vol = _volume((1, 8, 16, 16))
    opts = dict(patch=(8, 16, 16), multiple=8)
    a = predict_volume(model, vol, **opts)
    b = predict_volume(model, vol, **opts)
    np.testing.assert_array_equal(a, b)  # dropout off: eval mode during inference
    assert model.training  # ... and the caller's mode is restored
    m1, m2 = _conv_stack(seed=1), _conv_stack(seed=2)
    ens = predict_volume([m1, m2], vol, **opts)
    mean = (predict_volume(m1, vol, **opts) + predict_volume(m2, vol, **opts)) / 2
    np.testing.assert_allclose(ens, mean, atol=1e-6)


def test_model_with_wrong_output_shape_is_reported() -> None:
    vol = _volume((1, 8, 16, 16))
    with pytest.raises(ValueError, match="must return"):
        predict_volume(lambda x: x[..., :-1], vol, patch=(8, 16, 16), multiple=8)


def test_patch_evaluations_count_chunking_cost() -> None:
    grid = SlidingWindow((64, 256, 256), (32, 64, 64), 0.25, 16, "gaussian").grid
    whole = patch_evaluations(grid, [grid.frame])
    assert whole == grid.n_patches
    chunked = patch_evaluations(grid, partition(grid.shape, (64, 128, 128)))
    assert chunked > whole
    corners = list(grid.corners())
    brute = sum(
        sum(all(c[a] < r.stop[a] and c[a] + grid.patch[a] > r.start[a] for a in range(3)) for c in corners)
        for r in partition(grid.shape, (64, 128, 128))
    )
    assert chunked == brute


@pytest.mark.parametrize("chunks", [(7, 16, 16), ((1, 13, 6), (9, 31), (40, 5)), (20, 37, 45), (2, 3, 50)])
def test_every_patch_has_exactly_one_owner(chunks) -> None:
    grid = SlidingWindow((20, 40, 45), (8, 16, 16), 0.25, 8, "gaussian").grid
    owners: dict[tuple[int, int, int], int] = {}
    for r in partition(grid.shape, chunks):
        for corner in grid.patches_owned(r):
            owners[corner] = owners.get(corner, 0) + 1
        extent = grid.owned_extent(r)
        owned = grid.patches_owned(r)
        assert (extent is None) == (not owned)
        if owned:  # the extent is the real part of the owned patches' bounding box
            for a in range(3):
                assert extent.start[a] == min(c[a] for c in owned)
                assert extent.stop[a] == min(max(c[a] for c in owned) + grid.patch[a], grid.shape[a])
    assert sorted(owners) == sorted(grid.corners()) and set(owners.values()) == {1}


@pytest.mark.parametrize("blend", ["gaussian", "cosine"])
def test_owned_blocks_evaluate_each_patch_once_and_equal_the_whole_volume(blend: str) -> None:
    model = _TinyUNet()
    vol = _volume((1, 20, 37, 45), seed=5)
    opts = dict(patch=(8, 16, 16), overlap=0.25, blend=blend, batch_size=3, multiple=8)
    whole = predict_volume(model, vol, **opts)
    grid = _window(vol.shape, opts["patch"], 0.25, 8).grid
    # blocks and output regions need not coincide: any two partitions
    for blocks, regions in [((7, 16, 16), (7, 16, 16)), ((20, 9, 45), (5, 37, 8)), (((1, 19), (30, 7), (2, 43)), (20, 37, 45))]:
        stitched, evaluated = _owned_then_finished(model, vol, blocks, regions, **opts)
        assert evaluated == grid.n_patches, blocks  # no halo recompute, whatever the blocks
        assert not np.isnan(stitched).any()
        np.testing.assert_allclose(stitched, whole, atol=1e-5, rtol=0, err_msg=f"blocks={blocks} regions={regions}")
    # the halo path evaluates the border patches once per region that they touch
    assert patch_evaluations(grid, partition(grid.shape, (7, 16, 16))) > grid.n_patches


def test_blend_pieces_refuses_pieces_outside_it() -> None:
    window = SlidingWindow((8, 16, 16), (8, 16, 16), 0.25, 8, "gaussian")
    region = Box((0, 0, 0), (4, 16, 16))
    with pytest.raises(ValueError, match="not inside region"):
        window.blend_pieces(region, [WeightedSum(Box((0, 0, 0), (5, 16, 16)), np.zeros((1, 5, 16, 16), np.float32))])
    with pytest.raises(ValueError, match="no pieces"):
        window.blend_pieces(region, [])
    with pytest.raises(ValueError, match="do not fit box"):
        WeightedSum(region, np.zeros((1, 4, 16, 15), np.float32))


def test_window_is_one_value_weights_built_once_and_not_pickled() -> None:
    import pickle

    window = SlidingWindow((20, 40, 45), (8, 16, 16), 0.25, 8, "cosine", sigma_scale=0.2)
    assert window.weights is window.weights  # built once per process
    np.testing.assert_array_equal(window.weights, blend_weights((8, 16, 16), "cosine", 0.2))
    copy = pickle.loads(pickle.dumps(window))
    assert "weights" not in pickle.loads(pickle.dumps(window)).__dict__ and len(pickle.dumps(window)) < 2000
    assert copy == window and copy.grid == window.grid
    np.testing.assert_array_equal(copy.weights, window.weights)
    with pytest.raises(ValueError, match="blend"):
        SlidingWindow((8, 8, 8), (8, 8, 8), 0.25, 8, "hamming")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pad_mode"):
        SlidingWindow((8, 8, 8), (8, 8, 8), 0.25, 8, "gaussian", pad_mode="wrap")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_autocast_close_to_cpu() -> None:
    model = _TinyUNet()
    vol = _volume((1, 20, 40, 40))
    opts = dict(patch=(16, 32, 32), overlap=0.25, multiple=16)
    cpu = predict_volume(model, vol, **opts)
    gpu = predict_volume(model, vol, device="cuda", **opts)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    half = predict_volume(model, vol, device="cuda", amp_dtype=torch.float16, **opts)
    np.testing.assert_allclose(half, cpu, atol=2e-2)
    model.to("cpu")



# ------------------------------------------------------------- band blend, aligned grid, voxel overlap
@pytest.mark.parametrize("size,patch,step", [(100, 32, 16), (32, 32, 16), (33, 32, 16), (7, 16, 8), (64, 16, 16), (200, 48, 32)])
def test_aligned_starts_sit_on_multiples_of_the_step_and_cover(size: int, patch: int, step: int) -> None:
    starts = patch_starts(size, patch, step, align=True)
    assert starts[0] == 0 and np.all(starts % step == 0) and np.all(np.diff(starts) == step)
    assert starts[-1] + patch >= size and (len(starts) == 1 or starts[-1] + patch - step < size)  # the last one is needed


@pytest.mark.parametrize("overlap", [2, 5, 16, 32])
def test_band_profiles_of_neighbours_add_up_to_one_and_skip_the_margin(overlap: int) -> None:
    from chunked_fnet.sliding_window.window import band_profile

    n = 64
    left, right = band_profile(n, overlap, True, False), band_profile(n, overlap, False, True)
    # right neighbour starts at n - overlap: over the overlap the two weights sum to exactly 1
    np.testing.assert_allclose(left[n - overlap :] + right[:overlap], 1.0, atol=1e-12)
    assert left[0] == 1 and right[-1] == 1  # no taper at a frame border
    margin = (overlap - max(1, overlap // 4)) // 2
    assert np.all(right[:margin] == 0) and np.all(left[n - margin :] == 0)  # the untrusted rim gets no weight
    assert np.all(band_profile(n, overlap, False, False)[overlap : n - overlap] == 1)  # the centre is never thrown away


@pytest.mark.parametrize("chunks", [(7, 16, 16), ((1, 15), (30, 34), (2, 62)), (16, 64, 64)])
def test_band_blend_on_an_aligned_grid_is_chunk_invariant(chunks) -> None:
    model = _TinyUNet()
    vol = _volume((1, 16, 64, 64), seed=6)
    opts = dict(patch=(8, 32, 32), overlap=(0, 8, 8), blend="band", batch_size=2, multiple=4)
    window = SlidingWindow(vol.shape, (8, 32, 32), (0, 8, 8), 4, "band", align=True)
    runner = PatchRunner(model, batch_size=2)
    piece = runner.weighted_sums(window, padded_reader(vol), list(window.grid.corners()), window.grid.frame)
    whole = window.blend_pieces(window.grid.frame, [piece])
    read = padded_reader(vol)
    sums = [runner.weighted_sums(window, read, *window.owned(b)) for b in partition(vol.shape[1:], chunks) if window.owned(b)[0]]
    out = np.full_like(whole, np.nan)
    for r in partition(vol.shape[1:], chunks):
        out[(slice(None), *r.slices)] = window.blend_pieces(r, [s.crop(i) for s in sums if (i := s.box.intersect(r)) is not None])
    np.testing.assert_allclose(out, whole, atol=1e-5, rtol=0)
    # identity: every voxel's weights sum to one patch's worth, the input comes back
    np.testing.assert_allclose(predict_volume(_identity, vol, **opts), vol, rtol=1e-6, atol=1e-6)
    assert window.overlap_voxels == (0, 8, 8) and window.grid.step == (8, 24, 24)


def test_band_blend_matches_a_single_pass_where_gaussian_does_not() -> None:
    """Away from the frame's border, the band blend takes every voxel from patches in which it lies
    beyond the zero-padding rim, so it equals one forward pass over the whole frame; a Gaussian blend
    of small patches mixes in their rims."""
    from chunked_fnet.model import FnetUNet, UNetConfig

    torch.manual_seed(0)
    model = FnetUNet(UNetConfig(depth=2, width=8)).eval()
    vol = _volume((1, 16, 96, 96), seed=7)
    with torch.inference_mode():
        single = model(torch.from_numpy(vol[None]))[0].numpy()
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    scale = single.std()
    band = predict_volume(model, vol, patch=(16, 48, 48), overlap=(0, 16, 16), blend="band", batch_size=4, multiple=4)
    gauss = predict_volume(model, vol, patch=(16, 48, 48), overlap=0.25, blend="gaussian", multiple=4)
    err_band = np.abs(band - single)[inner].max() / scale
    err_gauss = np.abs(gauss - single)[inner].max() / scale
    assert err_band < 5e-3 and err_gauss > 100 * err_band, (err_band, err_gauss)


def test_a_whole_frame_patch_blends_each_chunk_by_the_short_path_bit_for_bit() -> None:
    """One band patch over the whole frame (weight 1): a chunk's blend is its piece, bit for bit what the general
    path (zero-filled sum, divided by the weight sum) gives, -0.0 included; patches with neighbours take the general path."""

    window = SlidingWindow((8, 32, 32), (8, 32, 32), (0, 0, 0), 4, "band", align=True)
    assert window.grid.n_patches == 1 and window.unit_weights(window.grid.patches_touching(Box((0, 0, 0), (8, 32, 32)))[0])
    box = Box((0, 16, 0), (8, 32, 16))
    values = np.random.default_rng(0).standard_normal((2, *box.shape)).astype(np.float32)
    values[0, 0, 0, :3] = -0.0
    piece = WeightedSum(box, values)
    general = (np.zeros_like(values) + values) / window.weight_sum(box)
    blended = window.blend_pieces(box, [piece])
    assert blended.dtype == np.float32 and blended.tobytes() == general.tobytes()
    assert blended is not values and np.signbit(blended[0, 0, 0, :3]).sum() == 0  # the general path's +0.0

    tiled = SlidingWindow((8, 32, 64), (8, 32, 32), (0, 0, 16), 4, "band", align=True)
    box = Box((0, 0, 0), (8, 32, 24))
    corners = tiled.grid.patches_touching(box)
    assert len(corners) > 1
    sums = [WeightedSum(box, np.ones((1, *box.shape), np.float32))]
    np.testing.assert_array_equal(tiled.blend_pieces(box, sums), 1 / tiled.weight_sum(box)[None])
