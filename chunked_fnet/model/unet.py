"""The U-Net of Ounkomol et al. (2018), "Label-free prediction of three-dimensional fluorescence
images from transmitted-light microscopy", written out level by level.

Layout for ``depth`` = D and ``width`` = W (channels at level ``i`` are ``W * 2**i``)::

    level 0   encoders[0] ─────────────────────────── skip ──────────────────── decoders[0] → head
                  │ downs[0]                                                        ▲ ups[0]
    level 1       encoders[1] ─────────────── skip ─────────────── decoders[1]
                  ...                                                  ▲
    level D                          bottleneck ───────────────────────┘

* ``encoders[i]``, ``decoders[i]``, ``bottleneck``: two 3×3(×3) convolutions (padding 1), each
  followed by batch normalisation and ReLU. A decoder's input is the concatenation
  ``[skip, upsampled]`` (skip first), so it has twice the level's channels.
* ``downs[i]``: a 2×2(×2) convolution with stride 2 (channels unchanged) + BN + ReLU.
* ``ups[i]``: a 2×2(×2) transposed convolution with stride 2 (channels halved) + BN + ReLU.
* ``head``: a 3×3(×3) convolution to ``out_channels``, with no activation (targets are z-scored
  intensities and can be negative).

With the defaults (3D, depth 4, width 32, one channel in and out) the network has 23,280,769
parameters, the same as pytorch_fnet's ``fnet_nn_3d`` network; its weights can be imported with
:func:`chunked_fnet.model.pytorch_fnet.import_pytorch_fnet`.
"""

from __future__ import annotations

import copy
from typing import Literal

import pydantic
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["UNetConfig", "FnetUNet", "count_flops_per_voxel", "count_parameters"]


class UNetConfig(pydantic.BaseModel, extra="forbid", frozen=True):
    """Shape of a :class:`FnetUNet`; stored in every checkpoint's model card."""

    dims: Literal[2, 3] = 3
    depth: int = pydantic.Field(4, ge=0, le=10, description="number of down-samplings")
    width: int = pydantic.Field(32, ge=1, description="channels at the top level (doubles per level)")
    in_channels: int = pydantic.Field(1, ge=1)
    out_channels: int = pydantic.Field(1, ge=1)

    @property
    def multiple(self) -> int:
        """Every spatial size of an input must be divisible by this (``2**depth``)."""
        return 2**self.depth

    def channels(self, level: int) -> int:
        """Feature channels at ``level`` (0 = full resolution, ``depth`` = bottleneck)."""
        return self.width * 2**level


