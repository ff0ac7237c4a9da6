"""The peers predict() and train() are measured against, in one module:

* :func:`bare_forward`: the model's own forward pass over whole frames, in predict's memory layout
  (``chunked_fnet.sliding_window.runner.default_channels_last``, the package's rule) and precision:
  the limit no tiling can beat;
* :func:`monai_sliding_window`: MONAI's ``sliding_window_inference`` at its common settings
  (:data:`MONAI_SETTINGS`: roi 32x64x64, overlap 0.25, gaussian, sw_batch_size 4);
* :func:`pytorch_fnet_predict`, :func:`pytorch_fnet_net`, :func:`run_pytorch_fnet_training`:
  pytorch_fnet's piecewise prediction and its training loop, rebuilt from its published code.

Each prediction peer returns a callable that predicts every given frame (what :func:`harness.timing.interleave` times).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: MONAI's common settings (the training patch as roi).
MONAI_SETTINGS: dict[str, Any] = {"roi_size": (32, 64, 64), "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 4}
#: The paper's training settings (pytorch_fnet's defaults).
PAPER_TRAINING: dict[str, Any] = {"model": {"depth": 4, "width": 32}, "patch_shape": [32, 64, 64], "batch_size": 24}


def _autocast(device: str, precision: str):  # noqa: ANN202
    import torch

    from chunked_fnet.device import autocast_dtype

    dev = torch.device(device)
    amp = autocast_dtype(precision, dev)
    return dev, amp, (lambda: torch.autocast(dev.type, dtype=amp) if amp is not None else torch.autocast(dev.type, enabled=False))


def bare_forward(model, frames: Sequence[np.ndarray], device: str = "cpu", precision: str = "fp32") -> Callable[[], list[Any]]:  # noqa: ANN001
    """The whole-frame forward pass of ``model`` (its inference copy, eval) over each z-scored frame
    (z y x), in the layout and precision predict's workers use on ``device``. Returns the callable and
    keeps inputs on the device, so only the forward is timed."""
    import torch

    from chunked_fnet.sliding_window.runner import default_channels_last

    dev, amp, autocast = _autocast(device, precision)
    channels_last = default_channels_last(dev, amp)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    net = model.inference_copy().eval().to(dev).to(memory_format=fmt)
    xs = [torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))[None, None].to(dev).contiguous(memory_format=fmt) for f in frames]

    def run() -> list[Any]:
        with torch.inference_mode(), autocast():
            return [net(x) for x in xs]

    run.channels_last = channels_last  # type: ignore[attr-defined]
    return run


def monai_sliding_window(model, frames: Sequence[np.ndarray], device: str = "cpu", precision: str = "fp32",  # noqa: ANN001
                         **settings: Any) -> Callable[[], list[Any]]:
    """MONAI's ``sliding_window_inference`` over each frame with :data:`MONAI_SETTINGS` (overridable),
    the plain model (NCDHW, as a MONAI user runs it), in ``precision``'s autocast."""
    import torch
    from monai.inferers import sliding_window_inference

    dev, _, autocast = _autocast(device, precision)
    net = model.eval().to(dev)
    kwargs = {**MONAI_SETTINGS, **settings}
    xs = [torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))[None, None].to(dev) for f in frames]

    def run() -> list[Any]:
        with torch.inference_mode(), autocast():
            return [sliding_window_inference(x, predictor=net, **kwargs) for x in xs]

    return run


def pytorch_fnet_predict(model, volume: np.ndarray, patch: Sequence[int], overlap: float, multiple: int, device: str) -> np.ndarray:  # noqa: ANN001
    """pytorch_fnet's piecewise prediction: one patch per forward, float32, no batching; weighted sums
    into whole-volume buffers (here on chunked_fnet's patch grid and Gaussian window, so only batching
    and bookkeeping differ)."""
    import torch

    from chunked_fnet.sliding_window import SlidingWindow

    window = SlidingWindow(volume.shape, patch, overlap, multiple, "gaussian")
    grid, weights = window.grid, window.weights
    out = np.zeros(volume.shape, dtype=np.float32)
    wsum = np.zeros(volume.shape, dtype=np.float32)
    with torch.no_grad():
        for corner in grid.corners():
            box = tuple(slice(c, c + p) for c, p in zip(corner, grid.patch))
            x = torch.from_numpy(np.ascontiguousarray(volume[box])[None, None]).to(device)
            y = model(x)[0, 0].cpu().numpy()
            out[box] += weights * y
            wsum[box] += weights
    return out / wsum


