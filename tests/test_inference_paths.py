"""The inference fast paths (device-side blending, channels_last_3d) give the reference results and
leave the caller's model as it was. No timings here: speed is measured by benchmarks/."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from chunked_fnet.sliding_window import Box, PatchRunner, SlidingWindow, padded_reader, predict_volume
from chunked_fnet.model import FnetUNet, UNetConfig
from halo_oracle import blend_region, predict_chunk


def _model(seed: int = 0) -> FnetUNet:
    torch.manual_seed(seed)
    return FnetUNet(UNetConfig(depth=2, width=4, out_channels=2))


def _volume(shape=(1, 20, 37, 41), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_device_blend_equals_numpy_blend_region() -> None:
    model, vol = _model(), _volume()
    window = SlidingWindow(vol.shape, (8, 16, 16), 0.25, multiple=4, blend="gaussian")
    runner = PatchRunner(model, channels_last=False, batch_size=3)
    region = Box((4, 5, 0), (17, 30, 41))
    fast = predict_chunk(runner, vol, window, region)
    # the reference: numpy blending of the same patches, one patch's output at a time
    read = padded_reader(vol)

    def predict_batch(corners):
        x = np.stack([read(window.grid.patch_box(c).slices) for c in corners])
        return runner.forward(torch.from_numpy(x)).numpy()

    with runner.session():
        reference = blend_region(region, window, predict_batch, batch_size=3)
    assert fast.shape == (2, 13, 25, 41)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-6)


def test_channels_last_matches_and_restores_the_module() -> None:
    model, vol = _model(), _volume()
    model.train()
    opts = dict(patch=(8, 16, 16), overlap=0.25, multiple=4)
    plain = predict_volume(model, vol, channels_last=False, **opts)
    fast = predict_volume(model, vol, channels_last=True, **opts)
    default = predict_volume(model, vol, **opts)  # on the CPU: channels_last_3d
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(default, fast)
    assert model.training
    assert all(p.is_contiguous() for p in model.parameters())
    # a module the caller keeps in channels_last_3d stays so
    model.to(memory_format=torch.channels_last_3d)
    predict_volume(model, vol, **opts)
    weight = model.encoders[0].conv2.weight  # (conv1 has one input channel: both formats at once)
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()


def test_input_dtypes_and_read_only_arrays() -> None:
    model = _model()
    vol = _volume()
    opts = dict(patch=(8, 16, 16), overlap=0.25, blend="gaussian", batch_size=4, multiple=4)  # exactly this window: no policy warning
    reference = predict_volume(model, vol, **opts)
    frozen = vol.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(predict_volume(model, frozen, **opts), reference)
    np.testing.assert_allclose(predict_volume(model, vol.astype(np.float64), **opts), reference, rtol=0, atol=1e-6)
    flipped = np.ascontiguousarray(vol[:, ::-1])[:, ::-1]  # a negative-stride view of the same values
    np.testing.assert_array_equal(predict_volume(model, flipped, **opts), reference)


def test_device_thread_runs_every_forward_in_one_thread_with_the_same_result() -> None:
    """A GPU worker's task threads hand their forward passes to the device's one thread (torch's cuDNN
    algorithm cache is per thread); on the CPU the same path is taken when asked, and must not change
    a value or the caller's module."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    model, vol = _model(), _volume()
    seen: set[str] = set()
    model.register_forward_hook(lambda *_: seen.add(threading.current_thread().name))
    window = SlidingWindow(vol.shape[1:], (8, 16, 16), 0.25, multiple=4, blend="gaussian")
    read = padded_reader(vol)
    corners = list(window.grid.corners())
    target = Box((0, 0, 0), vol.shape[1:])
    inline = PatchRunner(model, batch_size=3).weighted_sums(window, read, corners, target)
    assert seen == {threading.current_thread().name}
    seen.clear()
    threaded = PatchRunner(model, batch_size=3, device_thread=True)
    halves = [corners[: len(corners) // 2], corners[len(corners) // 2 :]]
    with ThreadPoolExecutor(2) as pool:  # two task threads at once, as on a worker
        parts = list(pool.map(lambda cs: threaded.weighted_sums(window, read, cs, target), halves))
    assert len(seen) == 1 and next(iter(seen)).startswith("chunked_fnet-cpu")
    np.testing.assert_allclose(parts[0].values + parts[1].values, inline.values, rtol=0, atol=1e-5)
    assert model.training and all(p.is_contiguous() for p in model.parameters())