def _layers(dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if dims == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d
    return nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d


class ConvBlock(nn.Module):
    """conv3 → BN → ReLU → conv3 → BN → ReLU."""

    def __init__(self, dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        conv, _, norm = _layers(dims)
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in-place ReLU: its input is a fresh BN (or folded conv) output that nothing else reads, so
        # one activation fewer is alive at a time; autograd is unaffected (ReLU's backward uses its output)
        x = torch.relu_(self.bn1(self.conv1(x)))
        return torch.relu_(self.bn2(self.conv2(x)))


class Resample(nn.Module):
    """A stride-2, kernel-2 (transposed) convolution → BN → ReLU: halves or doubles every spatial size."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, *, up: bool) -> None:
        super().__init__()
        conv, convt, norm = _layers(dims)
        self.conv = (convt if up else conv)(in_channels, out_channels, kernel_size=2, stride=2)
        self.bn = norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.bn(self.conv(x)))


class FnetUNet(nn.Module):
    """The paper's U-Net, built from a :class:`UNetConfig` (see the module docstring for the layout).

    Input ``(N, in_channels, Z, Y, X)`` (3D) or ``(N, in_channels, Y, X)`` (2D) with every spatial
    size divisible by ``config.multiple``; output has the same spatial shape and ``out_channels``.
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs: object) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("give either a UNetConfig or keyword arguments, not both")
        self.config = config
        d, depth = config.dims, config.depth
        ch = config.channels
        self.encoders = nn.ModuleList(
            ConvBlock(d, config.in_channels if i == 0 else ch(i - 1), ch(i)) for i in range(depth)
        )
        self.downs = nn.ModuleList(Resample(d, ch(i), ch(i), up=False) for i in range(depth))
        self.bottleneck = ConvBlock(d, config.in_channels if depth == 0 else ch(depth - 1), ch(depth))
        self.ups = nn.ModuleList(Resample(d, ch(i + 1), ch(i), up=True) for i in range(depth))
        self.decoders = nn.ModuleList(ConvBlock(d, 2 * ch(i), ch(i)) for i in range(depth))
        conv, _, _ = _layers(d)
        self.head = conv(ch(0), config.out_channels, kernel_size=3, padding=1)

    @property
    def multiple(self) -> int:
        return self.config.multiple

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` has the rank, channels and spatial sizes this net accepts."""
        cfg = self.config
        axes = ("z", "y", "x")[-cfg.dims :]
        if x.ndim != cfg.dims + 2:
            raise ValueError(
                f"FnetUNet ({cfg.dims}D) expects input of shape (N, C, {', '.join(a.upper() for a in axes)}), "
                f"got a {x.ndim}-d tensor of shape {tuple(x.shape)}"
            )
        if x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"FnetUNet expects {cfg.in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        m = cfg.multiple
        for axis, size in zip(axes, x.shape[2:], strict=True):
            if size == 0 or size % m:
                raise ValueError(
                    f"input size {size} along {axis} is not divisible by {m} (= 2**depth for depth {cfg.depth}); "
                    f"pad or crop every spatial size to a multiple of {m} (input shape {tuple(x.shape)})"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for enc, down in zip(self.encoders, self.downs, strict=True):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for i in reversed(range(self.config.depth)):
            x = self.ups[i](x)
            x = self.decoders[i](torch.cat((skips[i], x), dim=1))
        return self.head(x)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> FnetUNet:
        """pytorch_fnet's initialisation: conv weights ~ N(0, std), BN scale ~ N(1, std), BN shift 0.

        (Conv biases keep torch's default initialisation, as in pytorch_fnet.) Returns ``self``.
        """
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                m.weight.normal_(0.0, std, generator=generator)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.weight.normal_(1.0, std, generator=generator)
                m.bias.zero_()
        return self

    def inference_copy(self) -> FnetUNet:
        """A copy for prediction only, in eval mode, with every batch normalisation folded into the
        convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``): the same function up to
        float rounding, without BN's pass over every activation and without BN's output tensors (the
        paper's U-Net on the CPU: about a tenth of the forward time). ``self`` is left as it was."""
        folded = copy.deepcopy(self).eval()
        with torch.no_grad():
            for block in folded.modules():
                if isinstance(block, ConvBlock):
                    block.conv1 = fuse_conv_bn_eval(block.conv1, block.bn1)
                    block.conv2 = fuse_conv_bn_eval(block.conv2, block.bn2)
                    block.bn1, block.bn2 = nn.Identity(), nn.Identity()
                elif isinstance(block, Resample):
                    block.conv = fuse_conv_bn_eval(block.conv, block.bn, transpose=isinstance(block.conv, nn.modules.conv._ConvTransposeNd))
                    block.bn = nn.Identity()
        return folded

    def flops_per_voxel(self) -> float:
        return count_flops_per_voxel(self.config)

    def extra_repr(self) -> str:
        c = self.config
        return f"dims={c.dims}, depth={c.depth}, width={c.width}, in_channels={c.in_channels}, out_channels={c.out_channels}"


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (weights and biases; not BN running statistics)."""
    return sum(p.numel() for p in model.parameters())


def count_flops_per_voxel(config: UNetConfig | FnetUNet) -> float:
    """Floating-point operations (2 × multiply-adds) of one forward pass, per output voxel.

    Counted analytically from the layer shapes: a convolution with kernel ``k`` costs
    ``k**dims * c_in * c_out`` multiply-adds per voxel of its output; a stride-2 kernel-2 transposed
    convolution costs ``c_in * c_out`` per output voxel (each output voxel sees one kernel tap). A
    layer at level ``i`` has ``2**(-dims*i)`` voxels per output voxel. Biases, batch normalisation,
    ReLU and concatenation are not counted (they are a few operations per activation, well under 1%).
    """
    if isinstance(config, FnetUNet):
        config = config.config
    d, depth = config.dims, config.depth
    ch = config.channels
    k3 = 3**d
    k2 = 2**d

    def block(c_in: int, c_out: int) -> int:  # two 3×3(×3) convs
        return k3 * c_in * c_out + k3 * c_out * c_out

    macs = 0.0
    for i in range(depth):
        scale = 1.0 / 2 ** (d * i)  # voxels at level i per output voxel
        c_in = config.in_channels if i == 0 else ch(i - 1)
        macs += scale * block(c_in, ch(i))  # encoder
        macs += (scale / k2) * (k2 * ch(i) * ch(i))  # down conv: output at level i+1, kernel 2**d
        macs += scale * ch(i + 1) * ch(i)  # transposed conv: output at level i
        macs += scale * block(2 * ch(i), ch(i))  # decoder
    bottom_in = config.in_channels if depth == 0 else ch(depth - 1)
    macs += block(bottom_in, ch(depth)) / 2 ** (d * depth)
    macs += k3 * ch(0) * config.out_channels  # head
    return 2.0 * macs