def pytorch_fnet_net(depth: int = 4, mult_chan: int = 32):  # noqa: ANN201
    """pytorch_fnet's ``fnet_nn_3d`` network, written from its published architecture: a recursive
    U-Net whose levels are ``SubNet2Conv`` blocks (conv3-BN-ReLU twice), a stride-2 conv + BN + ReLU
    down, a stride-2 transposed conv + BN + ReLU up, concatenation, and a final conv3 to one channel."""
    import torch
    from torch import nn

    def two_convs(n_in: int, n_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv3d(n_in, n_out, 3, padding=1), nn.BatchNorm3d(n_out), nn.ReLU(),
            nn.Conv3d(n_out, n_out, 3, padding=1), nn.BatchNorm3d(n_out), nn.ReLU(),
        )

    class Level(nn.Module):
        def __init__(self, n_in: int, n_out: int, depth: int) -> None:
            super().__init__()
            self.depth = depth
            self.more = two_convs(n_in, n_out)
            if depth > 0:
                self.less = two_convs(2 * n_out, n_out)
                self.down = nn.Sequential(nn.Conv3d(n_out, n_out, 2, stride=2), nn.BatchNorm3d(n_out), nn.ReLU())
                self.up = nn.Sequential(nn.ConvTranspose3d(2 * n_out, n_out, 2, stride=2), nn.BatchNorm3d(n_out), nn.ReLU())
                self.sub = Level(n_out, 2 * n_out, depth - 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.more(x)
            if self.depth == 0:
                return x
            return self.less(torch.cat((x, self.up(self.sub(self.down(x)))), 1))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rec = Level(1, mult_chan, depth)
            self.out = nn.Conv3d(mult_chan, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.rec(x))

    net = Net()
    for m in net.modules():  # its _weights_init
        if type(m).__name__.startswith("Conv"):
            m.weight.data.normal_(0.0, 0.02)
        elif "BatchNorm" in type(m).__name__:
            m.weight.data.normal_(1.0, 0.02)
            m.bias.data.fill_(0)
    return net


def run_pytorch_fnet_training(data: Path, iterations: int, device: str, threads: int | None = None, settings: dict | None = None) -> dict:
    """pytorch_fnet's training loop at ``settings`` (default :data:`PAPER_TRAINING`: model depth/width,
    patch, batch) on the pairs of ``data/manifest.yaml``: patches sliced from whole z-scored images in
    memory (its ``BufferedPatchDataset``), Adam(1e-3, betas 0.5/0.999), MSE, fp32. Seconds per iteration:
    the median after the first."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from chunked_fnet.train.data import PairReader, describe_pair, expand_pairs
    from chunked_fnet.train.manifest import read_manifest, split_pairs

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train_pairs, _ = split_pairs(expand_pairs(read_manifest(Path(data) / "manifest.yaml")), 30, 0)
    buffer = [PairReader(describe_pair(p), (0.29, 0.29, 0.29)).whole() for p in train_pairs]  # z-scored, model grid
    settings = settings or PAPER_TRAINING
    net = pytorch_fnet_net(settings["model"]["depth"], settings["model"]["width"]).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.999))
    patch, batch = settings["patch_shape"], settings["batch_size"]
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        xs, ys = [], []
        for _ in range(batch):  # BufferedPatchDataset.get_batch: random image of the buffer, random corner
            x, y = buffer[int(rng.integers(len(buffer)))]
            c = [int(rng.integers(0, n - p + 1)) for n, p in zip(x.shape, patch, strict=True)]
            region = tuple(slice(a, a + p) for a, p in zip(c, patch, strict=True))
            xs.append(x[region][None])
            ys.append(y[region][None])
        x_batch = torch.tensor(np.stack(xs), dtype=torch.float32, device=device)
        y_batch = torch.tensor(np.stack(ys), dtype=torch.float32, device=device)
        net.train()
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x_batch), y_batch)
        loss.backward()
        optimizer.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return {"iteration_s": statistics.median(times[1:] or times), "times": times}
