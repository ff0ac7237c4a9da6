"""The seam metric finds seams where they are, and the blended chunked prediction has none."""

from __future__ import annotations

import numpy as np
import torch

from chunked_fnet.evaluate.seams import seam_metrics
from chunked_fnet.sliding_window import PatchRunner, SlidingWindow, padded_reader, partition, predict_volume
from chunked_fnet.model import FnetUNet, UNetConfig


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(16), np.arange(64), np.arange(64), indexing="ij")
    smooth = np.sin(x / 5.0) + np.cos(y / 7.0) + 0.5 * np.sin(z / 3.0)
    return (smooth + 0.3 * rng.normal(size=smooth.shape)).astype(np.float32)[None]


def test_blended_chunks_have_no_seams_and_naive_chunks_do() -> None:
    torch.manual_seed(0)
    model = FnetUNet(UNetConfig(depth=2, width=4)).eval()
    volume = _volume()
    with torch.inference_mode():
        whole = model(torch.from_numpy(volume[None]))[0].numpy()  # one forward pass of the whole volume
    chunks = (8, 24, 24)
    options = dict(patch=(16, 32, 32), overlap=0.5, blend="gaussian", multiple=4, batch_size=2)
    blended = np.zeros_like(whole)
    naive = np.zeros_like(whole)
    window = SlidingWindow(volume.shape, options["patch"], options["overlap"], options["multiple"], options["blend"])
    runner = PatchRunner(model, batch_size=options["batch_size"])
    read = padded_reader(volume)
    # what predict's tasks do: each chunk owns the patches centred in it; chunks blend the pieces that land in them
    sums = [runner.weighted_sums(window, read, *window.owned(b)) for b in partition(volume.shape[1:], chunks) if window.owned(b)[0]]
    for region in partition(volume.shape[1:], chunks):
        pieces = [s.crop(inter) for s in sums if (inter := s.box.intersect(region)) is not None]
        blended[(slice(None), *region.slices)] = window.blend_pieces(region, pieces)
        # the "naive" way: each chunk predicted on its own, as if it were the whole image
        naive[(slice(None), *region.slices)] = predict_volume(model, np.ascontiguousarray(volume[(slice(None), *region.slices)]), **options)
    np.testing.assert_allclose(blended, predict_volume(model, volume, **options), atol=1e-5)
    good = seam_metrics(blended, chunks, reference=whole, period=model.multiple)
    bad = seam_metrics(naive, chunks, reference=whole, period=model.multiple)
    # an untrained net has strong patch-edge effects; blending keeps them near the single pass, while
    # predicting chunks on their own leaves steps several times larger at every chunk boundary
    assert good["relative_step_ratio"] < 1.5 and good["error_ratio"] < 1.3, good
    assert bad["relative_step_ratio"] > 2.5 * good["relative_step_ratio"], (good, bad)
    assert bad["error_ratio"] > 1.4 and bad["relative_error"] > 3 * good["relative_error"], (good, bad)
